"""CLI commands over the console routes: background tasks, incidents, budget writes,
learning candidates, memory search and usage export.

Each command is one request to ``palyrad`` (``/admin/v1/...``); ``--json`` prints the
daemon's answer as is, otherwise a short table. :func:`register` adds them to the parser
of :mod:`palyra.cli.main`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from palyra.cli.main import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Daemon,
    _given,
    _policy_terms,
    _print,
)

Column = tuple[str, Callable[[dict[str, Any]], Any], int]  # header, value, max width


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], empty: str) -> str:
    """Aligned columns, each cell cut to its column's max width."""
    if not rows:
        return empty
    cells = [[_cut(value(row), width) for _, value, width in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, (h, _, _) in enumerate(columns)]
    lines = [[h for h, _, _ in columns], *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _cut(value: Any, width: int) -> str:
    text = "" if value is None else str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _col(key: str, width: int = 26, header: str | None = None) -> Column:
    return (header or key.upper(), lambda row: row.get(key), width)


# -- tasks ----------------------------------------------------------------------------

TASK_COLUMNS = (_col("task_id"), _col("state", 16), _col("task_kind", 18, "KIND"),
                _col("priority", 4, "PRI"), _col("attempt_count", 3, "TRY"),
                _col("owner_principal", 20, "PRINCIPAL"), _col("input_text", 40, "TEXT"))


def _show_task(args: argparse.Namespace, task: dict[str, Any]) -> int:
    human = _table([task], TASK_COLUMNS, "")
    if task.get("last_error"):
        human += f"\nlast error: {task['last_error']}"
    _print(task, args.json, human)
    return EXIT_OK


def cmd_tasks_list(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/tasks", params={
        "state": args.state, "principal": args.principal, "session_id": args.session_id,
        "limit": args.limit})
    _print(data, args.json, _table(data["tasks"], TASK_COLUMNS, "(no background tasks)"))
    return EXIT_OK


def cmd_tasks_show(args: argparse.Namespace, d: Daemon) -> int:
    return _show_task(args, d.call("GET", f"/admin/v1/tasks/{args.task_id}"))


def cmd_tasks_create(args: argparse.Namespace, d: Daemon) -> int:
    body = _given(text=args.text, task_kind=args.kind, session_key=args.session,
                  principal=args.principal, priority=args.priority,
                  max_attempts=args.max_attempts, not_before_unix_ms=args.not_before,
                  expires_at_unix_ms=args.expires_at)
    return _show_task(args, d.call("POST", "/admin/v1/tasks", json=body))


def cmd_tasks_control(args: argparse.Namespace, d: Daemon) -> int:
    return _show_task(args, d.call("POST", f"/admin/v1/tasks/{args.task_id}/{args.action}"))


# -- incidents ------------------------------------------------------------------------

INCIDENT_COLUMNS = (_col("incident_id", 25, "INCIDENT"), _col("state", 11), _col("severity", 8),
                    _col("domain", 9), _col("kind", 20), _col("summary", 50))


def cmd_incidents_list(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/incidents", params={"active": "true" if args.active else None,
                                                        "limit": args.limit})
    _print(data, args.json, _table(data["incidents"], INCIDENT_COLUMNS, "(no incidents)"))
    return EXIT_OK


def cmd_incidents_check(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("POST", "/admin/v1/incidents/check")
    human = (f"self-healing loop run ({data['loops_total']} so far); active incidents "
             f"(its own findings may take a moment to show):\n"
             + _table(data["active"], INCIDENT_COLUMNS, "(none)"))
    _print(data, args.json, human)
    return EXIT_OK


def cmd_incidents_attempts(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/incidents/attempts", params={"incident_id": args.incident})
    columns = (_col("attempt_id", 28, "ATTEMPT"), _col("incident_id", 25, "INCIDENT"),
               _col("action", 20), _col("status", 10), _col("detail", 50))
    _print(data, args.json, _table(data["attempts"], columns, "(no remediation attempts)"))
    return EXIT_OK


# -- budgets --------------------------------------------------------------------------

POLICY_OPTIONS = (  # option dest -> policy field
    ("policy_id", "policy_id"), ("scope_kind", "scope_kind"), ("scope_id", "scope_id"),
    ("metric", "metric_kind"), ("interval", "interval_kind"), ("action", "action"),
    ("soft_limit", "soft_limit_value"), ("hard_limit", "hard_limit_value"),
    ("routing_mode", "routing_mode_override"),
)


def _policy(args: argparse.Namespace) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if args.file:
        try:
            with open(args.file, "rb") as fh:
                policy = orjson.loads(fh.read())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise CliError(f"cannot read a policy from {args.file}: {exc}", EXIT_USAGE) from None
        if not isinstance(policy, dict):
            raise CliError(f"{args.file} must hold a JSON object", EXIT_USAGE)
    policy.update(_given(**{field: getattr(args, dest) for dest, field in POLICY_OPTIONS}))
    if args.disabled:
        policy["enabled"] = False
    return policy


def cmd_budgets_put(args: argparse.Namespace, d: Daemon) -> int:
    p = d.call("POST", "/admin/v1/budgets", json=_policy(args))
    _print(p, args.json, f"policy {p['policy_id']}: {_policy_terms(p)}")
    return EXIT_OK


def cmd_budgets_override(args: argparse.Namespace, d: Daemon) -> int:
    approval = d.call("POST", f"/admin/v1/budgets/{args.policy_id}/override-request",
                      json=_given(reason=args.reason))
    _print(approval, args.json, f"override requested: approval {approval['approval_id']} "
                                f"(decide with: palyra approvals allow {approval['approval_id']})")
    return EXIT_OK


# -- learning -------------------------------------------------------------------------

CANDIDATE_COLUMNS = (_col("candidate_id", 26, "CANDIDATE"), _col("candidate_kind", 14, "KIND"),
                     _col("status", 12), _col("confidence", 5, "CONF"),
                     _col("owner_principal", 20, "PRINCIPAL"), _col("title", 40))


def cmd_learning_candidates(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/learning/candidates", params={
        "principal": args.principal, "status": args.status, "limit": args.limit})
    _print(data, args.json, _table(data["candidates"], CANDIDATE_COLUMNS, "(no candidates)"))
    return EXIT_OK


def cmd_learning_review(args: argparse.Namespace, d: Daemon) -> int:
    reviewed = d.call("POST", f"/admin/v1/learning/candidates/{args.candidate_id}/review",
                      json=_given(status=args.status, reason=args.reason, principal=args.principal))
    _print(reviewed, args.json, _table([reviewed], CANDIDATE_COLUMNS, ""))
    return EXIT_OK


# -- memory ---------------------------------------------------------------------------


def cmd_memory_search(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("POST", "/admin/v1/memory/search", json=_given(
        query=args.query, principal=args.principal, channel=args.channel,
        session_id=args.session_id, limit=args.limit))
    rows = [{**hit["item"], "score": f"{hit['score']:.3f}", "snippet": hit["snippet"]}
            for hit in data["hits"]]
    columns = (_col("memory_id", 26, "MEMORY"), _col("score", 5), _col("source", 16),
               _col("snippet", 60))
    _print(data, args.json, _table(rows, columns, "(no matches)"))
    return EXIT_OK


# -- usage ----------------------------------------------------------------------------


def cmd_usage_export(args: argparse.Namespace, d: Daemon) -> int:
    params = {"format": args.format, "dataset": args.dataset, "start_at_unix_ms": args.start,
              "end_at_unix_ms": args.end}
    content = d.fetch("/admin/v1/usage/export", params=params)
    if args.output is None:
        print(content.decode(), end="" if content.endswith(b"\n") else "\n")
        return EXIT_OK
    try:
        with open(args.output, "wb") as fh:
            fh.write(content)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}", EXIT_FAILED) from None
    written = {"output_path": os.path.abspath(args.output), "size_bytes": len(content),
               "format": args.format, "dataset": args.dataset}
    _print(written, args.json, f"wrote {written['output_path']} ({len(content)} bytes)")
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------


def register(sub: Any, common: argparse.ArgumentParser, group: Callable[..., Any],
             leaf: Callable[..., Any], *, budgets: Any, usage: Any) -> None:
    """Add the console commands; ``budgets`` and ``usage`` are the existing groups."""
    tasks = group("tasks", "background tasks")
    p = leaf(tasks, "list", "background tasks, newest first", cmd_tasks_list)
    p.add_argument("--state")
    p.add_argument("--principal")
    p.add_argument("--session-id")
    p.add_argument("--limit", type=int, default=20)
    leaf(tasks, "show", "one task", cmd_tasks_show).add_argument("task_id")
    p = leaf(tasks, "create", "queue a background prompt", cmd_tasks_create)
    p.add_argument("text")
    p.add_argument("--kind", help="task kind (default background_prompt)")
    p.add_argument("--session", help="session key")
    p.add_argument("--principal")
    p.add_argument("--priority", type=int)
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--not-before", type=int, metavar="UNIX_MS")
    p.add_argument("--expires-at", type=int, metavar="UNIX_MS")
    for action, text in (("pause", "pause a queued task"), ("resume", "queue a paused task"),
                         ("retry", "queue a failed/cancelled/expired task again"),
                         ("cancel", "cancel a task")):
        p = leaf(tasks, action, text, cmd_tasks_control)
        p.add_argument("task_id")
        p.set_defaults(action=action)

    # ``palyra incidents`` alone lists them, as ``palyra incidents list`` does
    incidents = sub.add_parser("incidents", help="self-healing incidents", parents=[common])
    incidents.set_defaults(func=cmd_incidents_list, remote=True, active=False, limit=32)
    incidents.add_argument("--active", action="store_true", help="only unresolved ones")
    commands = incidents.add_subparsers(dest="incidents_command")
    p = leaf(commands, "list", "incidents, newest first", cmd_incidents_list)
    p.add_argument("--active", action="store_true", help="only unresolved ones")
    p.add_argument("--limit", type=int, default=32)
    leaf(commands, "check", "run one self-healing loop now", cmd_incidents_check)
    p = leaf(commands, "attempts", "remediation attempts", cmd_incidents_attempts)
    p.add_argument("--incident", help="only this incident's")

    p = leaf(budgets, "put", "create or replace a budget policy", cmd_budgets_put)
    p.add_argument("--file", help="a JSON policy (options below override its fields)")
    p.add_argument("--policy-id")
    p.add_argument("--scope-kind", choices=("global", "principal", "session", "agent"))
    p.add_argument("--scope-id")
    p.add_argument("--metric", choices=("total_tokens", "estimated_cost_usd"))
    p.add_argument("--interval", choices=("rolling_24h", "rolling_30d", "calendar_month", "run"))
    p.add_argument("--action", choices=("block", "approval_required", "warn"))
    p.add_argument("--soft-limit", type=float)
    p.add_argument("--hard-limit", type=float)
    p.add_argument("--routing-mode", choices=("suggest", "dry_run", "enforced"))
    p.add_argument("--disabled", action="store_true")
    p = leaf(budgets, "override", "ask for an override (decide it as an approval)",
             cmd_budgets_override)
    p.add_argument("policy_id")
    p.add_argument("--reason")

    learning = group("learning", "learning candidates")
    p = leaf(learning, "candidates", "candidates, newest first", cmd_learning_candidates)
    p.add_argument("--principal")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p = leaf(learning, "review", "accept or reject a candidate", cmd_learning_review)
    p.add_argument("candidate_id")
    p.add_argument("status", help="accepted, rejected, needs_review, ...")
    p.add_argument("--reason")
    p.add_argument("--principal", help="the candidate's owner (default user:local)")

    memory = group("memory", "the memory store")
    p = leaf(memory, "search", "search one principal's memory", cmd_memory_search)
    p.add_argument("query")
    p.add_argument("--principal")
    p.add_argument("--channel")
    p.add_argument("--session-id")
    p.add_argument("--limit", type=int)

    p = leaf(usage, "export", "usage rows as CSV or JSON", cmd_usage_export)
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--dataset", choices=("runs", "timeline"), default="runs")
    p.add_argument("--start", type=int, help="start_at_unix_ms")
    p.add_argument("--end", type=int, help="end_at_unix_ms")
    p.add_argument("--output", help="write here instead of stdout")
