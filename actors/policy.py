"""The policy actor: owns the Cedar engine and swaps in new ones after validation.

Decisions do not go through its mailbox: a built :class:`PolicyEngine` is immutable
(pre-parsed PolicySet, Schema and Entities), so run actors evaluate against the
current engine directly (~50 us) and the actor serialises only *changes*: validate
against the schema, build the handles, then swap the reference atomically.
"""

from __future__ import annotations

import threading

from palyra.config import ToolsConfig
from palyra.policy import PolicyConfig, PolicyEngine
from supervisors.supervised import Supervised

POLICY = "policy"


def policy_config(tools: ToolsConfig, sensitive_tools: frozenset[str] = frozenset()) -> PolicyConfig:
    return PolicyConfig(
        allowed_tools=frozenset(tools.allowed),
        allowed_principals=frozenset(tools.allowed_principals),
        allowed_channels=frozenset(tools.allowed_channels),
        sensitive_tools=frozenset(tools.sensitive) | sensitive_tools,
        extra_policies=tools.extra_policies,
    )


class PolicyHolder:
    """The current engine; replaced as a whole, read without locks."""

    def __init__(self, engine: PolicyEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()

    @property
    def engine(self) -> PolicyEngine:
        return self._engine

    def swap(self, engine: PolicyEngine) -> None:
        with self._lock:
            self._engine = engine


class PolicyActor(Supervised):
    def init(self) -> None:
        svc = self.services
        # Rebuild from configuration: the engine is derived state, never durable state.
        engine = PolicyEngine.build(policy_config(svc.config.tools, svc.tools.sensitive_tool_names()))
        svc.policy.swap(engine)

    def update(self, tools: ToolsConfig) -> list[str]:
        """Validate and swap in a new policy; raises InvalidInput and keeps the old one."""
        svc = self.services
        engine = PolicyEngine.build(policy_config(tools, svc.tools.sensitive_tool_names()))
        svc.policy.swap(engine)
        return list(engine.policy_ids)
