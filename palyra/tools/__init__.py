"""Tools: registry and argument validation, built-ins, call decisions, attestation."""

from palyra.tools.attestation import ATTESTATION_DOMAIN, execution_sha256
from palyra.tools.builtins import builtin_tools, default_registry
from palyra.tools.decision import POSTURES, ToolCall, ToolDecision, decide_tool_call
from palyra.tools.registry import (
    CATALOG_SCHEMA_VERSION,
    TOOL_INPUT_TOO_LARGE,
    ToolCatalog,
    ToolContext,
    ToolDefinition,
    ToolHandler,
    ToolOutput,
    ToolRegistry,
    canonical_json,
)

__all__ = [
    "ATTESTATION_DOMAIN",
    "CATALOG_SCHEMA_VERSION",
    "POSTURES",
    "TOOL_INPUT_TOO_LARGE",
    "ToolCall",
    "ToolCatalog",
    "ToolContext",
    "ToolDecision",
    "ToolDefinition",
    "ToolHandler",
    "ToolOutput",
    "ToolRegistry",
    "builtin_tools",
    "canonical_json",
    "decide_tool_call",
    "default_registry",
    "execution_sha256",
]
