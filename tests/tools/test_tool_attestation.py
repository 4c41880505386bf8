"""execution_sha256: the spec 1.6 step 7 encoding, pinned and unambiguous."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra.errors import InvalidInput
from palyra.tools import execution_sha256

BASE = dict(
    proposal_id="01J9ZQ4Y6W8X2V3B5N7M9K1P0R",
    tool_name="palyra.echo",
    input_json=b'{"text":"hi"}',
    success=True,
    output_json=b'{"echo":"hi"}',
    error="",
    timed_out=False,
    executor="in_process",
    sandbox_enforcement="none",
    executed_at_ms=1_700_000_000_000,
)
KNOWN_VECTOR = "e6bce70edf6295cadfbadc83a1bfedcfd4dce8ad537570255df442f8aa065c19"


def test_known_vector() -> None:
    assert execution_sha256(**BASE) == KNOWN_VECTOR


def test_matches_a_hand_built_preimage() -> None:
    def lp(b: bytes) -> bytes:
        return struct.pack(">Q", len(b)) + b

    preimage = (
        b"palyra.tool.attestation.v1"
        + lp(b"01J9ZQ4Y6W8X2V3B5N7M9K1P0R")
        + lp(b"palyra.echo")
        + lp(b'{"text":"hi"}')
        + b"\x01"
        + lp(b'{"echo":"hi"}')
        + lp(b"")
        + b"\x00"
        + lp(b"in_process")
        + lp(b"none")
        + (1_700_000_000_000).to_bytes(8, "big", signed=True)
    )
    assert hashlib.sha256(preimage).hexdigest() == KNOWN_VECTOR


def test_none_error_hashes_as_empty_string() -> None:
    assert execution_sha256(**{**BASE, "error": None}) == KNOWN_VECTOR


@pytest.mark.parametrize(
    "change",
    [
        {"proposal_id": "01J9ZQ4Y6W8X2V3B5N7M9K1P0S"},
        {"tool_name": "palyra.sleep"},
        {"input_json": b'{"text":"ho"}'},
        {"success": False},
        {"output_json": b"{}"},
        {"error": "boom"},
        {"timed_out": True},
        {"executor": "sandbox"},
        {"sandbox_enforcement": "strict"},
        {"executed_at_ms": 1_700_000_000_001},
        {"executed_at_ms": -1},
    ],
)
def test_every_field_is_bound(change: dict) -> None:
    assert execution_sha256(**{**BASE, **change}) != KNOWN_VECTOR


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"proposal_id": "ab", "tool_name": "c"}, {"proposal_id": "a", "tool_name": "bc"}),
        ({"tool_name": "t", "input_json": b"xy"}, {"tool_name": "tx", "input_json": b"y"}),
        ({"output_json": b"o", "error": "e"}, {"output_json": b"oe", "error": ""}),
        (
            {"executor": "ex", "sandbox_enforcement": ""},
            {"executor": "e", "sandbox_enforcement": "x"},
        ),
    ],
)
def test_moving_bytes_between_fields_changes_the_hash(a: dict, b: dict) -> None:
    assert execution_sha256(**{**BASE, **a}) != execution_sha256(**{**BASE, **b})


_text = st.text(max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.tuples(_text, _text, _text), st.tuples(_text, _text, _text))
def test_distinct_field_splits_never_collide(x: tuple, y: tuple) -> None:
    fields = ("proposal_id", "tool_name", "executor")
    hx = execution_sha256(**{**BASE, **dict(zip(fields, x, strict=True))})
    hy = execution_sha256(**{**BASE, **dict(zip(fields, y, strict=True))})
    assert (hx == hy) == (x == y)


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, 1.5, True])
def test_executed_at_must_fit_i64(bad) -> None:
    with pytest.raises(InvalidInput):
        execution_sha256(**{**BASE, "executed_at_ms": bad})


def test_i64_extremes_accepted() -> None:
    execution_sha256(**{**BASE, "executed_at_ms": 2**63 - 1})
    execution_sha256(**{**BASE, "executed_at_ms": -(2**63)})
