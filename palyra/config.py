"""Runtime configuration records (the TOML loader and env overrides build these)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from typing import Any

from palyra.errors import InvalidInput
from palyra.journal.store import JournalSettings
from palyra.learning.config import LearningConfig
from palyra.orchestrator.loop import LoopLimits
from palyra.validation import is_int, is_number

POSTURES = ("always_allow", "ask_each_time", "disabled")


@dataclasses.dataclass(frozen=True)
class SupervisionConfig:
    probe_interval: float = 1.0
    probe_timeout: float | None = None  # default: half the interval
    max_restarts: int = 3
    max_seconds: float = 5.0
    shutdown_timeout: float = 5.0
    address_retry_for: float = 2.0

    def __post_init__(self) -> None:
        if self.probe_interval <= 0 or self.max_seconds <= 0 or self.shutdown_timeout <= 0:
            raise ValueError("supervision intervals must be positive")
        if self.max_restarts < 0:
            raise ValueError("supervision.max_restarts must be >= 0")


@dataclasses.dataclass(frozen=True)
class RunsConfig:
    max_tool_calls: int = 4
    wall_clock_ms: int = 120_000
    approval_timeout_ms: int = 60_000
    tool_timeout_ms: int = 750
    max_input_bytes: int = 32 * 1024
    workers: int = 128  # threads for provider calls and tool executions

    def __post_init__(self) -> None:
        for name in ("wall_clock_ms", "approval_timeout_ms", "tool_timeout_ms", "max_input_bytes", "workers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"runs.{name} must be positive")
        if self.max_tool_calls < 0:
            raise ValueError("runs.max_tool_calls must be >= 0")

    @property
    def limits(self) -> LoopLimits:
        return LoopLimits(self.max_tool_calls, self.wall_clock_ms, self.approval_timeout_ms, self.tool_timeout_ms)


@dataclasses.dataclass(frozen=True)
class ToolsConfig:
    """Deny by default: a tool runs only if allowed here (and by Cedar)."""

    allowed: tuple[str, ...] = ()
    allowed_principals: tuple[str, ...] = ()
    allowed_channels: tuple[str, ...] = ()
    sensitive: tuple[str, ...] = ()  # tools that always need approval
    posture: dict[str, str] = dataclasses.field(default_factory=dict)
    extra_policies: str = ""

    def __post_init__(self) -> None:
        for name in ("allowed", "allowed_principals", "allowed_channels", "sensitive"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"tools.{name} must be a list of strings")
            object.__setattr__(self, name, tuple(value))
        for tool, posture in self.posture.items():
            if posture not in POSTURES:
                raise ValueError(f"tools.posture.{tool} must be one of {POSTURES}")


@dataclasses.dataclass(frozen=True)
class GovernanceConfig:
    """Usage governance: budgets (in the database, managed through the API), routing."""

    enabled: bool = True
    routing_mode: str = "suggest"  # suggest | dry_run | enforced
    max_completion_tokens: int = 1024  # reserved per provider call, passed as max_tokens
    models: tuple[dict[str, Any], ...] = ()  # extra routing candidates (ModelCandidate fields)

    def __post_init__(self) -> None:
        if self.routing_mode.replace("-", "_") not in ("suggest", "dry_run", "enforced"):
            raise ValueError("governance.routing_mode must be suggest, dry_run or enforced")
        if self.max_completion_tokens <= 0:
            raise ValueError("governance.max_completion_tokens must be positive")
        object.__setattr__(self, "models", tuple(dict(m) for m in self.models))


@dataclasses.dataclass(frozen=True)
class BackgroundConfig:
    poll_interval_ms: int = 3000  # the queue is also woken at once on every create/control

    def __post_init__(self) -> None:
        if self.poll_interval_ms <= 0:
            raise ValueError("background.poll_interval_ms must be positive")


@dataclasses.dataclass(frozen=True)
class HealingConfig:
    """Self-healing. Domains: watchdog (stale runs and tasks), approval, actor, provider.
    Unlike upstream (advice only), stuck runs and tasks are remediated by default."""

    mode: str = "observe_only"
    modes: dict[str, str] = dataclasses.field(default_factory=lambda: {"watchdog": "auto"})
    loop_interval_ms: int = 15_000
    run_stale_ms: int = 120_000
    task_stale_ms: int = 120_000
    approval_stale_ms: int = 600_000

    def __post_init__(self) -> None:
        allowed = ("disabled", "observe_only", "auto")
        for name, mode in [("mode", self.mode), *((f"modes.{k}", v) for k, v in self.modes.items())]:
            if mode not in allowed:
                raise ValueError(f"healing.{name} must be one of {allowed}")
        for name in ("loop_interval_ms", "run_stale_ms", "task_stale_ms", "approval_stale_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"healing.{name} must be positive")


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """Memory store upkeep and auto-inject (off by default, as upstream)."""

    auto_inject_enabled: bool = False
    auto_inject_max_items: int = 3
    auto_inject_min_score: float = 0.2
    maintenance_interval_ms: int = 3_600_000
    retention_max_entries: int | None = None
    retention_max_bytes: int | None = None
    retention_ttl_days: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.auto_inject_max_items <= 16:
            raise ValueError("memory.auto_inject_max_items must be within 1..16")
        if not 0 <= self.auto_inject_min_score <= 1:
            raise ValueError("memory.auto_inject_min_score must be within 0..1")
        if self.maintenance_interval_ms <= 0:
            raise ValueError("memory.maintenance_interval_ms must be positive")


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """The daemon's HTTP surface (``palyrad``; flags and ``PALYRA_HTTP`` win over ``bind``).

    ``rate_limits`` holds the fields of ``surfaces.http.ratelimit.RateLimits`` (per_s,
    burst, loopback_per_s, loopback_burst, token_per_s, token_burst); the daemon checks
    them when it starts and ``PALYRA_RATE_LIMIT_*`` overrides them.
    """

    bind: str = "127.0.0.1:7142"
    allow_remote_bind: bool = False
    max_body_bytes: int = 64 * 1024
    sse_keepalive_s: float = 15.0
    rate_limits: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.bind, str) or ":" not in self.bind:
            raise ValueError("http.bind must be HOST:PORT")
        if self.max_body_bytes < 1024:
            raise ValueError("http.max_body_bytes must be at least 1024")
        if self.sse_keepalive_s <= 0:
            raise ValueError("http.sse_keepalive_s must be positive")
        if not isinstance(self.rate_limits, dict):
            raise ValueError("http.rate_limits must be a table")


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    kind: str = "deterministic"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


_SECTIONS: dict[str, type] = {
    "journal": JournalSettings,
    "supervision": SupervisionConfig,
    "runs": RunsConfig,
    "tools": ToolsConfig,
    "governance": GovernanceConfig,
    "background": BackgroundConfig,
    "healing": HealingConfig,
    "learning": LearningConfig,
    "memory": MemoryConfig,
    "http": HttpConfig,
}


@dataclasses.dataclass(frozen=True)
class Config:
    journal: JournalSettings = JournalSettings()
    supervision: SupervisionConfig = SupervisionConfig()
    runs: RunsConfig = RunsConfig()
    tools: ToolsConfig = ToolsConfig()
    governance: GovernanceConfig = GovernanceConfig()
    background: BackgroundConfig = BackgroundConfig()
    healing: HealingConfig = HealingConfig()
    learning: LearningConfig = LearningConfig()
    memory: MemoryConfig = MemoryConfig()
    http: HttpConfig = HttpConfig()
    provider: ProviderConfig = ProviderConfig()

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> Config:
        """Build from plain dicts (TOML tables), naming the offending key on error."""
        data = dict(data or {})
        sections: dict[str, Any] = {}
        for name, section_type in _SECTIONS.items():
            raw = data.pop(name, None)
            if raw is not None:
                sections[name] = _section(name, section_type, raw)
        provider = data.pop("provider", None)
        if provider is not None:
            if isinstance(provider, ProviderConfig):
                sections["provider"] = provider
            elif isinstance(provider, dict):
                options = dict(provider)
                sections["provider"] = ProviderConfig(str(options.pop("kind", "deterministic")), options)
            else:
                raise InvalidInput("config section 'provider' must be a table", details={"key": "provider"})
        if data:
            key = sorted(data)[0]
            raise InvalidInput(f"unknown config key {key}", details={"key": key})
        return cls(**sections)


def _section(name: str, section_type: type, raw: Any) -> Any:
    if isinstance(raw, section_type):
        return raw
    if not isinstance(raw, dict):
        raise InvalidInput(f"config section {name!r} must be a table", details={"key": name})
    known = {f.name for f in dataclasses.fields(section_type)}
    unknown = sorted(set(raw) - known)
    if unknown:
        key = f"{name}.{unknown[0]}"
        raise InvalidInput(f"unknown config key {key}", details={"key": key})
    _check_scalars(name, section_type, raw)
    try:
        return section_type(**raw)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid config section {name!r}: {exc}", details={"key": name}) from exc


def _check_scalars(name: str, section_type: type, raw: dict[str, Any]) -> None:
    """Refuse a value of the wrong scalar type: a bool (TOML ``true`` is a Python int)
    or a fraction where a field counts something, and anything but a real bool for a
    switch (the string ``"false"`` is truthy: ``allow_remote_bind = "false"`` would bind
    remotely). The sections' own checks compare values only."""
    hints = typing.get_type_hints(section_type)
    for field, value in raw.items():
        kind = hints.get(field)
        if value is None:
            continue
        if kind in (int, int | None) and not is_int(value):
            wanted = "an integer"
        elif kind in (float, float | None) and not is_number(value):
            wanted = "a number"
        elif kind in (bool, bool | None) and not isinstance(value, bool):
            wanted = "true or false"
        elif kind in (str, str | None) and not isinstance(value, str):
            wanted = "a string"
        else:
            continue
        key = f"{name}.{field}"
        raise InvalidInput(f"config key {key} must be {wanted}", details={"key": key})


# --------------------------------------------------------------------------- environment

ENV_PREFIX = "PALYRA_"
_ENV_SECTIONS = (*_SECTIONS, "provider")


def env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``PALYRA_<SECTION>_<KEY>=value`` for every key of every config section, e.g.
    ``PALYRA_RUNS_MAX_INPUT_BYTES=65536`` or ``PALYRA_PROVIDER_API_KEY=sk-…`` (a secret
    kept out of the file). Section names hold no underscore, so the first one after the
    prefix splits section from key. Values are read as TOML values (``true``, ``42``,
    ``["a", "b"]``) and otherwise taken as plain strings. Other ``PALYRA_*`` variables
    (``PALYRA_STATE_DIR``, ``PALYRA_RATE_LIMIT_*``, ...) name no section and are left alone.
    """
    overrides: dict[str, dict[str, Any]] = {}
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        section, sep, key = name[len(ENV_PREFIX):].lower().partition("_")
        if not sep or not key or section not in _ENV_SECTIONS:
            continue
        known = _SECTIONS.get(section)
        if known is not None and key not in {f.name for f in dataclasses.fields(known)}:
            raise InvalidInput(f"unknown config key {section}.{key} (from ${name})",
                               details={"key": f"{section}.{key}", "env": name})
        overrides.setdefault(section, {})[key] = _env_value(text)
    return overrides


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def merge_env(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The file's tables with the environment's keys laid over them."""
    merged = {name: dict(value) if isinstance(value, dict) else value for name, value in data.items()}
    for section, values in env_overrides(env).items():
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise InvalidInput(f"config section {section!r} must be a table", details={"key": section})
        table.update(values)
    return merged


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """The TOML file at ``path`` (none: defaults) with ``PALYRA_<SECTION>_<KEY>``
    environment overrides laid over it (:func:`env_overrides`)."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise InvalidInput(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from None
    return Config.from_mapping(merge_env(data, os.environ if env is None else env))
