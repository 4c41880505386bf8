"""Usage records and the read-side aggregations of the console usage API (spec 3.5).

Pure functions over lists of :class:`UsageRecord` (one per run): the summary envelope
with its timeline, per-session/principal/agent breakdowns, the model and tool mix, and
the alert candidates the usage actor upserts into ``usage_alerts`` (by ``dedupe_key``).

Money is integer micro-USD inside and USD floats with 5 decimals on the wire. A run is
in a window when it *started* in ``[start, end)``; buckets are aligned to UTC hours/days.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from palyra.errors import InvalidInput
from palyra.governance.budgets import (
    APPROVAL_REQUIRED,
    BLOCKED,
    OK,
    BudgetEvaluation,
    PolicyEvaluation,
)
from palyra.governance.pricing import micros_to_usd, usd_to_micros
from palyra.records import TERMINAL_STATES
from palyra.validation import bad, is_int

__all__ = [
    "EXPORT_DATASETS",
    "AlertCandidate",
    "UsageQuery",
    "UsageRecord",
    "agent_breakdown",
    "alerts",
    "export",
    "model_mix",
    "principal_breakdown",
    "records_in_window",
    "session_breakdown",
    "summarize",
    "tool_mix",
    "usage_query",
]

CONTRACT = "palyra.usage.v1"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
DEFAULT_SPAN_MS = 30 * DAY_MS
MAX_SPAN_MS = 366 * DAY_MS
AUTO_HOURLY_MAX_SPAN_MS = 72 * HOUR_MS
BUCKETS = ("auto", "hour", "day")
DEFAULT_LIMIT = 10
MAX_LIMIT = 50

COST_SPIKE_FACTOR = 2
COST_SPIKE_MIN_MICRO_USD = usd_to_micros("0.50")
MODEL_MIX_MIN_RUNS = 4
MODEL_MIX_TOP_SHARE = 0.75
SEVERITIES = ("info", "warning", "danger")
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRecord:
    """The usage of one run. ``total_tokens`` defaults to prompt + completion;
    ``estimated_cost_micro_usd`` is ``None`` when no pricing was known."""

    run_id: str
    session_id: str
    principal: str
    state: str
    started_at_unix_ms: int
    completed_at_unix_ms: int | None = None
    model_id: str | None = None
    provider_id: str | None = None
    provider_kind: str | None = None
    agent_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None
    estimated_cost_micro_usd: int | None = None

    def __post_init__(self) -> None:
        if self.total_tokens is None:
            object.__setattr__(self, "total_tokens", self.prompt_tokens + self.completion_tokens)

    @property
    def active(self) -> bool:
        return self.state not in TERMINAL_STATES

    @property
    def latency_ms(self) -> int | None:
        """Wall time from start to completion; ``None`` while the run is unfinished."""
        if self.completed_at_unix_ms is None:
            return None
        return max(self.completed_at_unix_ms - self.started_at_unix_ms, 0)


# --------------------------------------------------------------------------- queries


@dataclasses.dataclass(frozen=True, slots=True)
class UsageQuery:
    start_at_unix_ms: int
    end_at_unix_ms: int
    bucket: str  # as requested: auto | hour | day

    @property
    def resolved_bucket(self) -> str:
        if self.bucket != "auto":
            return self.bucket
        span = self.end_at_unix_ms - self.start_at_unix_ms
        return "hour" if span <= AUTO_HOURLY_MAX_SPAN_MS else "day"

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_at_unix_ms": self.start_at_unix_ms,
            "end_at_unix_ms": self.end_at_unix_ms,
            "bucket": self.bucket,
            "resolved_bucket": self.resolved_bucket,
        }


def _int_param(value: Any, field: str) -> int:
    if not is_int(value) or value < 0:
        raise bad(field, "must be a non-negative integer")
    return value


def usage_query(
    start_ms: int | None = None,
    end_ms: int | None = None,
    bucket: str = "auto",
    *,
    now_ms: int | None = None,
) -> UsageQuery:
    """Validate a usage query: end defaults to now, start to end - 30 d; end must be after
    start and the span at most 366 days."""
    if end_ms is None:
        if now_ms is None:
            raise InvalidInput("end_at_unix_ms is required", details={"field": "end_at_unix_ms"})
        end_ms = now_ms
    end_ms = _int_param(end_ms, "end_at_unix_ms")
    start_ms = max(end_ms - DEFAULT_SPAN_MS, 0) if start_ms is None else start_ms
    start_ms = _int_param(start_ms, "start_at_unix_ms")
    if end_ms <= start_ms:
        raise InvalidInput(
            "end_at_unix_ms must be after start_at_unix_ms", details={"field": "end_at_unix_ms"}
        )
    if end_ms - start_ms > MAX_SPAN_MS:
        raise InvalidInput(
            "usage query span must not exceed 366 days", details={"field": "start_at_unix_ms"}
        )
    if bucket not in BUCKETS:
        raise InvalidInput(
            f"bucket must be one of {', '.join(BUCKETS)} (got {bucket!r})",
            details={"field": "bucket"},
        )
    return UsageQuery(start_ms, end_ms, bucket)


def records_in_window(
    records: Iterable[UsageRecord], start_ms: int, end_ms: int
) -> list[UsageRecord]:
    return [r for r in records if start_ms <= r.started_at_unix_ms < end_ms]


# --------------------------------------------------------------------------- totals


def _metrics(records: Sequence[UsageRecord]) -> dict[str, Any]:
    latencies = [r.latency_ms for r in records if r.latency_ms is not None]
    cost = sum(r.estimated_cost_micro_usd or 0 for r in records)
    return {
        "runs": len(records),
        "session_count": len({r.session_id for r in records}),
        "active_runs": sum(1 for r in records if r.active),
        "completed_runs": len(latencies),
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "completion_tokens": sum(r.completion_tokens for r in records),
        "total_tokens": sum(r.total_tokens or 0 for r in records),
        "average_latency_ms": round(sum(latencies) / len(latencies)) if latencies else 0,
        "latest_started_at_unix_ms": max((r.started_at_unix_ms for r in records), default=None),
        "estimated_cost_usd": micros_to_usd(cost),
    }


def summarize(
    records: Iterable[UsageRecord],
    start_ms: int,
    end_ms: int,
    bucket: str = "auto",
) -> dict[str, Any]:
    """``UsageSummaryEnvelope``: totals and a gap-free timeline over ``[start, end)``.

    ``bucket=auto`` means hourly buckets for spans up to 72 h, daily ones beyond.
    """
    query = usage_query(start_ms, end_ms, bucket)
    window = sorted(
        records_in_window(records, query.start_at_unix_ms, query.end_at_unix_ms),
        key=lambda r: r.started_at_unix_ms,
    )
    size = HOUR_MS if query.resolved_bucket == "hour" else DAY_MS
    by_bucket: dict[int, list[UsageRecord]] = {}
    for record in window:
        by_bucket.setdefault(record.started_at_unix_ms // size * size, []).append(record)
    timeline = []
    bucket_start = query.start_at_unix_ms // size * size
    while bucket_start < query.end_at_unix_ms:
        timeline.append(
            {
                "bucket_start_unix_ms": bucket_start,
                "bucket_end_unix_ms": bucket_start + size,
                **_metrics(by_bucket.get(bucket_start, [])),
            }
        )
        bucket_start += size
    return {
        "contract": CONTRACT,
        "query": query.to_dict(),
        "totals": _metrics(window),
        "timeline": timeline,
        "cost_tracking_available": any(r.estimated_cost_micro_usd is not None for r in window),
    }


# --------------------------------------------------------------------------- breakdowns


def _page(limit: int, cursor: str | None) -> tuple[int, int]:
    if not is_int(limit) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", details={"field": "limit"})
    if cursor is None or cursor == "":
        return limit, 0
    if not cursor.isdigit():
        raise InvalidInput("cursor is not valid", details={"field": "cursor"})
    return limit, int(cursor)


def _breakdown(
    records: Iterable[UsageRecord],
    field: str,
    key: Callable[[UsageRecord], str | None],
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    limit, offset = _page(limit, cursor)
    groups: dict[str, list[UsageRecord]] = {}
    for record in records:
        value = key(record)
        if value is not None:
            groups.setdefault(value, []).append(record)
    rows = [{field: value, **_metrics(group)} for value, group in groups.items()]
    rows.sort(
        key=lambda row: (
            -row["total_tokens"],
            -(row["latest_started_at_unix_ms"] or 0),
            row[field],
        )
    )
    page = rows[offset : offset + limit]
    more = offset + limit < len(rows)
    return {"items": page, "next_cursor": str(offset + limit) if more else None}


def session_breakdown(
    records: Iterable[UsageRecord], limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> dict[str, Any]:
    """Per-session usage, most tokens first: ``{items, next_cursor}``."""
    return _breakdown(records, "session_id", lambda r: r.session_id, limit, cursor)


def principal_breakdown(
    records: Iterable[UsageRecord], limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> dict[str, Any]:
    return _breakdown(records, "principal", lambda r: r.principal, limit, cursor)


def agent_breakdown(
    records: Iterable[UsageRecord], limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> dict[str, Any]:
    """Per-agent usage; runs without an agent are left out."""
    return _breakdown(records, "agent_id", lambda r: r.agent_id, limit, cursor)


def model_mix(
    records: Iterable[UsageRecord],
    default_model_id: str | None = None,
    default_provider_kind: str | None = None,
) -> list[dict[str, Any]]:
    """``UsageModelMixRecord`` rows, most tokens first. Runs that did not record their
    model count toward the default model with source ``inferred_default``."""
    groups: dict[tuple[str, str | None, str], list[UsageRecord]] = {}
    for record in records:
        if record.model_id is not None:
            key = (record.model_id, record.provider_kind, "routing_decision")
        elif default_model_id is not None:
            key = (default_model_id, default_provider_kind, "inferred_default")
        else:
            continue
        groups.setdefault(key, []).append(record)
    rows = []
    for (model_id, provider_kind, source), group in groups.items():
        costs = [
            r.estimated_cost_micro_usd for r in group if r.estimated_cost_micro_usd is not None
        ]
        rows.append(
            {
                "model_id": model_id,
                "provider_kind": provider_kind,
                "runs": len(group),
                "total_tokens": sum(r.total_tokens or 0 for r in group),
                "estimated_cost_usd": micros_to_usd(sum(costs)) if costs else None,
                "source": source,
            }
        )
    rows.sort(key=lambda r: (-r["total_tokens"], -r["runs"], r["model_id"], r["source"]))
    return rows


def tool_mix(proposals: Mapping[str, int] | Iterable[str]) -> list[dict[str, Any]]:
    """``UsageToolMixRecord`` rows from counts per tool, or one tool name per proposal
    (``tool_proposal`` / ``tool.executed`` events); most proposed first."""
    counts = Counter(proposals) if not isinstance(proposals, Mapping) else Counter(dict(proposals))
    rows = [{"tool_name": name, "proposals": n} for name, n in counts.items() if n > 0]
    rows.sort(key=lambda r: (-r["proposals"], r["tool_name"]))
    return rows


# --------------------------------------------------------------------------- export

RUN_COLUMNS = (
    "run_id", "session_id", "principal", "state", "model_id", "provider_id", "prompt_tokens",
    "completion_tokens", "total_tokens", "estimated_cost_usd", "started_at_unix_ms",
    "completed_at_unix_ms", "latency_ms",
)
TIMELINE_COLUMNS = (
    "bucket_start_unix_ms", "bucket_end_unix_ms", "runs", "session_count", "active_runs",
    "completed_runs", "prompt_tokens", "completion_tokens", "total_tokens", "average_latency_ms",
    "latest_started_at_unix_ms", "estimated_cost_usd",
)
EXPORT_DATASETS = ("runs", "timeline")


def _run_row(r: UsageRecord) -> dict[str, Any]:
    cost = r.estimated_cost_micro_usd
    return {
        "run_id": r.run_id, "session_id": r.session_id, "principal": r.principal,
        "state": r.state, "model_id": r.model_id, "provider_id": r.provider_id,
        "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "total_tokens": r.total_tokens,
        "estimated_cost_usd": None if cost is None else micros_to_usd(cost),
        "started_at_unix_ms": r.started_at_unix_ms,
        "completed_at_unix_ms": r.completed_at_unix_ms, "latency_ms": r.latency_ms,
    }


def export(records: Iterable[UsageRecord], start_ms: int, end_ms: int, dataset: str = "runs",
           bucket: str = "auto") -> dict[str, Any]:
    """Flat rows for a CSV/JSON export: one per run started in the window (oldest first),
    or the summary's timeline buckets. ``columns`` fixes the order of a CSV header."""
    query = usage_query(start_ms, end_ms, bucket)
    if dataset == "timeline":
        rows = summarize(records, start_ms, end_ms, bucket)["timeline"]
        columns = TIMELINE_COLUMNS
    elif dataset == "runs":
        window = records_in_window(records, query.start_at_unix_ms, query.end_at_unix_ms)
        rows = [_run_row(r) for r in sorted(window, key=lambda r: (r.started_at_unix_ms, r.run_id))]
        columns = RUN_COLUMNS
    else:
        raise InvalidInput(f"dataset must be one of {', '.join(EXPORT_DATASETS)}",
                           details={"field": "dataset"})
    return {"contract": CONTRACT, "query": query.to_dict(), "dataset": dataset,
            "columns": list(columns), "rows": rows}


# --------------------------------------------------------------------------- alerts


@dataclasses.dataclass(frozen=True, slots=True)
class AlertCandidate:
    """An alert to upsert into ``usage_alerts``; the same ``dedupe_key`` is the same alert."""

    alert_kind: str
    severity: str  # info | warning | danger
    scope_kind: str
    scope_id: str | None
    summary: str
    reason: str
    recommended_action: str
    dedupe_key: str
    payload: dict[str, Any]
    source: str = "usage_insights"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cost_spike(records: Sequence[UsageRecord]) -> AlertCandidate | None:
    costed = sorted(
        (r for r in records if r.estimated_cost_micro_usd is not None),
        key=lambda r: (r.started_at_unix_ms, r.run_id),
    )
    half = len(costed) // 2
    if half == 0:
        return None
    # Equal halves; with an odd count the middle run belongs to neither.
    older = sum(r.estimated_cost_micro_usd or 0 for r in costed[:half])
    newer = sum(r.estimated_cost_micro_usd or 0 for r in costed[-half:])
    if newer <= COST_SPIKE_FACTOR * older or newer <= COST_SPIKE_MIN_MICRO_USD:
        return None
    return AlertCandidate(
        alert_kind="cost_spike",
        severity="warning",
        scope_kind="global",
        scope_id=None,
        summary=f"Estimated cost of recent runs rose to ${micros_to_usd(newer):.2f}",
        reason=(
            f"the newer {half} runs cost ${micros_to_usd(newer):.5f}, more than "
            f"{COST_SPIKE_FACTOR}x the older {half} (${micros_to_usd(older):.5f})"
        ),
        recommended_action="review recent runs and consider a budget policy or cheaper routing",
        dedupe_key="cost_spike:global",
        payload={
            "runs_per_half": half,
            "older_cost_usd": micros_to_usd(older),
            "newer_cost_usd": micros_to_usd(newer),
        },
    )


def _model_mix_alert(records: Sequence[UsageRecord]) -> AlertCandidate | None:
    if len(records) < MODEL_MIX_MIN_RUNS:
        return None
    counts = Counter(r.model_id or "unknown" for r in records)
    model_id, runs = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    share = runs / len(records)
    if share <= MODEL_MIX_TOP_SHARE:
        return None
    return AlertCandidate(
        alert_kind="unusual_model_mix",
        severity="info",
        scope_kind="global",
        scope_id=None,
        summary=f"{model_id} served {share:.0%} of runs",
        reason=f"{runs} of {len(records)} runs used {model_id}",
        recommended_action="check whether smart routing should spread work to cheaper models",
        dedupe_key=f"unusual_model_mix:{model_id}",
        payload={"model_id": model_id, "runs": runs, "total_runs": len(records), "share": share},
    )


def _decision_field(decision: Any, field: str) -> Any:
    return decision.get(field) if isinstance(decision, Mapping) else getattr(decision, field)


def alerts(
    records: Iterable[UsageRecord] = (),
    *,
    evaluations: BudgetEvaluation | Iterable[PolicyEvaluation] = (),
    health: Mapping[str, str] | None = None,
    routing_decisions: Iterable[Any] = (),
) -> list[AlertCandidate]:
    """Alert candidates, deduplicated by ``dedupe_key`` (the most severe wins), most
    severe first.

    ``health`` maps provider id to ``ok | degraded | missing_auth``; ``routing_decisions``
    are :class:`~palyra.governance.routing.RoutingDecision`\\ s or their records.
    """
    records = list(records)
    found: list[AlertCandidate] = []
    for candidate in (_cost_spike(records), _model_mix_alert(records)):
        if candidate is not None:
            found.append(candidate)
    for provider_id, state in sorted((health or {}).items()):
        if state != "ok":
            found.append(
                AlertCandidate(
                    alert_kind="provider_health",
                    severity="danger",
                    scope_kind="provider",
                    scope_id=provider_id,
                    summary=f"Provider {provider_id} is {state.replace('_', ' ')}",
                    reason=f"provider health state is {state}",
                    recommended_action=(
                        "configure credentials for the provider"
                        if state == "missing_auth"
                        else "check provider errors; failover routes around it when enabled"
                    ),
                    dedupe_key=f"provider_health:{provider_id}:{state}",
                    payload={"provider_id": provider_id, "health_state": state},
                )
            )
    regressions = [
        d
        for d in routing_decisions
        if _decision_field(d, "mode") == "enforced"
        and _decision_field(d, "actual_model_id") != _decision_field(d, "default_model_id")
    ]
    if regressions:
        found.append(
            AlertCandidate(
                alert_kind="routing_regression",
                severity="warning",
                scope_kind="global",
                scope_id=None,
                summary=f"Enforced routing moved {len(regressions)} run(s) off the default model",
                reason="enforced smart routing chose a model other than the default",
                recommended_action="review routing decisions; switch to suggest mode if unwanted",
                dedupe_key="routing_regression:global",
                payload={"decisions": len(regressions)},
            )
        )
    if isinstance(evaluations, BudgetEvaluation):
        evaluations = evaluations.evaluations
    for evaluation in evaluations:
        if evaluation.outcome == OK:
            continue
        policy = evaluation.policy
        danger = evaluation.outcome in (BLOCKED, APPROVAL_REQUIRED)
        found.append(
            AlertCandidate(
                alert_kind="budget_alert",
                severity="danger" if danger else "warning",
                scope_kind=policy.scope_kind,
                scope_id=policy.scope_id,
                summary=f"Budget policy {policy.policy_id}: {evaluation.outcome.replace('_', ' ')}",
                reason=f"{policy.metric_kind} over {policy.interval_kind} is {evaluation.outcome}",
                recommended_action=(
                    "request a budget override or raise the limit"
                    if danger
                    else "review usage against the budget"
                ),
                dedupe_key=f"budget_alert:{policy.policy_id}:{evaluation.outcome}",
                payload=evaluation.to_dict(),
            )
        )
    unique: dict[str, AlertCandidate] = {}
    for candidate in found:
        kept = unique.get(candidate.dedupe_key)
        if kept is None or _SEVERITY_RANK[candidate.severity] > _SEVERITY_RANK[kept.severity]:
            unique[candidate.dedupe_key] = candidate
    return sorted(unique.values(), key=lambda a: (-_SEVERITY_RANK[a.severity], a.dedupe_key))
