"""Tool definitions, the registry, argument validation and the model-visible catalog.

Spec 1.6 steps 1, 3 and 6: intake validation against a per-tool JSON Schema (draft
2020-12, compiled once at registration), per-tool input size limits
(``quota/tool_input_too_large``), and ``tool_requires_approval``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.errors import AlreadyExists, InvalidInput, NotFound, PayloadTooLarge
from palyra.policy.engine import DEFAULT_SENSITIVE_CAPABILITIES
from palyra.validation import is_int

__all__ = [
    "CATALOG_SCHEMA_VERSION",
    "TOOL_INPUT_TOO_LARGE",
    "ToolCatalog",
    "ToolContext",
    "ToolDefinition",
    "ToolHandler",
    "ToolOutput",
    "ToolRegistry",
    "canonical_json",
]

CATALOG_SCHEMA_VERSION = 1
TOOL_INPUT_TOO_LARGE = "quota/tool_input_too_large"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(?:[.-][a-z0-9_]+)*$")
_MAX_REPORTED_ERRORS = 8


def canonical_json(value: Any) -> bytes:
    """Sorted-key compact UTF-8 JSON of plain dicts/lists/str/int/bool/None."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class ToolOutput:
    success: bool
    output: dict[str, Any] | str
    error: str | None = None

    @classmethod
    def ok(cls, output: dict[str, Any] | str) -> ToolOutput:
        return cls(True, output, None)

    @classmethod
    def failed(cls, error: str, output: dict[str, Any] | str | None = None) -> ToolOutput:
        return cls(False, {} if output is None else output, error)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a handler may see of the run it serves.

    ``memory_search(query, limit) -> list[dict]`` is provided by the runtime when the
    memory store is available. Handlers that wait must wait on ``cancel`` (never
    ``time.sleep``) and should not outlive ``deadline_monotonic`` (``clock.monotonic()``).
    """

    run_id: str
    session_id: str
    principal: str
    cancel: threading.Event
    deadline_monotonic: float
    memory_search: Callable[[str, int], list[dict[str, Any]]] | None = None
    clock: Clock = SYSTEM_CLOCK

    def remaining_seconds(self) -> float:
        return max(0.0, self.deadline_monotonic - self.clock.monotonic())


ToolHandler = Callable[[dict[str, Any], ToolContext], ToolOutput]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolDefinition:
    """A tool the model may call. ``capabilities`` are trimmed, lower-cased, de-duplicated."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    max_input_bytes: int
    handler: ToolHandler
    capabilities: frozenset[str] = frozenset()
    sensitive: bool = False
    parallel_safe: bool = False
    # False for pure in-memory tools that return at once: the runtime may call them
    # inline instead of on a worker thread (no timeout can be missed).
    blocking: bool = True
    # True unless running the tool twice is harmless (read-only, idempotent). The run
    # makes a side-effecting call's proposal and decision durable before executing it,
    # so crash recovery can tell it was (maybe) in flight and never re-runs it blindly.
    side_effects: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise InvalidInput(
                f"tool name {self.name!r} must be lower-case dotted words, e.g. 'palyra.echo'"
            )
        if not is_int(self.max_input_bytes) or self.max_input_bytes <= 0:
            raise InvalidInput(f"{self.name}: max_input_bytes must be a positive integer")
        if not callable(self.handler):
            raise InvalidInput(f"{self.name}: handler must be callable")
        if isinstance(self.capabilities, str):
            raise InvalidInput(f"{self.name}: capabilities must be a collection of names")
        caps = frozenset(c.strip().lower() for c in self.capabilities if c.strip())
        object.__setattr__(self, "capabilities", caps)
        if not isinstance(self.input_schema, Mapping):
            raise InvalidInput(f"{self.name}: input_schema must be a JSON Schema object")
        try:  # a private deep copy: later edits by the caller cannot skew validation
            schema = orjson.loads(orjson.dumps(dict(self.input_schema)))
        except TypeError as exc:
            raise InvalidInput(f"{self.name}: input_schema is not JSON: {exc}") from exc
        object.__setattr__(self, "input_schema", schema)
        try:
            Draft202012Validator.check_schema(self.input_schema)
        except jsonschema.SchemaError as exc:
            raise InvalidInput(f"{self.name}: invalid input_schema: {exc.message}") from exc

    def spec(self) -> dict[str, Any]:
        """The model-visible description of this tool."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }


@dataclass(frozen=True, slots=True)
class ToolCatalog:
    """A snapshot of the model-visible tool specs, sorted by name, with its hash."""

    tools: tuple[dict[str, Any], ...]
    catalog_hash: str
    schema_version: int = CATALOG_SCHEMA_VERSION

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t["name"] for t in self.tools)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "catalog_hash": self.catalog_hash,
            "tools": list(self.tools),
        }


def _json_path(path: Iterable[Any]) -> str:
    """``$.a[0].b`` for a jsonschema ``absolute_path``."""
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += "[" + orjson.dumps(str(part)).decode() + "]"
    return out


def _error_path(error: jsonschema.ValidationError) -> str:
    """The path of the argument an error is about; names the property for
    ``required`` and ``additionalProperties`` errors, which jsonschema reports on
    the parent object."""
    path = list(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        missing = [p for p in error.validator_value if p not in instance]
        if missing:
            path.append(missing[0])
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        extra = sorted(
            k for k in instance if k not in known and not any(p.search(k) for p in patterns)
        )
        if extra:
            path.append(extra[0])
    return _json_path(path)


@dataclass(frozen=True, slots=True)
class _Entry:
    definition: ToolDefinition
    validator: Draft202012Validator


class ToolRegistry:
    """Tools by name. Registration happens at start-up; lookups are thread-safe."""

    def __init__(
        self, *, sensitive_capabilities: frozenset[str] = DEFAULT_SENSITIVE_CAPABILITIES
    ) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._catalog: ToolCatalog | None = None
        self._sensitive_capabilities = frozenset(c.strip().lower() for c in sensitive_capabilities)

    def register(self, definition: ToolDefinition) -> None:
        validator = Draft202012Validator(definition.input_schema)
        with self._lock:
            if definition.name in self._entries:
                raise AlreadyExists(f"tool {definition.name!r} is already registered")
            self._entries[definition.name] = _Entry(definition, validator)
            self._catalog = None

    def get(self, name: str) -> ToolDefinition:
        return self._entry(name).definition

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def catalog(self) -> ToolCatalog:
        """Model-visible specs and ``catalog_hash`` = sha256 of the canonical JSON of
        ``{"schema_version": 1, "tools": [...]}``."""
        with self._lock:
            if self._catalog is None:
                specs = tuple(self._entries[n].definition.spec() for n in sorted(self._entries))
                body = {"schema_version": CATALOG_SCHEMA_VERSION, "tools": list(specs)}
                digest = hashlib.sha256(canonical_json(body)).hexdigest()
                self._catalog = ToolCatalog(tools=specs, catalog_hash=digest)
            return self._catalog

    def validate_arguments(
        self, name: str, args: Mapping[str, Any] | str | bytes
    ) -> dict[str, Any]:
        """Check size and schema of a call's arguments; return them as a dict.

        ``args`` may be raw JSON (str/bytes; its size is checked before parsing) or an
        already-parsed mapping (its size is that of its compact JSON encoding).
        Raises ``NotFound`` (unknown tool), ``PayloadTooLarge`` (over the tool's limit)
        or ``InvalidInput`` naming the path of the offending argument.
        """
        entry = self._entry(name)
        limit = entry.definition.max_input_bytes
        if isinstance(args, str | bytes):
            raw = args.encode() if isinstance(args, str) else args
            self._check_size(name, len(raw), limit)
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(
                    f"invalid arguments for {name}: not valid JSON: {exc}",
                    details={"tool_name": name, "path": "$"},
                ) from exc
        elif isinstance(args, Mapping):
            value = dict(args)
            try:
                size = len(orjson.dumps(value))
            except TypeError as exc:
                raise InvalidInput(
                    f"invalid arguments for {name}: not JSON-serializable: {exc}",
                    details={"tool_name": name, "path": "$"},
                ) from exc
            self._check_size(name, size, limit)
        else:
            raise InvalidInput(
                f"invalid arguments for {name}: expected a JSON object",
                details={"tool_name": name, "path": "$"},
            )
        if not isinstance(value, dict):
            raise InvalidInput(
                f"invalid arguments for {name} at $: expected a JSON object",
                details={"tool_name": name, "path": "$"},
            )
        errors = list(entry.validator.iter_errors(value))
        if errors:
            primary = best_match(errors)
            path = _error_path(primary)
            reported = sorted(f"{_error_path(e)}: {e.message}" for e in errors)[
                :_MAX_REPORTED_ERRORS
            ]
            raise InvalidInput(
                f"invalid arguments for {name} at {path}: {primary.message}",
                details={"tool_name": name, "path": path, "errors": reported},
            )
        return value

    def tool_requires_approval(self, name: str) -> bool:
        """Spec 1.6 step 3: unknown tools, sensitive tools, and tools with a sensitive
        capability (process_exec, network, secrets_read, filesystem_write)."""
        entry = self._entries.get(name)
        if entry is None:
            return True
        d = entry.definition
        return d.sensitive or not d.capabilities.isdisjoint(self._sensitive_capabilities)

    def sensitive_tool_names(self) -> frozenset[str]:
        """Registered tools that require approval (``PolicyConfig.sensitive_tools``)."""
        return frozenset(n for n in list(self._entries) if self.tool_requires_approval(n))

    # -- internals ---------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise NotFound(f"unknown tool: {name!r}", details={"tool_name": name})
        return entry

    @staticmethod
    def _check_size(name: str, size: int, limit: int) -> None:
        if size > limit:
            raise PayloadTooLarge(
                f"{TOOL_INPUT_TOO_LARGE}: input for {name} is {size} bytes, limit is {limit} bytes",
                details={
                    "quota": TOOL_INPUT_TOO_LARGE,
                    "tool_name": name,
                    "size_bytes": size,
                    "limit_bytes": limit,
                },
            )
