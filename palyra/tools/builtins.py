"""Built-in safe tools: ``palyra.echo``, ``palyra.sleep``, ``palyra.memory.search``."""

from __future__ import annotations

from typing import Any

from palyra.errors import PalyraError
from palyra.tools.registry import ToolContext, ToolDefinition, ToolOutput, ToolRegistry

__all__ = [
    "ECHO",
    "MEMORY_SEARCH",
    "MEMORY_SEARCH_DEFAULT_LIMIT",
    "SLEEP",
    "SLEEP_MAX_MS",
    "builtin_tools",
    "default_registry",
]

KIB = 1024
SLEEP_MAX_MS = 60_000
MEMORY_SEARCH_DEFAULT_LIMIT = 8
MEMORY_SEARCH_MAX_LIMIT = 64


def _echo(args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
    return ToolOutput.ok({"echo": args["text"]})


def _sleep(args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
    """Wait ``ms`` milliseconds on the cancel event; stop early on cancel or deadline."""
    ms = int(args["ms"])  # JSON Schema counts 5.0 as an integer
    wanted = ms / 1000.0
    budget = ctx.remaining_seconds()
    wait_s = min(wanted, budget)
    if ctx.cancel.wait(wait_s):
        return ToolOutput.failed("cancelled", {"requested_ms": ms})
    if wait_s < wanted:
        return ToolOutput.failed("deadline exceeded", {"requested_ms": ms})
    return ToolOutput.ok({"slept_ms": ms})


def _memory_search(args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
    query = args["query"]
    limit = int(args.get("limit", MEMORY_SEARCH_DEFAULT_LIMIT))
    if ctx.memory_search is None:
        return ToolOutput.ok({"hits": []})
    try:
        hits = ctx.memory_search(query, limit)
    except PalyraError as exc:
        return ToolOutput.failed(f"memory search failed: {exc.message}", {"hits": []})
    return ToolOutput.ok({"hits": list(hits)[:limit]})


ECHO = ToolDefinition(
    name="palyra.echo",
    description="Return the given text unchanged.",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
        "additionalProperties": False,
    },
    max_input_bytes=16 * KIB,
    handler=_echo,
    parallel_safe=True,
    blocking=False,
    side_effects=False,
)

SLEEP = ToolDefinition(
    name="palyra.sleep",
    description="Wait for the given number of milliseconds (0-60000); stops early if cancelled.",
    input_schema={
        "type": "object",
        "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": SLEEP_MAX_MS}},
        "required": ["ms"],
        "additionalProperties": False,
    },
    max_input_bytes=8 * KIB,
    handler=_sleep,
    parallel_safe=True,
    side_effects=False,
)

MEMORY_SEARCH = ToolDefinition(
    name="palyra.memory.search",
    description="Search remembered facts and conversation summaries for the query.",
    input_schema={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1},
            "limit": {"type": "integer", "minimum": 1, "maximum": MEMORY_SEARCH_MAX_LIMIT},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    max_input_bytes=64 * KIB,
    handler=_memory_search,
    parallel_safe=True,
    side_effects=False,
)


def builtin_tools() -> tuple[ToolDefinition, ...]:
    return (ECHO, SLEEP, MEMORY_SEARCH)


def default_registry() -> ToolRegistry:
    """A fresh registry holding the built-in tools."""
    registry = ToolRegistry()
    for tool in builtin_tools():
        registry.register(tool)
    return registry
