"""ToolRegistry: registration, catalog hashing, argument validation, size limits."""

from __future__ import annotations

import hashlib
import threading
import time

import orjson
import pytest

from palyra.errors import AlreadyExists, InvalidInput, NotFound, PayloadTooLarge
from palyra.tools import (
    TOOL_INPUT_TOO_LARGE,
    ToolContext,
    ToolDefinition,
    ToolOutput,
    ToolRegistry,
    default_registry,
)


def _noop(args: dict, ctx: ToolContext) -> ToolOutput:
    return ToolOutput.ok({})


def make_tool(name: str = "test.tool", **kw) -> ToolDefinition:
    kw.setdefault("description", "a test tool")
    kw.setdefault(
        "input_schema",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"n": {"type": "integer", "minimum": 0}},
                        "required": ["n"],
                    },
                },
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    )
    kw.setdefault("max_input_bytes", 1024)
    kw.setdefault("handler", _noop)
    return ToolDefinition(name=name, **kw)


@pytest.fixture
def registry() -> ToolRegistry:
    reg = default_registry()
    reg.register(make_tool())
    return reg


# -- registration -----------------------------------------------------------------------


def test_default_registry_holds_the_builtins() -> None:
    assert default_registry().names() == ("palyra.echo", "palyra.memory.search", "palyra.sleep")


def test_get_unknown_tool_raises_not_found(registry: ToolRegistry) -> None:
    with pytest.raises(NotFound, match="palyra.nope"):
        registry.get("palyra.nope")


def test_duplicate_registration_rejected(registry: ToolRegistry) -> None:
    with pytest.raises(AlreadyExists):
        registry.register(make_tool())


@pytest.mark.parametrize("name", ["", "Palyra.Echo", "palyra..echo", "palyra echo", ".x"])
def test_bad_tool_names_rejected(name: str) -> None:
    with pytest.raises(InvalidInput):
        make_tool(name)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_max_input_bytes_must_be_a_positive_integer(limit: object) -> None:
    with pytest.raises(InvalidInput, match="max_input_bytes must be a positive integer"):
        make_tool(max_input_bytes=limit)


def test_invalid_input_schema_rejected_at_definition() -> None:
    with pytest.raises(InvalidInput, match="invalid input_schema"):
        make_tool(input_schema={"type": "no-such-type"})


def test_definition_copies_schema_and_normalizes_capabilities() -> None:
    schema = {"type": "object"}
    tool = make_tool(input_schema=schema, capabilities={" Network ", "network", ""})
    schema["type"] = "string"
    assert tool.input_schema == {"type": "object"}
    assert tool.capabilities == frozenset({"network"})


# -- catalog ----------------------------------------------------------------------------


def test_catalog_is_sorted_model_visible_specs(registry: ToolRegistry) -> None:
    catalog = registry.catalog()
    assert catalog.schema_version == 1
    assert catalog.names == ("palyra.echo", "palyra.memory.search", "palyra.sleep", "test.tool")
    assert set(catalog.tools[0]) == {"name", "description", "input_schema"}


def test_catalog_hash_is_sha256_of_canonical_json(registry: ToolRegistry) -> None:
    catalog = registry.catalog()
    body = {"schema_version": 1, "tools": list(catalog.tools)}
    expected = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert catalog.catalog_hash == expected
    assert catalog.to_dict()["catalog_hash"] == expected


def test_catalog_hash_independent_of_registration_order() -> None:
    a, b = ToolRegistry(), ToolRegistry()
    x, y = make_tool("x.tool"), make_tool("y.tool")
    a.register(x)
    a.register(y)
    b.register(y)
    b.register(x)
    assert a.catalog().catalog_hash == b.catalog().catalog_hash


def test_catalog_hash_changes_when_a_tool_is_added(registry: ToolRegistry) -> None:
    before = registry.catalog()
    registry.register(make_tool("other.tool"))
    after = registry.catalog()
    assert before.catalog_hash != after.catalog_hash
    assert "other.tool" not in before.names  # snapshots are immutable


# -- argument validation ----------------------------------------------------------------


def test_valid_arguments_returned_as_dict(registry: ToolRegistry) -> None:
    assert registry.validate_arguments("test.tool", {"path": "a"}) == {"path": "a"}
    assert registry.validate_arguments("test.tool", b'{"path":"a"}') == {"path": "a"}
    assert registry.validate_arguments("test.tool", '{"path":"a"}') == {"path": "a"}


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ({}, "$.path"),
        ({"path": 3}, "$.path"),
        ({"path": "a", "extra": 1}, "$.extra"),
        ({"path": "a", "items": [{"n": 1}, {"n": -1}]}, "$.items[1].n"),
        ({"path": "a", "items": [{"n": 1}, {}]}, "$.items[1].n"),
        ({"path": "a", "items": "nope"}, "$.items"),
    ],
)
def test_validation_error_names_the_argument_path(
    registry: ToolRegistry, args: dict, path: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        registry.validate_arguments("test.tool", args)
    assert f"invalid arguments for test.tool at {path}:" in info.value.message
    assert info.value.details["path"] == path
    assert info.value.details["tool_name"] == "test.tool"


def test_odd_property_names_are_quoted_in_the_path() -> None:
    reg = ToolRegistry()
    reg.register(make_tool(input_schema={"properties": {"a b": {"type": "integer"}}}))
    with pytest.raises(InvalidInput) as info:
        reg.validate_arguments("test.tool", {"a b": "x"})
    assert info.value.details["path"] == '$["a b"]'


@pytest.mark.parametrize("raw", [b"[1,2]", b'"text"', b"{not json", b""])
def test_non_object_or_malformed_json_rejected(registry: ToolRegistry, raw: bytes) -> None:
    with pytest.raises(InvalidInput) as info:
        registry.validate_arguments("test.tool", raw)
    assert info.value.details["path"] == "$"


def test_unknown_tool_arguments_raise_not_found(registry: ToolRegistry) -> None:
    with pytest.raises(NotFound):
        registry.validate_arguments("palyra.nope", {})


def test_unserializable_arguments_rejected(registry: ToolRegistry) -> None:
    with pytest.raises(InvalidInput, match="not JSON-serializable"):
        registry.validate_arguments("test.tool", {"path": {1, 2}})


# -- size limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "limit"),
    [("palyra.echo", 16 * 1024), ("palyra.sleep", 8 * 1024), ("palyra.memory.search", 64 * 1024)],
)
def test_builtin_input_limits(tool: str, limit: int) -> None:
    assert default_registry().get(tool).max_input_bytes == limit


def test_input_over_limit_is_payload_too_large(registry: ToolRegistry) -> None:
    raw = orjson.dumps({"text": "x" * (16 * 1024)})
    with pytest.raises(PayloadTooLarge) as info:
        registry.validate_arguments("palyra.echo", raw)
    assert info.value.message.startswith(TOOL_INPUT_TOO_LARGE)
    assert info.value.details == {
        "quota": TOOL_INPUT_TOO_LARGE,
        "tool_name": "palyra.echo",
        "size_bytes": len(raw),
        "limit_bytes": 16 * 1024,
    }
    assert isinstance(info.value, InvalidInput)  # maps to invalid_argument family


def test_input_exactly_at_limit_is_accepted() -> None:
    reg = ToolRegistry()
    reg.register(make_tool(max_input_bytes=len(b'{"path":"abc"}')))
    assert reg.validate_arguments("test.tool", {"path": "abc"}) == {"path": "abc"}
    with pytest.raises(PayloadTooLarge):
        reg.validate_arguments("test.tool", {"path": "abcd"})


def test_oversized_raw_input_rejected_before_parsing(registry: ToolRegistry) -> None:
    with pytest.raises(PayloadTooLarge):
        registry.validate_arguments("palyra.sleep", b"{" + b" " * (9 * 1024))


# -- approval ---------------------------------------------------------------------------


def test_tool_requires_approval_rules(registry: ToolRegistry) -> None:
    registry.register(make_tool("t.sensitive", sensitive=True))
    registry.register(make_tool("t.exec", capabilities={"Process_Exec"}))
    registry.register(make_tool("t.net", capabilities={"network"}))
    registry.register(make_tool("t.secrets", capabilities={"secrets_read"}))
    registry.register(make_tool("t.write", capabilities={"filesystem_write"}))
    registry.register(make_tool("t.read", capabilities={"filesystem_read"}))
    for name in ("palyra.echo", "palyra.sleep", "palyra.memory.search", "test.tool", "t.read"):
        assert not registry.tool_requires_approval(name), name
    for name in ("t.sensitive", "t.exec", "t.net", "t.secrets", "t.write", "unknown.tool"):
        assert registry.tool_requires_approval(name), name
    assert registry.sensitive_tool_names() == {
        "t.sensitive",
        "t.exec",
        "t.net",
        "t.secrets",
        "t.write",
    }


def test_tool_context_remaining_seconds_uses_its_clock() -> None:
    from palyra.clock import ManualClock

    clock = ManualClock()
    ctx = ToolContext("r", "s", "user:ops", threading.Event(), clock.monotonic() + 2.0, clock=clock)
    assert ctx.remaining_seconds() == pytest.approx(2.0)
    clock.advance(5)
    assert ctx.remaining_seconds() == 0.0
    assert time.monotonic() > 0  # the system clock is untouched
