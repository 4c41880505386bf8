"""ULIDs: 26-char Crockford base32, 48-bit millisecond time + 80 random bits.

Ids made in the same millisecond by one process increase monotonically (the random
part is incremented), so sorting ids sorts by creation order.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
# Two characters per lookup: 13 lookups of 10 bits cover the 130 bits of a ULID.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = tuple(range(120, -1, -10))
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


def _encode(value: int) -> str:
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS])


def new_ulid(now_ms: int | None = None) -> str:
    global _last_ms, _last_rand
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            _last_ms = ms
            _last_rand = int.from_bytes(os.urandom(10), "big")
        rand = _last_rand
    return _encode((ms << 80) | rand)


def is_ulid(text: object) -> bool:
    """True for a canonical (upper-case, 26 chars, first char <= 7) ULID."""
    return (
        isinstance(text, str)
        and len(text) == 26
        and text[0] in "01234567"
        and all(c in _DECODE for c in text)
    )


def ulid_time_ms(ulid: str) -> int:
    value = 0
    for c in ulid:
        value = (value << 5) | _DECODE[c]
    return value >> 80
