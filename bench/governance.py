"""Usage governance on the run path: what budget enforcement costs a real run.

Prints one JSON line. The same plain deterministic runs (one provider call each, eight
sessions reused round-robin) are driven, sequentially and with 16 concurrent callers,
through three runtimes in the same pinned process:

* ``disabled``: ``governance.enabled = false`` (no routing record, no reservation);
* ``no_policies``: governance on, no budget policy (routing recorded, no reservation);
* ``ten_policies``: ten policies in force (global / principal / session scopes, token and
  cost metrics, limits far too high to block): every call reserves through the budget
  actor (a journalled reservation answered after its commit) and settles afterwards.

For ``ten_policies`` an instrumented pass also times, per run, the reservation round
trip seen by the run actor (Reserve sent -> reply handled) and the budget actor's
handling of the Settle; ``budget_decisions_per_s`` counts those reservations over that
pass. Finally a micro figure: Reserve requested and Settle told straight to the budget
actor by address, no run around them.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from _common import emit, pct, timed_callers

import palyra
from actors.budget import BudgetActor, Reserve, Settle
from actors.run import RunActor
from palyra.governance import Amount, UsageScope
from supervisors.names import Address

TEXT = "hello governance bench"
SESSIONS = 8
BIG_TOKENS = 10**12
BIG_USD = 1_000_000
SEQUENTIAL = 1500
CALLERS, PER_CALLER = 16, 80
INSTRUMENTED = 1500
MICRO = 5000


def policies(session_ids: list[str]) -> list[dict[str, Any]]:
    def p(scope_kind: str, scope_id: str | None, metric: str, interval: str, action: str,
          **limits: Any) -> dict[str, Any]:
        return {"scope_kind": scope_kind, "scope_id": scope_id, "metric_kind": metric,
                "interval_kind": interval, "action": action, **limits}

    tokens, cost = "total_tokens", "estimated_cost_usd"
    return [
        p("global", None, tokens, "rolling_24h", "block", hard_limit_value=BIG_TOKENS),
        p("global", None, tokens, "calendar_month", "warn", soft_limit_value=BIG_TOKENS,
          hard_limit_value=10 * BIG_TOKENS),
        p("global", None, cost, "rolling_30d", "approval_required", hard_limit_value=BIG_USD),
        p("principal", "user:local", tokens, "rolling_24h", "block", hard_limit_value=BIG_TOKENS),
        p("principal", "user:local", cost, "calendar_month", "block", hard_limit_value=BIG_USD),
        p("principal", "user:someone-else", tokens, "rolling_24h", "block", hard_limit_value=0),
        p("session", session_ids[0], tokens, "run", "block", hard_limit_value=BIG_TOKENS),
        p("session", session_ids[1], tokens, "rolling_24h", "block", hard_limit_value=BIG_TOKENS),
        p("session", session_ids[2], cost, "rolling_24h", "block", hard_limit_value=BIG_USD),
        p("session", session_ids[3], tokens, "rolling_30d", "approval_required",
          soft_limit_value=BIG_TOKENS, hard_limit_value=BIG_TOKENS),
    ]


def one_run(rt: palyra.Runtime, key: str) -> float:
    t0 = time.perf_counter()
    result = rt.send(TEXT, session_key=key).wait(30)
    elapsed = time.perf_counter() - t0
    assert result.state == "done", result
    return elapsed


def figures(latencies: list[float], elapsed: float) -> dict[str, Any]:
    return {
        "runs": len(latencies),
        "runs_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(latencies, 50) * 1000, 3),
        "p99_ms": round(pct(latencies, 99) * 1000, 3),
    }


def sequential(rt: palyra.Runtime, runs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    latencies = [one_run(rt, f"gb-{i % SESSIONS}") for i in range(runs)]
    return figures(latencies, time.perf_counter() - t0)


def concurrent(rt: palyra.Runtime) -> dict[str, Any]:
    def caller(n: int) -> list[float]:
        return [one_run(rt, f"gb-{(n + i) % SESSIONS}") for i in range(PER_CALLER)]

    return figures(*timed_callers(CALLERS, caller))


def start(state_dir: str, enabled: bool, with_policies: bool) -> tuple[palyra.Runtime, list[str]]:
    rt = palyra.Runtime.start(state_dir, {"governance": {"enabled": enabled}})
    session_ids = [rt.sessions.resolve(session_key=f"gb-{i}").session.session_id for i in range(SESSIONS)]
    if with_policies:
        for mapping in policies(session_ids):
            rt.budgets.put(mapping)
    for i in range(60):  # warm up (and fill each session's replayed history)
        one_run(rt, f"gb-{i % SESSIONS}")
    return rt, session_ids


class Instruments:
    """Per-run reservation round trips and Settle handling times (wrapping two methods)."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.reserve: dict[str, float] = {}
        self.settle: dict[str, float] = {}
        self._saved: list[tuple[type, str, Any]] = []

    def install(self) -> None:
        govern, on_reserved, settle = RunActor._govern, RunActor._on_reserved, BudgetActor._settle
        sent, reserve, settled = self.sent, self.reserve, self.settle

        def timed_govern(actor: RunActor) -> None:
            sent[f"{actor.run_id}:{actor.turn}"] = time.perf_counter()
            govern(actor)

        def timed_on_reserved(actor: RunActor, msg: Any) -> None:
            rid = msg.request.reservation_id
            if rid in sent:
                reserve[rid] = time.perf_counter() - sent[rid]
            on_reserved(actor, msg)

        def timed_settle(actor: BudgetActor, msg: Settle) -> None:
            t0 = time.perf_counter()
            settle(actor, msg)
            settled[msg.reservation_id] = time.perf_counter() - t0

        self._saved = [(RunActor, "_govern", govern), (RunActor, "_on_reserved", on_reserved),
                       (BudgetActor, "_settle", settle)]
        RunActor._govern = timed_govern  # type: ignore[method-assign]
        RunActor._on_reserved = timed_on_reserved  # type: ignore[method-assign]
        BudgetActor._settle = timed_settle  # type: ignore[method-assign]

    def uninstall(self) -> None:
        for owner, name, original in self._saved:
            setattr(owner, name, original)


def instrumented(rt: palyra.Runtime) -> dict[str, Any]:
    tools = Instruments()
    tools.install()
    try:
        t0 = time.perf_counter()
        for i in range(INSTRUMENTED):
            one_run(rt, f"gb-{i % SESSIONS}")
        elapsed = time.perf_counter() - t0
        rt.budgets.reserved()  # every Settle told so far has been handled
    finally:
        tools.uninstall()
    both = [tools.reserve[rid] + tools.settle[rid] for rid in tools.reserve if rid in tools.settle]
    reserve, settle = list(tools.reserve.values()), list(tools.settle.values())
    return {
        "budget_decisions": len(reserve),
        "budget_decisions_per_s": round(len(reserve) / elapsed, 1),
        "reserve_round_trip_p50_us": round(pct(reserve, 50) * 1e6, 1),
        "reserve_round_trip_p99_us": round(pct(reserve, 99) * 1e6, 1),
        "settle_handling_p50_us": round(pct(settle, 50) * 1e6, 1),
        "settle_handling_p99_us": round(pct(settle, 99) * 1e6, 1),
        "reserve_plus_settle_p50_us": round(pct(both, 50) * 1e6, 1),
        "reserve_plus_settle_p99_us": round(pct(both, 99) * 1e6, 1),
    }


def micro(rt: palyra.Runtime, session_id: str) -> dict[str, Any]:
    """Reserve (request, answered after its journal commit) + Settle (tell), by address."""
    budget = Address(rt.services.names, "budget")
    scope = UsageScope("user:local", session_id)
    amount = Amount(16, 0)
    latencies = []
    t0 = time.perf_counter()
    for i in range(MICRO):
        rid = f"microbench{i}:1"
        started = time.perf_counter()
        decision = budget.request(Reserve(rid, scope, amount))
        budget.tell(Settle(rid, amount, rt.clock.now_ms()))
        latencies.append(time.perf_counter() - started)
        assert decision.granted, decision
    rt.budgets.reserved()  # the last Settle has been handled
    elapsed = time.perf_counter() - t0
    assert rt.budgets.reserved()["reservations"] == 0
    return {
        "round_trips": MICRO,
        "round_trips_per_s": round(MICRO / elapsed, 1),
        "p50_us": round(pct(latencies, 50) * 1e6, 1),
        "p99_us": round(pct(latencies, 99) * 1e6, 1),
        "policies_applicable": len(rt.services.governance.view.applicable(scope)),
    }


def main() -> None:
    out: dict[str, Any] = {"bench": "governance", "workload": "plain deterministic run, 1 provider call",
                           "policies": 10}
    modes = {"disabled": (False, False), "no_policies": (True, False), "ten_policies": (True, True)}
    for mode, (enabled, with_policies) in modes.items():
        with tempfile.TemporaryDirectory() as d:
            rt, session_ids = start(d, enabled, with_policies)
            try:
                out[mode] = {"sequential": sequential(rt, SEQUENTIAL), f"concurrent_{CALLERS}": concurrent(rt)}
                if with_policies:
                    out["budget_in_runs"] = instrumented(rt)
                    out["budget_actor_micro"] = micro(rt, session_ids[0])
                    view = rt.services.governance.view
                    out["policies_applicable_per_run"] = sorted(
                        {len(view.applicable(UsageScope("user:local", s))) for s in session_ids})
                assert rt.verify_journal().ok
            finally:
                rt.stop()
    for kind in ("sequential", f"concurrent_{CALLERS}"):
        base, full = out["disabled"][kind], out["ten_policies"][kind]
        out[f"overhead_{kind}"] = {
            "p50_ratio": round(full["p50_ms"] / base["p50_ms"], 3),
            "p99_ratio": round(full["p99_ms"] / base["p99_ms"], 3),
            "throughput_ratio": round(full["runs_per_s"] / base["runs_per_s"], 3),
        }
    emit(out)


if __name__ == "__main__":
    main()
