"""``GET /metrics``: Prometheus text exposition from a per-app registry.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (never the global
one: two apps in one process, as in tests, must not share or collide). Figures are
read at scrape time from what the runtime already keeps, so nothing is instrumented
for this surface:

* the runtime counters (``rt.observability()``, the same numbers the diagnostics
  snapshot shows): one ``palyra_<group>_total{<label>}`` family per group of
  :data:`palyra.observability.GROUPS` (run transitions, tool events, budget outcomes,
  approvals, journal, supervision, incidents, remediations, background tasks,
  failures by class) and the ``palyra_journal_commit_seconds`` histogram (one
  observation per group-commit batch);
* ``palyra_runs{state}``: runs in the journal by state (a ``GROUP BY`` on an index);
* ``palyra_provider_calls_total`` and ``palyra_provider_call_results_total{result}``:
  the provider's ``status_snapshot()`` totals (process lifetime);
* ``palyra_actor_restarts_total{actor}`` and ``palyra_actor_up{actor}``: the supervision
  tree (run actors are left out: they come and go with their runs);
* ``palyra_incidents_open``: self-healing incidents not resolved yet;
* ``palyra_http_journal_write_seconds``: latency of the journal writes the HTTP surface
  makes itself (the ``/readyz`` probe), observed by the surface;
* ``palyra_http_rate_limited_total{scope}`` and ``palyra_http_open_streams``.

The collection runs in the surface's blocking pool and at most one scrape runs at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from palyra.observability import GROUPS
from palyra.orchestrator.state import STATES

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)

_RUNS_BY_STATE = "SELECT state, count(*) FROM orchestrator_runs GROUP BY state"
_HAS_INCIDENTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runtime_incidents'"
_OPEN_INCIDENTS = "SELECT count(*) FROM runtime_incidents WHERE state IN ('open', 'remediating')"


class RuntimeCollector:
    """Reads the runtime at collect time (call it from a pool thread: it queries SQLite
    through that thread's reader connection)."""

    def __init__(self, surface: Any) -> None:
        self.surface = surface

    def collect(self) -> Iterator[Metric]:
        rt = self.surface.rt
        running = rt is not None and not rt.stopped.is_set()
        up = GaugeMetricFamily("palyra_runtime_up", "1 while the runtime is running")
        up.add_metric([], 1.0 if running else 0.0)
        yield up
        streams = GaugeMetricFamily("palyra_http_open_streams", "Open SSE streams")
        streams.add_metric([], float(len(self.surface.streams)))
        yield streams
        if not running:
            return
        yield from self._runs(rt)
        yield from self._counters(rt)
        yield from self._provider(rt)
        yield from self._actors(rt)

    def _runs(self, rt: Any) -> Iterator[Metric]:
        conn = rt._queries().conn
        incidents = GaugeMetricFamily(
            "palyra_incidents_open",
            "Self-healing incidents not resolved yet (open or remediating; 0 while the "
            "journal has no incidents table)")
        has_table = conn.execute(_HAS_INCIDENTS).fetchone() is not None
        incidents.add_metric([], float(conn.execute(_OPEN_INCIDENTS).fetchone()[0])
                             if has_table else 0.0)
        yield incidents
        counts = {state: 0 for state in STATES}
        counts.update({state: n for state, n in conn.execute(_RUNS_BY_STATE)})
        runs = GaugeMetricFamily("palyra_runs", "Runs in the journal by state", labels=["state"])
        for state, n in sorted(counts.items()):
            runs.add_metric([state], float(n))
        yield runs

    def _counters(self, rt: Any) -> Iterator[Metric]:
        snapshot = rt.observability()
        for group in GROUPS:
            family = CounterMetricFamily(f"palyra_{group.name}", group.help, labels=[group.label])
            for key, n in snapshot["counters"][group.name].items():
                family.add_metric([key], float(n))
            yield family
        latency = snapshot["journal_commit_seconds"]
        commits = HistogramMetricFamily(
            "palyra_journal_commit_seconds",
            "Journal group-commit latency per batch (apply and COMMIT), seconds")
        commits.add_metric([], [(_le(bound), float(n)) for bound, n in latency["buckets"]],
                           latency["sum"])
        yield commits

    def _provider(self, rt: Any) -> Iterator[Metric]:
        snapshot = rt.services.provider.status_snapshot()
        labels = ["provider_id", "model_id"]
        values = [str(snapshot.get("provider_id") or ""), str(snapshot.get("model_id") or "")]
        totals = snapshot.get("totals") or {}
        calls = CounterMetricFamily("palyra_provider_calls",
                                    "Model provider calls since the daemon started",
                                    labels=labels)
        calls.add_metric(values, float(totals.get("calls", 0)))
        yield calls
        results = CounterMetricFamily(
            "palyra_provider_call_results",
            "Model provider call outcomes since the daemon started (successes, failures, "
            "cancelled, retries, ...)", labels=[*labels, "result"])
        for key, value in sorted(totals.items()):
            if key != "calls" and isinstance(value, int | float):
                results.add_metric([*values, key], float(value))
        yield results
        circuit = GaugeMetricFamily("palyra_provider_circuit_open",
                                    "1 while the provider's circuit breaker is not closed",
                                    labels=labels)
        state = (snapshot.get("circuit") or {}).get("state", "closed")
        circuit.add_metric(values, 0.0 if state == "closed" else 1.0)
        yield circuit

    def _actors(self, rt: Any) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "palyra_actor_restarts", "Restarts of each supervised actor (run actors excluded)",
            labels=["actor"])
        up = GaugeMetricFamily("palyra_actor_up", "1 while the supervised actor is alive "
                               "(run actors excluded)", labels=["actor"])
        for row in rt.actors():
            if "/runs/" in row["path"]:
                continue
            restarts.add_metric([row["path"]], float(row["restarts"]))
            up.add_metric([row["path"]], 1.0 if row["alive"] else 0.0)
        yield restarts
        yield up


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    """The app's registry: the runtime collector plus what the surface observes."""

    def __init__(self, surface: Any) -> None:
        self.registry = CollectorRegistry()
        self.journal_write = Histogram(
            "palyra_http_journal_write_seconds",
            "Latency of the journal writes the HTTP surface makes itself (the /readyz probe, "
            "at most one per 5 s); observed by the surface, product writes are not timed",
            buckets=_WRITE_BUCKETS, registry=self.registry)
        self.rate_limited = Counter("palyra_http_rate_limited",
                                    "Requests refused with 429, by bucket kind (ip, token)",
                                    ["scope"], registry=self.registry)
        for scope in ("ip", "token"):
            self.rate_limited.labels(scope)
        self.registry.register(RuntimeCollector(surface))  # type: ignore[arg-type]
        self._scrape = trio.Lock()

    def timed_write(self, write: Any) -> Any:
        started = time.perf_counter()
        try:
            return write()
        finally:
            self.journal_write.observe(time.perf_counter() - started)

    async def render(self, pool: Any) -> bytes:
        """The exposition, collected in ``pool`` (one scrape at a time)."""
        async with self._scrape:
            return await pool.run(generate_latest, self.registry)
