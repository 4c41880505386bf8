"""The canonical byte form that hashes are computed over.

Canonical means: a JSON object of plain ``str``/``int``/``bool``/``None`` values (and
nested lists/dicts of them), keys sorted by code point, no whitespace, UTF-8, as
produced by orjson with ``OPT_SORT_KEYS``. Floats are excluded on purpose: their text
form is not stable across serialisers (``1`` vs ``1.0``, exponent styles), so hashed
records carry payloads as the exact stored JSON *string*, never as parsed numbers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GENESIS = ""


def canonical_bytes(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str | None, record: dict[str, Any]) -> str:
    """``sha256(prev_hash || "|" || canonical(record))`` as lower-case hex."""
    digest = hashlib.sha256((prev_hash or GENESIS).encode("ascii"))
    digest.update(b"|")
    digest.update(canonical_bytes(record))
    return digest.hexdigest()
