"""The Cedar baseline policies, evaluated for real through cedarpy."""

from __future__ import annotations

import cedarpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra.errors import InvalidInput
from palyra.policy import (
    DENY_BY_DEFAULT_REASON,
    PolicyConfig,
    PolicyEngine,
    PolicyRequest,
    baseline_policies,
    policy_schema,
)
from palyra.policy import engine as engine_module
from palyra.policy.engine import (
    REASON_CHANNEL,
    REASON_CHANNEL_MISSING,
    REASON_PRINCIPAL,
    REASON_SENSITIVE,
    REASON_SKILL,
    REASON_TOOL,
)

BASELINE_IDS = (
    "deny_sensitive_without_approval",
    "allow_read_only_actions",
    "allow_allowlisted_tool_execute",
    "allow_allowlisted_skill_execute",
    "allow_cron_management_actions",
    "allow_memory_actions",
    "allow_vault_actions",
    "allow_message_router_actions",
    "allow_attachment_metadata_actions",
)

RULE_ACTIONS = {
    "allow_read_only_actions": [
        "tool.read",
        "tool.read.status",
        "tool.status",
        "tool.list",
        "tool.health",
        "tool.get",
        "daemon.status",
        "protocol.version",
    ],
    "allow_cron_management_actions": [
        "cron.create",
        "cron.update",
        "cron.get",
        "cron.list",
        "cron.logs",
        "cron.run",
    ],
    "allow_memory_actions": ["memory.ingest", "memory.search", "memory.get", "memory.list"],
    "allow_vault_actions": ["vault.put", "vault.get", "vault.delete", "vault.list"],
    "allow_message_router_actions": [
        "message.reply",
        "message.broadcast",
        "channel.send",
        "channel.message.read",
        "channel.message.search",
        "channel.message.edit",
        "channel.message.delete",
        "channel.message.react_add",
        "channel.message.react_remove",
        "channel.command.status",
        "channel.command.stop",
        "channel.command.reset",
        "channel.command.compact",
        "channel.command.approve",
        "channel.command.queue",
        "channel.command.whoami",
    ],
    "allow_attachment_metadata_actions": ["attachment.metadata.accept"],
}
SENSITIVE_ACTIONS = ["cron.delete", "memory.delete", "memory.purge"]


@pytest.fixture(scope="module")
def baseline() -> PolicyEngine:
    return PolicyEngine.build(PolicyConfig())


@pytest.fixture(scope="module")
def echo_engine() -> PolicyEngine:
    return PolicyEngine.build(PolicyConfig(allowed_tools={"palyra.echo", "palyra.http.fetch"}))


def req(action: str, resource: str = "resource:any", **kw) -> PolicyRequest:
    kw.setdefault("principal", "user:ops")
    kw.setdefault("device_id", "01J0000000000000000000DEV1")
    return PolicyRequest(action=action, resource=resource, **kw)


def tool_req(tool: str = "palyra.echo", **kw) -> PolicyRequest:
    return req("tool.execute", f"tool:{tool}", **kw)


# -- the files ------------------------------------------------------------------------


def test_baseline_files_ship_as_package_data_and_validate() -> None:
    result = cedarpy.validate_policies(
        baseline_policies(), cedarpy.Schema.from_str(policy_schema())
    )
    assert result.validation_passed, [str(e) for e in result.errors]


def test_baseline_policy_ids_are_the_spec_ids_in_order(baseline: PolicyEngine) -> None:
    assert baseline.policy_ids == BASELINE_IDS


# -- each baseline rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "action"),
    [(rule, action) for rule, actions in RULE_ACTIONS.items() for action in actions],
)
def test_baseline_rule_allows_its_actions(baseline: PolicyEngine, rule: str, action: str) -> None:
    decision = baseline.evaluate(req(action))
    assert decision.allowed, decision.reason
    assert decision.matched_policy_ids == (rule,)
    assert decision.reason == f"allowed by policy: {rule}"


@pytest.mark.parametrize("action", SENSITIVE_ACTIONS)
def test_sensitive_actions_denied_without_approval(baseline: PolicyEngine, action: str) -> None:
    decision = baseline.evaluate(req(action))
    assert not decision.allowed
    assert decision.matched_policy_ids == ("deny_sensitive_without_approval",)
    assert decision.reason == REASON_SENSITIVE


@pytest.mark.parametrize(
    ("action", "rule"),
    [
        ("cron.delete", "allow_cron_management_actions"),
        ("memory.delete", "allow_memory_actions"),
        ("memory.purge", "allow_memory_actions"),
    ],
)
def test_sensitive_actions_allowed_with_approval(
    baseline: PolicyEngine, action: str, rule: str
) -> None:
    decision = baseline.evaluate(req(action, allow_sensitive_tools=True))
    assert decision.allowed
    assert decision.matched_policy_ids == (rule,)


def test_sensitive_actions_are_configurable() -> None:
    engine = PolicyEngine.build(PolicyConfig(sensitive_actions={"Vault.Get"}))
    assert not engine.evaluate(req("vault.get")).allowed
    assert engine.evaluate(req("memory.purge")).allowed


def test_unknown_action_denied_by_default(baseline: PolicyEngine) -> None:
    decision = baseline.evaluate(req("rm.rf"))
    assert not decision.allowed
    assert decision.reason == DENY_BY_DEFAULT_REASON
    assert decision.matched_policy_ids == ()


def test_actions_are_lower_cased(baseline: PolicyEngine) -> None:
    decision = baseline.evaluate(req("  Memory.SEARCH "))
    assert decision.allowed
    assert decision.matched_policy_ids == ("allow_memory_actions",)


# -- tool.execute and allowlists --------------------------------------------------------


def test_tool_execute_denied_with_empty_allowlist(baseline: PolicyEngine) -> None:
    decision = baseline.evaluate(tool_req("palyra.echo"))
    assert not decision.allowed
    assert decision.reason == REASON_TOOL
    assert decision.matched_policy_ids == ()


def test_allowlisted_tool_execute_allowed(echo_engine: PolicyEngine) -> None:
    decision = echo_engine.evaluate(tool_req("palyra.echo"))
    assert decision.allowed
    assert decision.matched_policy_ids == ("allow_allowlisted_tool_execute",)


def test_tool_names_from_resource_are_lower_cased(echo_engine: PolicyEngine) -> None:
    decision = echo_engine.evaluate(req("TOOL.EXECUTE", "Tool:Palyra.Echo"))
    assert decision.allowed
    assert (
        echo_engine.explain(req("tool.execute", "tool:Palyra.Echo"))["context"]["tool_name"]
        == "palyra.echo"
    )


def test_tool_not_on_allowlist_denied(echo_engine: PolicyEngine) -> None:
    decision = echo_engine.evaluate(tool_req("palyra.fs.apply_patch"))
    assert not decision.allowed
    assert decision.reason == REASON_TOOL


def test_tool_execute_needs_a_tool_resource(echo_engine: PolicyEngine) -> None:
    decision = echo_engine.evaluate(req("tool.execute", "memory:x", tool_name="palyra.echo"))
    assert not decision.allowed


def test_principal_allowlist_restricts_tool_execute() -> None:
    engine = PolicyEngine.build(
        PolicyConfig(allowed_tools={"palyra.echo"}, allowed_principals={"user:ops"})
    )
    assert engine.evaluate(tool_req(principal="user:ops")).allowed
    denied = engine.evaluate(tool_req(principal="user:mallory"))
    assert not denied.allowed
    assert denied.reason == REASON_PRINCIPAL
    # Non-tool actions are not restricted by the principal allowlist.
    assert engine.evaluate(req("memory.search", principal="user:mallory")).allowed


def test_channel_allowlist_restricts_tool_execute() -> None:
    engine = PolicyEngine.build(
        PolicyConfig(allowed_tools={"palyra.echo"}, allowed_channels={"cli", "Discord"})
    )
    assert engine.evaluate(tool_req(channel="cli")).allowed
    assert engine.evaluate(tool_req(channel="Discord")).allowed
    other = engine.evaluate(tool_req(channel="slack"))
    assert not other.allowed
    assert other.reason == REASON_CHANNEL


@pytest.mark.parametrize("channel", [None, "", "   "])
def test_non_empty_channel_allowlist_rejects_a_missing_channel(channel: str | None) -> None:
    engine = PolicyEngine.build(
        PolicyConfig(allowed_tools={"palyra.echo"}, allowed_channels={"cli"})
    )
    decision = engine.evaluate(tool_req(channel=channel))
    assert not decision.allowed
    assert decision.reason == REASON_CHANNEL_MISSING


def test_empty_channel_allowlist_accepts_a_missing_channel(echo_engine: PolicyEngine) -> None:
    assert echo_engine.evaluate(tool_req(channel=None)).allowed
    assert echo_engine.evaluate(tool_req(channel="anything")).allowed


def test_sensitive_capability_without_approval_denied(echo_engine: PolicyEngine) -> None:
    decision = echo_engine.evaluate(tool_req("palyra.http.fetch", capabilities=["network"]))
    assert not decision.allowed
    assert decision.reason == REASON_SENSITIVE
    assert decision.matched_policy_ids == ("deny_sensitive_without_approval",)


def test_sensitive_capability_with_approval_allowed(echo_engine: PolicyEngine) -> None:
    decision = echo_engine.evaluate(
        tool_req("palyra.http.fetch", capabilities=["network"], allow_sensitive_tools=True)
    )
    assert decision.allowed
    assert decision.matched_policy_ids == ("allow_allowlisted_tool_execute",)


def test_capabilities_are_trimmed_lowered_and_deduplicated(echo_engine: PolicyEngine) -> None:
    request = tool_req("palyra.http.fetch", capabilities=[" NETWORK ", "network", "", "Read"])
    assert not echo_engine.evaluate(request).allowed
    assert echo_engine.explain(request)["context"]["capabilities"] == ["network", "read"]


def test_non_sensitive_capability_does_not_need_approval(echo_engine: PolicyEngine) -> None:
    assert echo_engine.evaluate(tool_req(capabilities=["read_only"])).allowed


def test_sensitive_tool_names_need_approval() -> None:
    engine = PolicyEngine.build(
        PolicyConfig(allowed_tools={"palyra.process.run"}, sensitive_tools={"palyra.process.run"})
    )
    denied = engine.evaluate(tool_req("palyra.process.run"))
    assert not denied.allowed
    assert denied.reason == REASON_SENSITIVE
    assert engine.evaluate(tool_req("palyra.process.run", allow_sensitive_tools=True)).allowed


def test_skill_execute_follows_skill_allowlist() -> None:
    engine = PolicyEngine.build(PolicyConfig(allowed_skills={"Weather"}))
    allowed = engine.evaluate(req("skill.execute", "skill:weather"))
    assert allowed.allowed
    assert allowed.matched_policy_ids == ("allow_allowlisted_skill_execute",)
    denied = engine.evaluate(req("skill.execute", "skill:stocks"))
    assert not denied.allowed
    assert denied.reason == REASON_SKILL


def test_skill_execute_denied_with_empty_skill_allowlist(baseline: PolicyEngine) -> None:
    decision = baseline.evaluate(req("skill.execute", "skill:weather"))
    assert not decision.allowed
    assert decision.reason == REASON_SKILL


# -- reason priority --------------------------------------------------------------------


def test_principal_reason_outranks_channel_and_sensitive() -> None:
    engine = PolicyEngine.build(
        PolicyConfig(
            allowed_tools={"palyra.http.fetch"},
            allowed_principals={"user:ops"},
            allowed_channels={"cli"},
        )
    )
    request = tool_req(
        "palyra.http.fetch", principal="user:eve", channel="irc", capabilities=["network"]
    )
    decision = engine.evaluate(request)
    assert not decision.allowed
    assert decision.reason == REASON_PRINCIPAL
    # Cedar still reports the forbid that matched.
    assert decision.matched_policy_ids == ("deny_sensitive_without_approval",)


def test_channel_reason_outranks_sensitive() -> None:
    engine = PolicyEngine.build(
        PolicyConfig(allowed_tools={"palyra.http.fetch"}, allowed_channels={"cli"})
    )
    request = tool_req("palyra.http.fetch", channel="irc", capabilities=["network"])
    assert engine.evaluate(request).reason == REASON_CHANNEL


def test_sensitive_reason_outranks_tool_not_allowlisted(baseline: PolicyEngine) -> None:
    decision = baseline.evaluate(tool_req("palyra.http.fetch", capabilities=["network"]))
    assert decision.reason == REASON_SENSITIVE


# -- extra policies and validation ------------------------------------------------------


def test_extra_forbid_reason_names_its_id(echo_engine: PolicyEngine) -> None:
    extra = """
    @id("no_echo_on_discord")
    forbid (principal, action == Action::"tool.execute", resource == Tool::"palyra.echo")
    when { context has channel && context.channel == "discord" };
    """
    engine = PolicyEngine.build(PolicyConfig(allowed_tools={"palyra.echo"}, extra_policies=extra))
    decision = engine.evaluate(tool_req(channel="discord"))
    assert not decision.allowed
    assert decision.matched_policy_ids == ("no_echo_on_discord",)
    assert decision.reason == "denied by policy: no_echo_on_discord"
    assert engine.evaluate(tool_req(channel="cli")).allowed


def test_extra_permit_without_id_reports_positional_id() -> None:
    extra = 'permit (principal == Principal::"system:cron", action == Action::"tool.execute", resource);'
    engine = PolicyEngine.build(PolicyConfig(extra_policies=extra))
    decision = engine.evaluate(tool_req("palyra.anything", principal="system:cron"))
    assert decision.allowed
    assert decision.matched_policy_ids == (f"policy{len(BASELINE_IDS)}",)


def test_misspelt_attribute_in_extra_policy_rejected_at_build() -> None:
    extra = """
    @id("typo")
    permit (principal, action == Action::"tool.execute", resource)
    when { context has tool_nmae && context.tool_nmae == "palyra.echo" };
    """
    with pytest.raises(InvalidInput) as info:
        PolicyEngine.build(PolicyConfig(extra_policies=extra))
    assert "tool_nmae" in info.value.message
    assert info.value.details["errors"][0].startswith("typo: ")


def test_misspelt_attribute_without_has_rejected_by_cedar_validator() -> None:
    extra = '@id("typo2")\npermit (principal, action, resource) when { context.principl == "x" };'
    with pytest.raises(InvalidInput) as info:
        PolicyEngine.build(PolicyConfig(extra_policies=extra))
    assert "principl" in info.value.message
    assert info.value.details["errors"][0].startswith("typo2: ")


@pytest.mark.parametrize(
    "condition",
    [
        "principal has role",
        "resource has owner",
        'PolicyConfig::"active" has allowed_toolz',
    ],
)
def test_has_on_undeclared_attribute_rejected_at_build(condition: str) -> None:
    extra = f"permit (principal, action, resource) when {{ {condition} }};"
    with pytest.raises(InvalidInput, match="can never hold"):
        PolicyEngine.build(PolicyConfig(extra_policies=extra))


def test_schema_declares_every_attribute_the_engine_sends() -> None:
    declared = engine_module._declared_attributes(policy_schema())
    full = PolicyEngine.build().explain(
        tool_req(channel="c", session_id="s", run_id="r", skill_id="k")
    )
    assert set(full["context"]) == declared["RequestContext"]
    assert set(PolicyConfig().config_entity()["attrs"]) == declared["PolicyConfig"]


def test_unguarded_optional_attribute_rejected_at_build() -> None:
    extra = 'permit (principal, action, resource) when { context.channel == "cli" };'
    with pytest.raises(InvalidInput, match="policy validation failed"):
        PolicyEngine.build(PolicyConfig(extra_policies=extra))


def test_wrong_type_in_extra_policy_rejected_at_build() -> None:
    extra = "permit (principal, action, resource) when { context.allow_sensitive_tools == 1 };"
    with pytest.raises(InvalidInput, match="policy validation failed"):
        PolicyEngine.build(PolicyConfig(extra_policies=extra))


def test_undeclared_action_rejected_at_build() -> None:
    extra = 'permit (principal, action == Action::"shell.exec", resource);'
    with pytest.raises(InvalidInput, match="shell.exec"):
        PolicyEngine.build(PolicyConfig(extra_policies=extra))


def test_unparsable_extra_policy_rejected_at_build() -> None:
    with pytest.raises(InvalidInput, match="policy validation failed"):
        PolicyEngine.build(PolicyConfig(extra_policies="permit (principal, action, resource) >"))


def test_duplicate_policy_id_rejected_at_build() -> None:
    extra = '@id("allow_memory_actions")\nforbid (principal, action, resource);'
    with pytest.raises(InvalidInput, match="duplicate policy @id"):
        PolicyEngine.build(PolicyConfig(extra_policies=extra))


def test_config_rejects_a_bare_string_allowlist() -> None:
    with pytest.raises(InvalidInput):
        PolicyConfig(allowed_tools="palyra.echo")  # type: ignore[arg-type]


def test_new_config_builds_a_new_engine_old_one_unchanged(baseline: PolicyEngine) -> None:
    widened = PolicyEngine.build(PolicyConfig(allowed_tools={"palyra.echo"}))
    assert widened.evaluate(tool_req()).allowed
    assert not baseline.evaluate(tool_req()).allowed
    assert baseline.config.allowed_tools == frozenset()


# -- failing safely ---------------------------------------------------------------------


def test_runtime_evaluation_error_denies_with_diagnostics_reason() -> None:
    extra = """
    @id("overflowing_permit")
    permit (principal, action == Action::"tool.execute", resource)
    when { 9223372036854775807 + 1 > 0 };
    """
    engine = PolicyEngine.build(PolicyConfig(extra_policies=extra))
    decision = engine.evaluate(tool_req())
    assert not decision.allowed
    assert decision.diagnostics_errors
    assert decision.reason.startswith("policy diagnostics reported errors: ")


def test_engine_exception_fails_safely(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("engine exploded")

    fresh = PolicyEngine.build(PolicyConfig(allowed_tools={"palyra.echo"}))  # nothing memoised
    monkeypatch.setattr(engine_module.cedarpy, "is_authorized", boom)
    decision = fresh.evaluate(tool_req())
    assert not decision.allowed
    assert decision.reason == "policy evaluation failed safely: RuntimeError: engine exploded"


@pytest.mark.parametrize(
    ("request_", "detail"),
    [
        (req("tool.execute", "tool:palyra.echo", principal="  "), "principal is required"),
        (req("", "tool:palyra.echo"), "action is required"),
        (req("tool.execute", "tool:"), "needs a tool name"),
        (req("tool.execute", "tool:palyra.echo", tool_name="palyra.sleep"), "does not match"),
    ],
)
def test_malformed_requests_fail_safely(
    echo_engine: PolicyEngine, request_: PolicyRequest, detail: str
) -> None:
    decision = echo_engine.evaluate(request_)
    assert not decision.allowed
    assert decision.reason.startswith("policy evaluation failed safely: ")
    assert detail in decision.reason


# -- explain ----------------------------------------------------------------------------


def test_explain_reports_ids_flags_and_entities() -> None:
    engine = PolicyEngine.build(
        PolicyConfig(allowed_tools={"palyra.echo"}, allowed_channels={"cli"})
    )
    out = engine.explain(tool_req(channel="cli", session_id="S", run_id="R"))
    assert out["decision"] == "allow"
    assert out["matched_policy_ids"] == ["allow_allowlisted_tool_execute"]
    assert out["flags"] == {
        "principal_allowlisted": True,
        "channel_allowlisted": True,
        "tool_allowlisted": True,
        "skill_allowlisted": False,
        "is_sensitive_action": False,
        "allow_sensitive_tools": False,
    }
    assert out["resource"] == {"type": "Tool", "id": "palyra.echo"}
    assert out["context"]["session_id"] == "S"
    uids = [e["uid"] for e in out["entities"]]
    assert {"type": "PolicyConfig", "id": "active"} in uids
    assert {"type": "Principal", "id": "user:ops"} in uids
    assert out["policy_ids"] == list(BASELINE_IDS)


def test_explain_of_malformed_request_is_a_deny() -> None:
    out = PolicyEngine.build().explain(req("tool.execute", "tool:x", principal=""))
    assert out["decision"] == "deny"
    assert out["reason"].startswith("policy evaluation failed safely")


# -- Cedar and the explaining flags agree -----------------------------------------------

_NAMES = st.sampled_from(["a", "b", "c"])


@settings(max_examples=150, deadline=None)
@given(
    allowed_tools=st.frozensets(_NAMES),
    allowed_principals=st.frozensets(_NAMES),
    allowed_channels=st.frozensets(_NAMES),
    tool=_NAMES,
    principal=_NAMES,
    channel=st.none() | _NAMES,
    capabilities=st.frozensets(st.sampled_from(["network", "read", "process_exec"])),
    approved=st.booleans(),
)
def test_cedar_decision_matches_allowlist_semantics(
    allowed_tools,
    allowed_principals,
    allowed_channels,
    tool,
    principal,
    channel,
    capabilities,
    approved,
) -> None:
    engine = _engine_for(allowed_tools, allowed_principals, allowed_channels)
    request = tool_req(
        tool,
        principal=principal,
        channel=channel,
        capabilities=capabilities,
        allow_sensitive_tools=approved,
    )
    expected = (
        tool in allowed_tools
        and (not allowed_principals or principal in allowed_principals)
        and (not allowed_channels or channel in allowed_channels)
        and (approved or not capabilities & {"network", "process_exec"})
    )
    decision = engine.evaluate(request)
    assert decision.allowed == expected, decision.reason
    if not expected:
        assert decision.reason in {
            REASON_PRINCIPAL,
            REASON_CHANNEL,
            REASON_CHANNEL_MISSING,
            REASON_SENSITIVE,
            REASON_TOOL,
        }


_ENGINES: dict[tuple, PolicyEngine] = {}


def _engine_for(tools, principals, channels) -> PolicyEngine:
    key = (tools, principals, channels)
    if key not in _ENGINES:
        _ENGINES[key] = PolicyEngine.build(
            PolicyConfig(
                allowed_tools=tools, allowed_principals=principals, allowed_channels=channels
            )
        )
    return _ENGINES[key]


def test_memoised_decisions_ignore_context_no_policy_reads() -> None:
    engine = PolicyEngine.build(PolicyConfig(allowed_tools={"palyra.echo"}))
    first = engine.evaluate(tool_req(run_id="01J0000000000000000000RUN1"))
    second = engine.evaluate(tool_req(run_id="01J0000000000000000000RUN2"))
    assert first is second  # run_id is read by no policy: one cached decision


def test_memoisation_keys_on_context_a_policy_reads() -> None:
    extra = '@id("forbid_run_x") forbid (principal, action, resource) when {\n'
    extra += '  context has run_id && context.run_id == "01J0000000000000000000RUNX" };'
    engine = PolicyEngine.build(PolicyConfig(allowed_tools={"palyra.echo"}, extra_policies=extra))
    assert engine.evaluate(tool_req(run_id="01J0000000000000000000RUN1")).allowed
    assert not engine.evaluate(tool_req(run_id="01J0000000000000000000RUNX")).allowed
