"""``hash-embedding-v1``: the default, dependency-free embedding provider (spec §7).

For every lower-cased whitespace token ``t``: ``d = SHA-256(t)``, bucket ``d[0] mod
dims``, sign ``+`` if ``d[1]`` is even else ``-``, magnitude ``1 + d[2]/255``; the sum is
L2-normalised. Deterministic across processes and platforms, so stored vectors stay
comparable; vectors are persisted as little-endian float32.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import struct
from collections.abc import Sequence

EMBEDDING_MODEL_ID = "hash-embedding-v1"
EMBEDDING_DIMS = 64
EMBEDDING_VERSION = 1
QUERY_CACHE_SIZE = 256


def l2_normalize(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0.0 or not math.isfinite(norm):
        return [0.0] * len(vector)
    return [x / norm for x in vector]


def embed(text: str, dims: int = EMBEDDING_DIMS) -> list[float]:
    """The hash embedding of ``text``; the zero vector if it has no tokens."""
    if dims <= 0:
        raise ValueError("embedding dims must be > 0")
    acc = [0.0] * dims
    for token in text.lower().split():
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        sign = 1.0 if digest[1] % 2 == 0 else -1.0
        acc[digest[0] % dims] += sign * (1.0 + digest[2] / 255.0)
    return l2_normalize(acc)


@functools.lru_cache(maxsize=QUERY_CACHE_SIZE)
def embed_query(text: str, dims: int = EMBEDDING_DIMS) -> tuple[float, ...]:
    """Cached :func:`embed` for search queries (deterministic, so no TTL is needed)."""
    return tuple(embed(text, dims))


def resize(vector: Sequence[float], dims: int) -> list[float]:
    """Truncate or zero-pad to ``dims``, then re-normalise (spec: "resized/normalized")."""
    out = list(vector[:dims]) + [0.0] * max(0, dims - len(vector))
    return l2_normalize(out)


def pack(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack(blob: bytes) -> list[float]:
    if len(blob) % 4:
        raise ValueError(f"embedding blob of {len(blob)} bytes is not a float32 array")
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity in [-1, 1]; 0.0 when either vector is zero."""
    if len(a) != len(b):
        raise ValueError(f"cosine of vectors with {len(a)} and {len(b)} dims")
    dot = sum(map(operator.mul, a, b))
    na = math.sqrt(sum(map(operator.mul, a, a)))
    nb = math.sqrt(sum(map(operator.mul, b, b)))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, dot / (na * nb)))
