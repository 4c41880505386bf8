"""Storage of pricing, budget policies, routing decisions, ledger events and alerts.

Write operations are functions of a journal transaction (applied by the journal
actor); reads take a connection the caller owns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import apsw
import orjson

from palyra.governance.budgets import BudgetPolicy, policy_from_mapping
from palyra.governance.pricing import PricingRecord
from palyra.governance.usage import AlertCandidate, UsageRecord
from palyra.ids import new_ulid
from palyra.journal.store import Txn

Op = Callable[[Txn], Any]

_PRICING_COLS = (
    "pricing_id, provider_id, provider_kind, model_id, effective_from_unix_ms, effective_to_unix_ms,"
    " input_cost_per_million_micro_usd, output_cost_per_million_micro_usd,"
    " fixed_request_cost_micro_usd, source, precision, currency"
)


def upsert_pricing(records: Iterable[PricingRecord], now_ms: int) -> Op:
    rows = [tuple(getattr(r, c.strip()) for c in _PRICING_COLS.split(",")) + (now_ms,) for r in records]

    def op(txn: Txn) -> int:
        txn.conn.executemany(
            f"INSERT OR REPLACE INTO usage_pricing_catalog({_PRICING_COLS}, updated_at_unix_ms)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        return len(rows)

    return op


def upsert_policy(policy: BudgetPolicy) -> Op:
    record = policy.to_record()

    def op(txn: Txn) -> None:
        txn.conn.execute(
            "INSERT INTO usage_budget_policies(policy_id, policy_json, enabled, created_by_principal,"
            " updated_by_principal, created_at_unix_ms, updated_at_unix_ms) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT(policy_id) DO UPDATE SET policy_json = excluded.policy_json,"
            " enabled = excluded.enabled, updated_by_principal = excluded.updated_by_principal,"
            " updated_at_unix_ms = excluded.updated_at_unix_ms",
            (policy.policy_id, orjson.dumps(record).decode(), int(policy.enabled),
             policy.created_by_principal, policy.updated_by_principal, policy.created_at_unix_ms,
             policy.updated_at_unix_ms),
        )

    return op


def append_ledger_events(events: Iterable[dict[str, Any]], now_ms: int) -> Op:
    rows = [(e["reservation_id"], e["type"], orjson.dumps(e, option=orjson.OPT_SORT_KEYS).decode(), now_ms)
            for e in events]

    def op(txn: Txn) -> int:
        txn.conn.executemany(
            "INSERT INTO budget_ledger_events(reservation_id, event_type, event_json, created_at_unix_ms)"
            " VALUES (?,?,?,?)",
            rows,
        )
        return len(rows)

    return op


def insert_routing_decision(record: dict[str, Any]) -> Op:
    row = (record["decision_id"], record["run_id"], record["session_id"],
           orjson.dumps(record).decode(), record["actual_model_id"], record["budget_outcome"],
           record["created_at_unix_ms"])

    def op(txn: Txn) -> None:
        txn.conn.execute(
            "INSERT INTO usage_routing_decisions(decision_id, run_id, session_id, record_json,"
            " actual_model_id, budget_outcome, created_at_unix_ms) VALUES (?,?,?,?,?,?,?)",
            row,
        )

    return op


def set_run_cost(run_id: str, cost_micro_usd: int) -> Op:
    def op(txn: Txn) -> None:
        txn.conn.execute(
            "UPDATE orchestrator_runs SET estimated_cost_micro_usd = coalesce(estimated_cost_micro_usd, 0) + ?"
            " WHERE run_ulid = ?",
            (cost_micro_usd, run_id),
        )

    return op


def upsert_alerts(alerts: Iterable[AlertCandidate], now_ms: int) -> Op:
    items = list(alerts)

    def op(txn: Txn) -> int:
        for a in items:
            txn.conn.execute(
                "INSERT INTO usage_alerts(alert_id, alert_kind, severity, scope_kind, scope_id, summary,"
                " reason, recommended_action, source, dedupe_key, payload_json,"
                " first_observed_at_unix_ms, last_observed_at_unix_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(dedupe_key) DO UPDATE SET occurrence_count = occurrence_count + 1,"
                " last_observed_at_unix_ms = excluded.last_observed_at_unix_ms,"
                " severity = excluded.severity, summary = excluded.summary, reason = excluded.reason,"
                " payload_json = excluded.payload_json",
                (new_ulid(now_ms), a.alert_kind, a.severity, a.scope_kind, a.scope_id, a.summary,
                 a.reason, a.recommended_action, a.source, a.dedupe_key,
                 orjson.dumps(a.payload).decode(), now_ms, now_ms),
            )
        return len(items)

    return op


class GovernanceQueries:
    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def pricing(self) -> list[PricingRecord]:
        rows = self.conn.execute(f"SELECT {_PRICING_COLS} FROM usage_pricing_catalog").fetchall()
        names = [c.strip() for c in _PRICING_COLS.split(",")]
        return [PricingRecord(**dict(zip(names, r, strict=True))) for r in rows]

    def policies(self) -> list[BudgetPolicy]:
        rows = self.conn.execute(
            "SELECT policy_json FROM usage_budget_policies ORDER BY policy_id"
        ).fetchall()
        return [policy_from_mapping(orjson.loads(r[0])) for r in rows]

    def ledger_events(self) -> list[dict[str, Any]]:
        return [orjson.loads(r[0]) for r in self.conn.execute(
            "SELECT event_json FROM budget_ledger_events ORDER BY seq")]

    def routing_decisions(self, *, run_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        rows = self.conn.execute(
            f"SELECT record_json FROM usage_routing_decisions {where}"
            " ORDER BY created_at_unix_ms DESC, decision_id DESC LIMIT ?", (*args, max(1, min(limit, 500))),
        ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def alerts(self, *, limit: int = 100) -> list[dict[str, Any]]:
        cols = ("alert_id, alert_kind, severity, scope_kind, scope_id, summary, reason, recommended_action,"
                " source, dedupe_key, occurrence_count, payload_json, first_observed_at_unix_ms,"
                " last_observed_at_unix_ms, acknowledged_at_unix_ms, resolved_at_unix_ms")
        names = [c.strip() for c in cols.split(",")]
        out = []
        for row in self.conn.execute(
            f"SELECT {cols} FROM usage_alerts ORDER BY last_observed_at_unix_ms DESC LIMIT ?", (limit,)
        ):
            item = dict(zip(names, row, strict=True))
            item["payload"] = orjson.loads(item.pop("payload_json"))
            out.append(item)
        return out

    def usage_records(self, start_ms: int, end_ms: int) -> list[UsageRecord]:
        rows = self.conn.execute(
            "SELECT r.run_ulid, r.session_ulid, coalesce(s.principal, ''), r.state,"
            " coalesce(r.started_at_unix_ms, r.created_at_unix_ms), r.completed_at_unix_ms, r.model_id,"
            " r.provider_id, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.estimated_cost_micro_usd"
            " FROM orchestrator_runs r LEFT JOIN orchestrator_sessions s ON s.session_ulid = r.session_ulid"
            " WHERE r.created_at_unix_ms >= ? AND r.created_at_unix_ms < ?",
            (start_ms, end_ms),
        ).fetchall()
        return [
            UsageRecord(run_id=r[0], session_id=r[1], principal=r[2], state=r[3], started_at_unix_ms=r[4],
                        completed_at_unix_ms=r[5], model_id=r[6], provider_id=r[7], prompt_tokens=r[8],
                        completion_tokens=r[9], total_tokens=r[10], estimated_cost_micro_usd=r[11])
            for r in rows
        ]

    def tool_proposals(self, start_ms: int, end_ms: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (payload_json,) in self.conn.execute(
            "SELECT payload_json FROM orchestrator_tape WHERE event_type = 'tool_proposal'"
            " AND created_at_unix_ms >= ? AND created_at_unix_ms < ?", (start_ms, end_ms),
        ):
            name = orjson.loads(payload_json).get("tool_name", "?")
            counts[name] = counts.get(name, 0) + 1
        return counts


def pricing_as_dict(record: PricingRecord) -> dict[str, Any]:
    return dataclasses.asdict(record)
