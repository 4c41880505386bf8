"""Tool execution attestation hash (spec 1.6 step 7).

``SHA256("palyra.tool.attestation.v1" ‖ lp(proposal_id) ‖ lp(tool_name) ‖ lp(input) ‖
byte(success) ‖ lp(output) ‖ lp(error) ‖ byte(timed_out) ‖ lp(executor) ‖
lp(sandbox_enforcement) ‖ i64be(executed_at_ms))`` where ``lp(x)`` is the u64 big-endian
length of ``x`` followed by its bytes. Length prefixes make the encoding unambiguous:
no bytes can move from one field to the next without changing the digest.
"""

from __future__ import annotations

import hashlib
import struct

from palyra.errors import InvalidInput
from palyra.validation import is_int

__all__ = ["ATTESTATION_DOMAIN", "execution_sha256"]

ATTESTATION_DOMAIN = b"palyra.tool.attestation.v1"
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _lp(value: bytes | str) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return struct.pack(">Q", len(data)) + data


def _flag(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def execution_sha256(
    proposal_id: str,
    tool_name: str,
    input_json: bytes,
    success: bool,
    output_json: bytes,
    error: str | None,
    timed_out: bool,
    executor: str,
    sandbox_enforcement: str,
    executed_at_ms: int,
) -> str:
    """Hex SHA-256 attesting one tool execution. ``error`` None hashes as ``""``."""
    if not is_int(executed_at_ms) or not _I64_MIN <= executed_at_ms <= _I64_MAX:
        raise InvalidInput("executed_at_ms must be an integer that fits in i64")
    h = hashlib.sha256(ATTESTATION_DOMAIN)
    h.update(_lp(proposal_id))
    h.update(_lp(tool_name))
    h.update(_lp(input_json))
    h.update(_flag(success))
    h.update(_lp(output_json))
    h.update(_lp(error or ""))
    h.update(_flag(timed_out))
    h.update(_lp(executor))
    h.update(_lp(sandbox_enforcement))
    h.update(struct.pack(">q", executed_at_ms))
    return h.hexdigest()
