"""Budgets, pricing, usage and sessions over HTTP."""

from __future__ import annotations

import pytest

from palyra.ids import new_ulid

pytestmark = pytest.mark.trio

POLICY = {"policy_id": "tokens-global", "scope_kind": "global", "metric_kind": "total_tokens",
          "interval_kind": "rolling_24h", "action": "approval_required",
          "hard_limit_value": 100_000}


async def test_budget_policies_put_list_evaluate_and_override(api):
    put = await api.post("/admin/v1/budgets", POLICY, headers={"X-Palyra-Principal": "user:ops"})
    assert put.status == 200, put
    record = put.json
    assert record["policy_id"] == "tokens-global" and record["hard_limit_value"] == 100_000
    assert record["created_by_principal"] == "user:ops" and record["enabled"] is True
    listed = (await api.get("/admin/v1/budgets")).json["policies"]
    assert [p["policy_id"] for p in listed] == ["tokens-global"]

    evaluation = (await api.get("/admin/v1/budgets/evaluate",
                                query={"principal": "user:local"})).json
    assert evaluation["budget_outcome"] == "ok"
    assert [e["policy_id"] for e in evaluation["evaluations"]] == ["tokens-global"]

    override = await api.post("/admin/v1/budgets/tokens-global/override-request",
                              {"reason": "quarter end"})
    assert override.status == 202, override
    approval = override.json
    assert approval["subject_type"] == "usage_budget" and approval["decision"] is None
    pending = (await api.get("/admin/v1/approvals", query={"pending": "true"})).json
    assert [a["approval_id"] for a in pending["approvals"]] == [approval["approval_id"]]
    decided = await api.post(f"/admin/v1/approvals/{approval['approval_id']}/decision",
                             {"approved": True})
    assert decided.json["decision"] == "allow"
    missing = await api.post("/admin/v1/budgets/no-such-policy/override-request", {})
    assert missing.status == 404 and missing.error["code"] == "not_found"


async def test_budget_policy_validation_names_the_field(api):
    cases = [
        ({**POLICY, "scope_kind": "planet"}, "scope_kind"),
        ({**POLICY, "created_by_principal": "me"}, "created_by_principal"),
        ({k: v for k, v in POLICY.items() if k != "action"}, "action"),
        ({**POLICY, "hard_limit_value": "lots"}, "hard_limit_value"),
        ({**POLICY, "scope_kind": "principal"}, "scope_id"),  # domain validation
    ]
    for body, field in cases:
        reply = await api.post("/admin/v1/budgets", body)
        assert reply.status == 400, (field, reply)
        assert reply.error["details"]["field"] == field, reply.error


async def test_pricing_put_and_list(api):
    seeded = (await api.get("/admin/v1/pricing")).json["pricing"]
    record = {"pricing_id": "p-test", "provider_id": "deterministic-primary",
              "provider_kind": "deterministic", "model_id": "deterministic",
              "input_cost_per_million_usd": 1.5, "output_cost_per_million_usd": 2.0}
    put = await api.post("/admin/v1/pricing", record)
    assert put.status == 200, put
    assert put.json["input_cost_per_million_usd"] == 1.5
    listed = (await api.get("/admin/v1/pricing")).json["pricing"]
    assert len(listed) == len(seeded) + 1
    assert "p-test" in {p["pricing_id"] for p in listed}
    bad = await api.post("/admin/v1/pricing", {**record, "input_cost_per_million_usd": -1})
    assert bad.status == 400 and bad.error["details"]["field"] == "input_cost_per_million_usd"


async def test_usage_reports_count_finished_runs(api):
    run_id = await api.send("alpha beta gamma")
    await api.events(run_id)
    summary = (await api.get("/admin/v1/usage/summary")).json
    assert summary["totals"]["runs"] == 1 and summary["totals"]["total_tokens"] == 6
    assert summary["query"]["bucket"] == "auto"
    models = (await api.get("/admin/v1/usage/models")).json["models"]
    assert models and models[0]["model_id"] == "deterministic"
    assert (await api.get("/admin/v1/usage/tools")).json == {"tools": []}
    bad = await api.get("/admin/v1/usage/summary",
                        query={"start_at_unix_ms": "10", "end_at_unix_ms": "5"})
    assert bad.status == 400 and bad.error["details"]["field"] == "end_at_unix_ms"
    bucket = await api.get("/admin/v1/usage/summary", query={"bucket": "week"})
    assert bucket.status == 400 and bucket.error["details"]["field"] == "bucket"


async def test_sessions_resolve_list_archive(api):
    who = {"principal": "user:ops", "channel": "cli"}
    created = await api.post("/admin/v1/sessions/resolve", {"session_key": "ops-1", **who})
    assert created.status == 200, created
    assert created.json["created"] is True
    session_id = created.json["session"]["session_id"]
    again = (await api.post("/admin/v1/sessions/resolve", {"session_key": "ops-1", **who})).json
    assert again["created"] is False and again["session"]["session_id"] == session_id
    listed = (await api.get("/admin/v1/sessions", query=who)).json["sessions"]
    assert [s["session_key"] for s in listed] == ["ops-1"]
    assert (await api.get("/admin/v1/sessions")).json == {"sessions": []}  # user:local's

    other = await api.post("/admin/v1/sessions/resolve", {"session_key": "ops-1"})
    assert other.status == 409 and other.error["code"] == "session_identity_mismatch"
    required = await api.post("/admin/v1/sessions/resolve",
                              {"session_key": "nope", "require_existing": True})
    assert required.status == 404

    archived = await api.post("/admin/v1/sessions/archive", {"session_id": session_id, **who})
    assert archived.status == 200 and archived.json["session_id"] == session_id
    assert (await api.get("/admin/v1/sessions", query=who)).json == {"sessions": []}
    assert (await api.post("/admin/v1/sessions/archive", {})).status == 400
    assert (await api.post("/admin/v1/sessions/archive",
                           {"session_id": new_ulid()})).status == 404
