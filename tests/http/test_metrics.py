"""``GET /metrics``: Prometheus text from a per-app registry, parsed by prometheus_client."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.http.conftest import STEP, serving

pytestmark = pytest.mark.trio

CONFIG = {"tools": {"allowed": ["palyra.echo"]}}


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family: Any, suffix: str = "", **labels: str) -> float:
    found = [s.value for s in family.samples
             if s.name == family.name + suffix and all(s.labels.get(k) == v
                                                       for k, v in labels.items())]
    assert len(found) == 1, (family.name, suffix, labels, family.samples)
    return found[0]


async def scrape(api: Any) -> dict[str, Any]:
    reply = await api.get("/metrics")
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return families(reply.text)


async def test_metrics_report_runs_tools_budgets_provider_actors_and_journal_writes(tmp_path):
    async with serving(tmp_path / "state", CONFIG) as api:
        put = await api.post("/admin/v1/budgets", {
            "scope_kind": "global", "metric_kind": "total_tokens", "interval_kind": "rolling_24h",
            "action": "warn", "soft_limit_value": 1})
        assert put.status == 200, put
        texts = ["alpha beta", 'x\n@tool palyra.echo {"text": "hi"}',
                 "y\n@tool palyra.sleep {}", "x\n@fail internal"]
        for text in texts:
            await api.events(await api.send(text))
        assert (await api.get("/readyz")).status == 200

        m = await scrape(api)
        assert value(m["palyra_runs"], state="done") == 3
        assert value(m["palyra_runs"], state="failed") == 1
        assert value(m["palyra_runs"], state="in_progress") == 0
        # echo is allowed; sleep is not in tools.allowed
        assert value(m["palyra_tool_events"], "_total", event="allowed") == 1
        assert value(m["palyra_tool_events"], "_total", event="denied") == 1
        assert value(m["palyra_tool_events"], "_total", event="executed") == 1
        # the runtime counters are the numbers /metrics exports
        counters = api.rt.observability()["counters"]
        for group in ("run_transitions", "tool_events", "journal", "failures"):
            for key, n in counters[group].items():
                label = {"run_transitions": "outcome", "tool_events": "event", "journal": "event",
                         "failures": "failure_class"}[group]
                assert value(m[f"palyra_{group}"], "_total", **{label: key}) == pytest.approx(n, abs=1), \
                    (group, key)
        assert value(m["palyra_run_transitions"], "_total", outcome="completed") == 3
        assert value(m["palyra_run_transitions"], "_total", outcome="failed") == 1
        assert value(m["palyra_failures"], "_total", failure_class="upstream_provider_failure") == 1
        commits = m["palyra_journal_commit_seconds"]
        assert commits.type == "histogram"
        assert value(commits, "_count") >= 4
        outcomes = {s.labels["outcome"]: s.value for s in m["palyra_budget_outcomes"].samples
                    if s.name.endswith("_total")}
        assert outcomes and sum(outcomes.values()) >= 1, outcomes
        assert set(outcomes) <= {"ok", "soft_limit", "hard_limit", "blocked",
                                 "approval_required", "warn"}, outcomes
        totals = api.rt.services.provider.status_snapshot()["totals"]
        provider = {"provider_id": "deterministic-primary", "model_id": "deterministic"}
        assert value(m["palyra_provider_calls"], "_total", **provider) == totals["calls"] >= 5
        assert value(m["palyra_provider_call_results"], "_total", result="failures",
                     **provider) == totals["failures"] >= 1
        assert value(m["palyra_provider_circuit_open"], **provider) == 0
        actors = {s.labels["actor"]: s.value for s in m["palyra_actor_restarts"].samples
                  if s.name.endswith("_total")}
        assert {"root/journal", "root/core/gateway", "root/core/budget"} <= set(actors)
        assert not any("/runs/" in name for name in actors)
        assert value(m["palyra_actor_up"], actor="root/journal") == 1
        assert value(m["palyra_incidents_open"]) == 0
        assert value(m["palyra_runtime_up"]) == 1
        writes = m["palyra_http_journal_write_seconds"]
        assert writes.type == "histogram"
        assert value(writes, "_count") == 1  # one /readyz probe write
        assert value(writes, "_bucket", le="+Inf") == 1
        assert 0 < value(writes, "_sum") < 2
        assert value(m["palyra_http_rate_limited"], "_total", scope="ip") == 0

        # a restarted actor shows up
        api.rt.chaos.crash("budget")
        with trio.fail_after(STEP):
            while value(m["palyra_actor_restarts"], "_total", actor="root/core/budget") < 1:
                await trio.sleep(0.02)
                m = await scrape(api)


async def test_each_app_has_its_own_registry(tmp_path):
    async with serving(tmp_path / "one") as one, serving(tmp_path / "two") as two:
        assert one.surface.metrics.registry is not two.surface.metrics.registry
        assert one.surface.metrics.registry is not REGISTRY
        await one.get("/readyz")
        first, second = await scrape(one), await scrape(two)
        assert value(first["palyra_http_journal_write_seconds"], "_count") == 1
        assert value(second["palyra_http_journal_write_seconds"], "_count") == 0
    assert "palyra_http_journal_write_seconds" not in {
        f.name for f in REGISTRY.collect()}
