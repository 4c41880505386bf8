from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra.memory.embedding import (
    EMBEDDING_DIMS,
    EMBEDDING_MODEL_ID,
    cosine,
    embed,
    pack,
    resize,
    unpack,
)


def _reference(text: str, dims: int = 64) -> list[float]:
    """Spec §7 written out independently."""
    acc = [0.0] * dims
    for token in text.lower().split():
        d = hashlib.sha256(token.encode()).digest()
        acc[d[0] % dims] += (1 if d[1] % 2 == 0 else -1) * (1 + d[2] / 255)
    norm = math.sqrt(sum(x * x for x in acc))
    return [x / norm for x in acc] if norm else acc


def test_matches_the_specified_algorithm():
    assert EMBEDDING_MODEL_ID == "hash-embedding-v1" and EMBEDDING_DIMS == 64
    for text in ["Hello world", "rollback  checklist\nstep one", "a a a b", "ÉCOLE école"]:
        assert embed(text) == pytest.approx(_reference(text))
    assert embed("Deploy") == embed("deploy")  # lower-cased
    assert embed("") == [0.0] * 64 and embed(" \n ") == [0.0] * 64


@given(st.text(max_size=300))
def test_unit_length_or_zero(text):
    vector = embed(text)
    norm = math.sqrt(sum(x * x for x in vector))
    assert len(vector) == 64
    assert norm == pytest.approx(1.0) or norm == 0.0


def test_pack_is_little_endian_float32_and_round_trips():
    assert pack([1.0]) == b"\x00\x00\x80\x3f"
    vector = embed("some memory text")
    blob = pack(vector)
    assert len(blob) == 4 * 64
    assert unpack(blob) == pytest.approx(vector, abs=1e-6)
    with pytest.raises(ValueError):
        unpack(b"abc")


def test_cosine_and_resize():
    a, b = embed("kubernetes cluster upgrade"), embed("kubernetes cluster")
    assert cosine(a, a) == pytest.approx(1.0)
    assert 0.0 < cosine(a, b) < 1.0
    assert cosine(a, [0.0] * 64) == 0.0
    assert cosine(a, [-x for x in a]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cosine([1.0], [1.0, 0.0])
    assert resize([3.0, 4.0], 3) == pytest.approx([0.6, 0.8, 0.0])
    assert resize([1.0, 1.0, 5.0], 2) == pytest.approx([2**-0.5, 2**-0.5])
