"""Cedar policy engine (spec 1.6.1): baseline policies, allowlists, decisions with reasons.

The rules live in ``baseline.cedar`` (plus optional operator ``extra_policies``) and are
evaluated by Cedar through cedarpy. The configuration (allowlists, sensitive sets) is one
Cedar entity, ``PolicyConfig::"active"``, so the allowlist checks are Cedar conditions;
see the header of ``schema.cedarschema``.

An engine is immutable. :meth:`PolicyEngine.build` validates the policy text against the
schema *before* parsing the handles that evaluation reuses (cedarpy's ``is_authorized``
does not type-check policies, so a misspelt attribute would otherwise silently never
match). A new config builds a new engine, which the caller swaps in.

Cedar decides; Python only explains. The flags computed here (``principal_allowlisted``
and so on) pick the human-readable deny reason and feed :meth:`PolicyEngine.explain`;
they never allow anything on their own.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cedarpy
import orjson

from palyra.errors import InvalidInput

__all__ = [
    "DEFAULT_SENSITIVE_ACTIONS",
    "DEFAULT_SENSITIVE_CAPABILITIES",
    "DENY_BY_DEFAULT_REASON",
    "PolicyConfig",
    "PolicyDecision",
    "PolicyEngine",
    "PolicyRequest",
    "baseline_policies",
    "policy_schema",
]

DEFAULT_SENSITIVE_ACTIONS = frozenset({"cron.delete", "memory.delete", "memory.purge"})
DEFAULT_SENSITIVE_CAPABILITIES = frozenset(
    {"process_exec", "network", "secrets_read", "filesystem_write"}
)

DENY_BY_DEFAULT_REASON = "deny-by-default baseline policy"
FAILED_SAFELY_PREFIX = "policy evaluation failed safely: "
REASON_PRINCIPAL = "principal is not allowlisted for tool execution"
REASON_CHANNEL = "channel is not allowlisted for tool execution"
REASON_CHANNEL_MISSING = "channel is required by the channel allowlist but the request has none"
REASON_SENSITIVE = "sensitive action requires explicit user approval"
REASON_TOOL = "tool is not allowlisted"
REASON_SKILL = "skill is not allowlisted"

_TOOL_EXECUTE = "tool.execute"
_SKILL_EXECUTE = "skill.execute"
_CONFIG_UID = {"type": "PolicyConfig", "id": "active"}


def _read_resource(name: str) -> str:
    return importlib.resources.files("palyra.policy").joinpath(name).read_text(encoding="utf-8")


def baseline_policies() -> str:
    """The text of ``baseline.cedar``."""
    return _read_resource("baseline.cedar")


def policy_schema() -> str:
    """The text of ``schema.cedarschema``."""
    return _read_resource("schema.cedarschema")


def _names(value: Iterable[str], field_name: str, *, lower: bool) -> frozenset[str]:
    if isinstance(value, str | bytes):
        raise InvalidInput(f"{field_name} must be a collection of names, not a string")
    out = set()
    for item in value:
        if not isinstance(item, str):
            raise InvalidInput(f"{field_name} entries must be strings, got {type(item).__name__}")
        item = item.strip()
        if item:
            out.add(item.lower() if lower else item)
    return frozenset(out)


def _normalize_capabilities(value: Iterable[str]) -> frozenset[str]:
    return _names(value, "capabilities", lower=True)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """What the baseline policies allow. Entries are trimmed; tool, skill, action and
    capability names are lower-cased. Principals and channels keep their case.

    ``allowed_tools``/``allowed_skills`` empty: nothing is allowed (deny by default).
    ``allowed_principals``/``allowed_channels`` empty: no restriction.
    ``sensitive_tools``: tool names that need approval (the runtime passes the
    allowlisted tools its registry marks as requiring approval).
    """

    allowed_tools: frozenset[str] = frozenset()
    allowed_principals: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    allowed_skills: frozenset[str] = frozenset()
    sensitive_actions: frozenset[str] = DEFAULT_SENSITIVE_ACTIONS
    sensitive_capabilities: frozenset[str] = DEFAULT_SENSITIVE_CAPABILITIES
    extra_policies: str = ""
    sensitive_tools: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        lowered = (
            "allowed_tools",
            "allowed_skills",
            "sensitive_actions",
            "sensitive_capabilities",
            "sensitive_tools",
        )
        for name in lowered:
            object.__setattr__(self, name, _names(getattr(self, name), name, lower=True))
        for name in ("allowed_principals", "allowed_channels"):
            object.__setattr__(self, name, _names(getattr(self, name), name, lower=False))
        if not isinstance(self.extra_policies, str):
            raise InvalidInput("extra_policies must be Cedar policy text")

    def config_entity(self) -> dict[str, Any]:
        """The ``PolicyConfig::"active"`` entity in Cedar JSON form."""
        return {
            "uid": dict(_CONFIG_UID),
            "attrs": {
                "allowed_tools": sorted(self.allowed_tools),
                "allowed_principals": sorted(self.allowed_principals),
                "allowed_channels": sorted(self.allowed_channels),
                "allowed_skills": sorted(self.allowed_skills),
                "sensitive_actions": sorted(self.sensitive_actions),
                "sensitive_tools": sorted(self.sensitive_tools),
                "sensitive_capabilities": sorted(self.sensitive_capabilities),
            },
            "parents": [],
        }


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One authorization question. ``resource`` is ``tool:<name>``, ``skill:<id>``,
    ``channel:<name>`` or any other text (e.g. ``memory:session:<sid>``).

    The tool name and skill id come from a ``tool:``/``skill:`` resource; the explicit
    fields only matter for other resources (and must agree with the resource if given).
    """

    principal: str
    action: str
    resource: str
    device_id: str = ""
    channel: str | None = None
    session_id: str | None = None
    run_id: str | None = None
    tool_name: str | None = None
    skill_id: str | None = None
    capabilities: Iterable[str] = frozenset()
    allow_sensitive_tools: bool = False


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allowed: bool
    reason: str
    matched_policy_ids: tuple[str, ...] = ()
    diagnostics_errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A normalized request: the Cedar request plus the flags that explain it."""

    cedar_request: dict[str, Any]
    context: dict[str, Any]
    flags: dict[str, bool]
    entities: tuple[dict[str, Any], ...]


def _opt(value: str | None, *, lower: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"expected a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        return None
    return value.lower() if lower else value


def _split_resource(resource: str) -> tuple[dict[str, str], str | None, str | None]:
    """(resource UID, tool name, skill id) for a resource string."""
    head, sep, rest = resource.partition(":")
    kind = head.strip().lower()
    if sep and kind == "tool":
        name = rest.strip().lower()
        if not name:
            raise InvalidInput("resource 'tool:' needs a tool name")
        return {"type": "Tool", "id": name}, name, None
    if sep and kind == "skill":
        skill = rest.strip().lower()
        if not skill:
            raise InvalidInput("resource 'skill:' needs a skill id")
        return {"type": "Skill", "id": skill}, None, skill
    if sep and kind == "channel" and rest.strip():
        return {"type": "Channel", "id": rest.strip()}, None, None
    return {"type": "Resource", "id": resource}, None, None


@functools.cache
def _schema() -> tuple[cedarpy.Schema, dict[str, frozenset[str]]]:
    """The parsed schema handle (immutable, shared by every engine) and its attributes."""
    text = policy_schema()
    return cedarpy.Schema.from_str(text), _declared_attributes(text)


_BLOCK_RE = re.compile(r"^(?:entity|type)\s+(\w+)\s*=\s*\{(.*?)\};", re.M | re.S)
_ENTITY_RE = re.compile(r"^entity\s+([\w\s,]+?)\s*(?:=|;)", re.M)
_ATTR_RE = re.compile(r"^\s*(\w+)\??\s*:", re.M)
_VAR_TYPES = {
    "context": ("RequestContext",),
    "principal": ("Principal",),
    "action": (),
    "resource": ("Resource", "Tool", "Skill", "Channel"),
}


def _declared_attributes(schema_text: str) -> dict[str, frozenset[str]]:
    """Attribute names per entity/record type declared in our Cedar schema."""
    text = re.sub(r"//[^\n]*", "", schema_text)
    attrs: dict[str, frozenset[str]] = {}
    for names in _ENTITY_RE.findall(text):
        for name in names.split(","):
            attrs.setdefault(name.strip(), frozenset())
    for name, body in _BLOCK_RE.findall(text):
        attrs[name] = frozenset(_ATTR_RE.findall(body))
    return attrs


def _impossible_has(node: Any, declared: dict[str, frozenset[str]]) -> list[str]:
    """``x has attr`` tests on attributes the schema does not declare.

    Cedar's validator types such a test as ``false`` and accepts the policy (at most an
    "impossible policy" warning, which cedarpy does not surface), so a misspelt
    ``context has tool_nmae && ...`` would silently never match. We reject it instead.
    """
    found: list[str] = []
    if isinstance(node, dict):
        has = node.get("has")
        if isinstance(has, dict) and isinstance(has.get("attr"), str):
            left = has.get("left")
            types: tuple[str, ...] | None = None
            if isinstance(left, dict) and isinstance(left.get("Var"), str):
                types = _VAR_TYPES.get(left["Var"])
            elif isinstance(left, dict) and isinstance(left.get("Value"), dict):
                entity = left["Value"].get("__entity")
                if isinstance(entity, dict) and entity.get("type") in declared:
                    types = (entity["type"],)
            if types is not None and not any(has["attr"] in declared[t] for t in types):
                found.append(has["attr"])
        for value in node.values():
            found.extend(_impossible_has(value, declared))
    elif isinstance(node, list):
        for value in node:
            found.extend(_impossible_has(value, declared))
    return found


def _policy_ids(text: str, declared: dict[str, frozenset[str]]) -> dict[str, str]:
    """Positional policy id (``policy3``) -> ``@id`` annotation (or itself if none).

    Also rejects duplicate ``@id``s, templates, and ``has`` tests of undeclared attributes.
    """
    est = orjson.loads(cedarpy.policies_to_json_str(text))
    ids: dict[str, str] = {}
    errors: list[str] = []
    seen: dict[str, str] = {}
    for positional, policy in est.get("staticPolicies", {}).items():
        annotated = (policy.get("annotations") or {}).get("id") or positional
        if annotated in seen:
            raise InvalidInput(
                f"duplicate policy @id({annotated!r})",
                details={"policy_id": annotated},
            )
        seen[annotated] = positional
        ids[positional] = annotated
        for attr in _impossible_has(policy.get("conditions", []), declared):
            errors.append(
                f"{annotated}: `has {attr}` tests an attribute the schema does not "
                "declare, so the condition can never hold"
            )
    if errors:
        raise InvalidInput(
            "policy validation failed: " + "; ".join(errors), details={"errors": errors}
        )
    if est.get("templates"):
        raise InvalidInput("policy templates are not supported in the policy set")
    return ids


_DECISION_CACHE_SIZE = 4096
_CONTEXT_WORD = re.compile(r"\bcontext\b")
_CONTEXT_READ = re.compile(
    r"\bcontext\s*(?:\.\s*([A-Za-z_]\w*)|has\s+([A-Za-z_]\w*)|\[\s*\"([^\"]+)\"\s*\])"
)


def _context_keys_read(policy_text: str) -> tuple[str, ...] | None:
    """The context attributes the policies read, or None if that cannot be told
    (``context`` used as a whole somewhere). Comments are stripped first."""
    text = re.sub(r"//[^\n]*", "", policy_text)
    reads = _CONTEXT_READ.findall(text)
    if len(reads) != len(_CONTEXT_WORD.findall(text)):
        return None
    return tuple(sorted({next(g for g in groups if g) for groups in reads}))


class PolicyEngine:
    """Pre-parsed Cedar handles for one :class:`PolicyConfig`. Immutable, thread-safe."""

    __slots__ = (
        "_config", "_context_keys", "_decisions", "_entities", "_policy_ids", "_policy_set",
        "_policy_text",
    )

    def __init__(
        self,
        config: PolicyConfig,
        policy_text: str,
        policy_set: cedarpy.PolicySet,
        entities: cedarpy.Entities,
        policy_ids: dict[str, str],
    ) -> None:
        self._config = config
        self._policy_text = policy_text
        self._policy_set = policy_set
        self._entities = entities
        self._policy_ids = policy_ids
        self._context_keys = _context_keys_read(policy_text)
        self._decisions: dict[tuple[Any, ...], PolicyDecision] = {}

    @classmethod
    def build(cls, config: PolicyConfig | None = None) -> PolicyEngine:
        """Validate baseline + extra policies against the schema, then parse the handles.

        Raises :class:`InvalidInput` (with ``details["errors"]``) when the policy text does
        not parse or does not type-check, tests an undeclared attribute with ``has``, or
        when two policies share an ``@id``.
        """
        config = config if config is not None else PolicyConfig()
        text = baseline_policies()
        if config.extra_policies.strip():
            text = f"{text}\n// --- extra_policies ---\n{config.extra_policies}\n"
        schema, declared = _schema()
        result = cedarpy.validate_policies(text, schema)
        if not result.validation_passed:
            names = result.id_annotations_by_policy_id
            errors = [
                f"{names.get(e.policy_id, e.policy_id) or '<parse>'}: {e.error}"
                for e in result.errors
            ]
            raise InvalidInput(
                "policy validation failed: " + "; ".join(errors),
                details={"errors": errors},
            )
        policy_ids = _policy_ids(text, declared)
        try:
            policy_set = cedarpy.PolicySet.from_str(text)
            entities = cedarpy.Entities.from_json_str(
                orjson.dumps([config.config_entity()]).decode(), schema
            )
        except ValueError as exc:  # validated above, so this is not expected
            raise InvalidInput(f"policy set could not be built: {exc}") from exc
        return cls(config, text, policy_set, entities, policy_ids)

    @property
    def config(self) -> PolicyConfig:
        return self._config

    @property
    def policy_text(self) -> str:
        return self._policy_text

    @property
    def policy_ids(self) -> tuple[str, ...]:
        """Every policy's ``@id`` (positional id where none is given), in text order."""
        return tuple(self._policy_ids.values())

    def evaluate(self, request: PolicyRequest) -> PolicyDecision:
        """Decide one request. Never raises: anything unexpected is a safe deny.

        Decisions are memoised per engine. The key holds principal, action, resource and
        exactly the context attributes some policy reads (found statically in the policy
        text), so a run or session id that no policy looks at does not defeat the cache;
        if the policies use ``context`` in any other way, nothing is cached.
        """
        try:
            prepared = self._prepare(request)
        except InvalidInput as exc:
            return PolicyDecision(False, FAILED_SAFELY_PREFIX + exc.message)
        if self._context_keys is None:
            return self._decide(prepared)
        context = prepared.context
        cedar = prepared.cedar_request
        key = (
            cedar["principal"]["id"], cedar["action"]["id"], str(cedar["resource"]),
            *(orjson.dumps(context.get(k)) for k in self._context_keys),
        )
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(prepared)
            if decision.diagnostics_errors or decision.reason.startswith(FAILED_SAFELY_PREFIX):
                return decision  # never remember a failure
            if len(self._decisions) >= _DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def explain(self, request: PolicyRequest) -> dict[str, Any]:
        """Decision plus the flags, context and entities behind it (for the explain API)."""
        try:
            prepared = self._prepare(request)
        except InvalidInput as exc:
            return {
                "decision": "deny",
                "reason": FAILED_SAFELY_PREFIX + exc.message,
                "matched_policy_ids": [],
                "diagnostics_errors": [],
                "flags": {},
                "context": {},
                "entities": [],
            }
        decision = self._decide(prepared)
        return {
            "decision": "allow" if decision.allowed else "deny",
            "reason": decision.reason,
            "matched_policy_ids": list(decision.matched_policy_ids),
            "diagnostics_errors": list(decision.diagnostics_errors),
            "flags": dict(prepared.flags),
            "principal": prepared.cedar_request["principal"],
            "action": prepared.cedar_request["action"],
            "resource": prepared.cedar_request["resource"],
            "context": prepared.context,
            "entities": [*prepared.entities, self._config.config_entity()],
            "policy_ids": list(self.policy_ids),
        }

    # -- internals ---------------------------------------------------------------

    def _prepare(self, request: PolicyRequest) -> _Prepared:
        if not isinstance(request.principal, str) or not request.principal.strip():
            raise InvalidInput("principal is required")
        if not isinstance(request.action, str) or not request.action.strip():
            raise InvalidInput("action is required")
        if not isinstance(request.resource, str) or not request.resource.strip():
            raise InvalidInput("resource is required")
        principal = request.principal.strip()
        action = request.action.strip().lower()
        resource_uid, tool_name, skill_id = _split_resource(request.resource.strip())
        given_tool = _opt(request.tool_name, lower=True)
        given_skill = _opt(request.skill_id, lower=True)
        if tool_name is not None and given_tool is not None and given_tool != tool_name:
            raise InvalidInput(f"tool_name {given_tool!r} does not match resource tool:{tool_name}")
        if skill_id is not None and given_skill is not None and given_skill != skill_id:
            raise InvalidInput(f"skill_id {given_skill!r} does not match resource skill:{skill_id}")
        tool_name = tool_name or given_tool
        skill_id = skill_id or given_skill
        channel = _opt(request.channel, lower=False)
        capabilities = _normalize_capabilities(request.capabilities)
        allow_sensitive = request.allow_sensitive_tools is True
        device_id = request.device_id.strip() if isinstance(request.device_id, str) else ""

        context: dict[str, Any] = {
            "principal": principal,
            "action": action,
            "device_id": device_id,
            "capabilities": sorted(capabilities),
            "allow_sensitive_tools": allow_sensitive,
        }
        optional = (
            ("channel", channel),
            ("session_id", _opt(request.session_id, lower=False)),
            ("run_id", _opt(request.run_id, lower=False)),
            ("tool_name", tool_name),
            ("skill_id", skill_id),
        )
        for key, value in optional:
            if value is not None:
                context[key] = value

        cfg = self._config
        flags = {
            "principal_allowlisted": not cfg.allowed_principals
            or principal in cfg.allowed_principals,
            "channel_allowlisted": not cfg.allowed_channels
            or (channel is not None and channel in cfg.allowed_channels),
            "tool_allowlisted": tool_name is not None and tool_name in cfg.allowed_tools,
            "skill_allowlisted": skill_id is not None and skill_id in cfg.allowed_skills,
            "is_sensitive_action": action in cfg.sensitive_actions
            or (tool_name is not None and tool_name in cfg.sensitive_tools)
            or not capabilities.isdisjoint(cfg.sensitive_capabilities),
            "allow_sensitive_tools": allow_sensitive,
        }
        principal_uid = {"type": "Principal", "id": principal}
        action_uid = {"type": "Action", "id": action}
        cedar_request = {
            "principal": principal_uid,
            "action": action_uid,
            "resource": resource_uid,
            "context": orjson.dumps(context).decode(),
        }
        # No per-request entities reach Cedar: policies read no attributes of principal or
        # resource, so their UIDs need not exist in the entity store.
        entities = (
            {"uid": principal_uid, "attrs": {}, "parents": []},
            {"uid": resource_uid, "attrs": {}, "parents": []},
        )
        return _Prepared(cedar_request, context, flags, entities)

    def _decide(self, prepared: _Prepared) -> PolicyDecision:
        try:
            result = cedarpy.is_authorized(prepared.cedar_request, self._policy_set, self._entities)
            allowed = result.allowed
            reasons = result.diagnostics.reasons
            errors = tuple(str(e) for e in result.diagnostics.errors)
        except Exception as exc:  # fail closed on anything the engine throws
            return PolicyDecision(False, f"{FAILED_SAFELY_PREFIX}{type(exc).__name__}: {exc}")
        matched = tuple(self._policy_ids.get(r, r) for r in reasons)
        if allowed:
            reason = "allowed by policy: " + ", ".join(matched)
        else:
            reason = self._deny_reason(prepared, matched, errors)
        return PolicyDecision(allowed, reason, matched, errors)

    def _deny_reason(
        self, prepared: _Prepared, matched: tuple[str, ...], errors: tuple[str, ...]
    ) -> str:
        """Spec 1.6.1 priority: diagnostics error, principal, channel, sensitive, tool, skill."""
        flags = prepared.flags
        action = prepared.context["action"]
        if errors:
            return "policy diagnostics reported errors: " + "; ".join(errors)
        if action == _TOOL_EXECUTE and not flags["principal_allowlisted"]:
            return REASON_PRINCIPAL
        if action == _TOOL_EXECUTE and not flags["channel_allowlisted"]:
            return REASON_CHANNEL if "channel" in prepared.context else REASON_CHANNEL_MISSING
        if flags["is_sensitive_action"] and not flags["allow_sensitive_tools"]:
            return REASON_SENSITIVE
        if action == _TOOL_EXECUTE and not flags["tool_allowlisted"]:
            return REASON_TOOL
        if action == _SKILL_EXECUTE and not flags["skill_allowlisted"]:
            return REASON_SKILL
        if matched:
            return "denied by policy: " + ", ".join(matched)
        return DENY_BY_DEFAULT_REASON
