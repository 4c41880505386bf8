"""Console routes of issue #6: background tasks, incidents, learning candidates, memory,
and the usage export and breakdowns.

The handlers translate HTTP to the embedding API (``rt.tasks``, ``rt.incidents``,
``rt.learning``, ``rt.memory``, ``rt.usage``) and run its blocking calls on the
surface's pool. :data:`ROUTES` is appended to the one route table in
:mod:`surfaces.http.routes`, so auth, OpenAPI and the fuzz tests cover these too.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Sequence
from typing import Any

from quart import Response

from palyra.background.tasks import KINDS, BackgroundTask
from palyra.background.tasks import STATES as TASK_STATES
from palyra.errors import InvalidInput, NotFound
from palyra.governance.usage import EXPORT_DATASETS
from palyra.healing.incidents import RuntimeIncidentRecord
from palyra.healing.remediation import RemediationAttempt
from palyra.learning.candidates import Candidate
from palyra.memory.store import MAX_SEARCH_TOP_K, SCOPES, SOURCES, MemoryItem
from surfaces.http.schema import (
    LIMIT,
    WINDOW,
    Body,
    Field,
    Param,
    Route,
    array_of,
    dataclass_schemas,
    obj,
    ref,
)
from surfaces.http.state import Call, respond

_STR = 256
# Integers go into SQLite (64-bit) and are added to the clock: bound them well inside.
_MAX_MS = 2**53
_PRINCIPAL = Field("principal", "string", max_length=_STR, description="default user:local")
_CHANNEL = Field("channel", "string", max_length=_STR)
_OWNER = Param("principal", default="user:local", description="the owner (records are scoped to it)")


# -- background tasks -----------------------------------------------------------------


async def list_tasks(call: Call) -> Any:
    q = call.query
    tasks = await call.pool.run(call.rt.tasks.list, session_id=q["session_id"],
                                principal=q["principal"], state=q["state"], limit=q["limit"])
    return respond({"tasks": [t.to_dict() for t in tasks]})


async def create_task(call: Call) -> Any:
    b = dict(call.body)
    known = ("text", "task_kind", "session_key", "session_id", "principal", "device_id", "channel",
             "parent_run_id")
    options = {k: v for k, v in b.items() if k not in known}
    task = await call.pool.run(
        lambda: call.rt.tasks.create(
            text=b["text"], kind=b.get("task_kind", "background_prompt"),
            session_key=b.get("session_key"), session_id=b.get("session_id"),
            principal=b.get("principal", "user:local"), device_id=b.get("device_id", "local"),
            channel=b.get("channel"), parent_run_id=b.get("parent_run_id"), **options))
    return respond(task.to_dict(), 201, {"Location": f"/admin/v1/tasks/{task.task_id}"})


async def get_task(call: Call) -> Any:
    task = await call.pool.run(call.rt.tasks.get, call.ulid("task_id"))
    return respond(task.to_dict())


def _task_control(action: str) -> Any:
    """One handler per control, so each has its own route (as ``/runs/{id}/cancel``)
    and operation id; an illegal control is the state machine's 409."""

    async def control(call: Call) -> Any:
        task_id = call.ulid("task_id")
        task = await call.pool.run(getattr(call.rt.tasks, action), task_id)
        return respond(task.to_dict())

    control.__name__ = control.__qualname__ = f"{action}_task"
    return control


pause_task, resume_task, retry_task, cancel_task = map(_task_control,
                                                       ("pause", "resume", "retry", "cancel"))


# -- incidents ------------------------------------------------------------------------


async def list_incidents(call: Call) -> Any:
    q = call.query
    found = await call.pool.run(call.rt.incidents.list, active=q["active"], limit=q["limit"])
    return respond({"incidents": [i.to_dict() for i in found]})


async def list_remediation_attempts(call: Call) -> Any:
    found = await call.pool.run(call.rt.incidents.attempts, call.query["incident_id"])
    return respond({"attempts": [dataclasses.asdict(a) for a in found]})


async def check_incidents(call: Call) -> Any:
    rt = call.rt

    def check() -> dict[str, Any]:
        loops = rt.incidents.check_now()
        return {"loops_total": loops,
                "active": [i.to_dict() for i in rt.incidents.list(active=True)]}

    return respond(await call.pool.run(check))


# -- learning -------------------------------------------------------------------------


async def list_learning_candidates(call: Call) -> Any:
    q = call.query
    found = await call.pool.run(call.rt.learning.candidates, principal=q["principal"],
                                status=q["status"], session_id=q["session_id"], limit=q["limit"])
    return respond({"candidates": [c.to_dict() for c in found]})


async def review_learning_candidate(call: Call) -> Any:
    b = call.body
    reviewed = await call.pool.run(
        lambda: call.rt.learning.review(call.ulid("candidate_id"), b["status"],
                                        principal=b.get("principal", "user:local"),
                                        reason=b.get("reason")))
    return respond(reviewed.to_dict())


# -- memory ---------------------------------------------------------------------------


async def search_memory(call: Call) -> Any:
    b = call.body
    hits = await call.pool.run(
        lambda: call.rt.memory.search(b["query"], principal=b.get("principal", "user:local"),
                                      channel=b.get("channel"), session_id=b.get("session_id"),
                                      limit=min(b.get("limit", 8), MAX_SEARCH_TOP_K),
                                      min_score=b.get("min_score", 0.0)))
    return respond({"hits": [h.to_dict() for h in hits]})


async def ingest_memory(call: Call) -> Any:
    b = call.body
    if not b["text"].strip():
        raise InvalidInput("text: must not be empty", details={"field": "text"})
    item = await call.pool.run(
        lambda: call.rt.memory.ingest(
            b["text"], principal=b.get("principal", "user:local"), channel=b.get("channel"),
            session_id=b.get("session_id"), scope=b.get("scope"), source=b.get("source", "manual"),
            tags=tuple(b.get("tags", ())), confidence=b.get("confidence"), ttl_ms=b.get("ttl_ms")))
    return respond(item.to_dict(), 201, {"Location": f"/admin/v1/memory/{item.memory_id}"})


async def get_memory(call: Call) -> Any:
    item = await call.pool.run(lambda: call.rt.memory.get(call.ulid("memory_id"),
                                                          principal=call.query["principal"]))
    return respond(item.to_dict())


async def delete_memory(call: Call) -> Any:
    memory_id = call.ulid("memory_id")
    deleted = await call.pool.run(lambda: call.rt.memory.delete(memory_id,
                                                                principal=call.query["principal"]))
    if not deleted:  # absent, or another principal's: the same answer for both
        raise NotFound(f"memory item {memory_id} not found", details={"memory_id": memory_id})
    return respond({"memory_id": memory_id, "deleted": True})


# -- usage ----------------------------------------------------------------------------

CSV = "text/csv"
# A spreadsheet runs a cell that starts with one of these as a formula; principals and
# model ids are caller-chosen text (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def csv_text(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    """A header row, then one line per row in ``columns`` order (None as empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()


async def usage_export(call: Call) -> Any:
    q = call.query
    data = await call.pool.run(call.rt.usage.export, q["start_at_unix_ms"], q["end_at_unix_ms"],
                               q["dataset"], q["bucket"])
    if q["format"] == "json":
        return respond(data)
    name = f"palyra-usage-{data['dataset']}-{data['query']['start_at_unix_ms']}-" \
           f"{data['query']['end_at_unix_ms']}.csv"
    return Response(csv_text(data["columns"], data["rows"]), 200, content_type=f"{CSV}; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def usage_sessions(call: Call) -> Any:
    q = call.query
    return respond(await call.pool.run(lambda: call.rt.usage.sessions(
        q["start_at_unix_ms"], q["end_at_unix_ms"], limit=q["limit"], cursor=q["cursor"])))


async def usage_principals(call: Call) -> Any:
    q = call.query
    return respond(await call.pool.run(lambda: call.rt.usage.principals(
        q["start_at_unix_ms"], q["end_at_unix_ms"], limit=q["limit"], cursor=q["cursor"])))


async def usage_alerts(call: Call) -> Any:
    q = call.query
    found = await call.pool.run(call.rt.usage.alerts, q["start_at_unix_ms"], q["end_at_unix_ms"])
    return respond({"alerts": found})


async def usage_routing_decisions(call: Call) -> Any:
    q = call.query
    found = await call.pool.run(lambda: call.rt.usage.routing_decisions(run_id=q["run_id"],
                                                                        limit=q["limit"]))
    return respond({"decisions": found})


# -- parameters and bodies ------------------------------------------------------------

CREATE_TASK = Body("CreateTaskRequest", (
    Field("text", "string", required=True, description="the prompt (at most 32768 characters)"),
    Field("task_kind", "string", description="default background_prompt; console kinds and aliases"),
    Field("session_key", "string", max_length=_STR, description="free-text session alias"),
    Field("session_id", "string", ulid=True, description="a session ULID"),
    _PRINCIPAL,
    Field("device_id", "string", max_length=_STR, description="default local"),
    _CHANNEL,
    Field("parent_run_id", "string", ulid=True, description="a run ULID; cancelling it cancels the task"),
    Field("priority", "integer", description="clamped to -10..10"),
    Field("max_attempts", "integer", description="clamped to 1..16, default 3"),
    Field("budget_tokens", "integer", minimum=1, maximum=_MAX_MS,
          description="default: the prompt's word count"),
    Field("not_before_unix_ms", "integer", minimum=0, maximum=_MAX_MS,
          description="not dispatched before"),
    Field("expires_at_unix_ms", "integer", minimum=0, maximum=_MAX_MS,
          description="expires if not dispatched by"),
    Field("notification_target", "object"),
    Field("delegation", "object", description="for delegation_prompt (needs parent_run_id)"),
    Field("parameter_delta", "object"),
))
REVIEW = Body("CandidateReview", (
    Field("status", "string", required=True, max_length=64,
          description="accepted|rejected|needs_review|... (aliases: approved, denied, ...)"),
    Field("principal", "string", max_length=_STR,
          description="the candidate's owner, recorded as reviewer (default user:local)"),
    Field("reason", "string", max_length=512),
))
MEMORY_SEARCH = Body("MemorySearchRequest", (
    Field("query", "string", required=True, description="at most 4 KiB"),
    _PRINCIPAL,
    _CHANNEL,
    Field("session_id", "string", ulid=True, description="a session ULID"),
    Field("limit", "integer", minimum=1, description=f"default 8, at most {MAX_SEARCH_TOP_K}"),
    Field("min_score", "number", description="0..1, default 0"),
))
MEMORY_INGEST = Body("MemoryIngestRequest", (
    Field("text", "string", required=True, description="at most 16 KiB and 2048 words"),
    _PRINCIPAL,
    _CHANNEL,
    Field("session_id", "string", ulid=True, description="a session ULID"),
    Field("scope", "string", enum=SCOPES, description="default: the narrowest context given"),
    Field("source", "string", enum=SOURCES, description="default manual"),
    Field("tags", "array", items="string", max_length=32),
    Field("confidence", "number", description="0..1"),
    Field("ttl_ms", "integer", minimum=1, maximum=_MAX_MS, description="default 30 days"),
))
_TASK_ERRORS = (404, 409)
_BREAKDOWN = (*WINDOW, Param("limit", "integer", default=10, minimum=1, description="at most 50"),
              Param("cursor", description="next_cursor of the previous page"))

_T, _I, _L, _M, _U = "tasks", "incidents", "learning", "memory", "usage"
ROUTES: tuple[Route, ...] = (
    Route("GET", "/admin/v1/tasks", list_tasks, "Background tasks, newest first", _T, "TaskList",
          query=(Param("session_id"), Param("principal"), Param("state", enum=TASK_STATES), LIMIT)),
    Route("POST", "/admin/v1/tasks", create_task, "Queue a background task", _T, "BackgroundTask",
          status=201, body=CREATE_TASK, errors=(404, 409)),
    Route("GET", "/admin/v1/tasks/{task_id}", get_task, "One background task", _T,
          "BackgroundTask", errors=(404,)),
    Route("POST", "/admin/v1/tasks/{task_id}/pause", pause_task, "Pause a queued task", _T,
          "BackgroundTask", errors=_TASK_ERRORS),
    Route("POST", "/admin/v1/tasks/{task_id}/resume", resume_task, "Queue a paused task again",
          _T, "BackgroundTask", errors=_TASK_ERRORS),
    Route("POST", "/admin/v1/tasks/{task_id}/retry", retry_task,
          "Queue a failed, cancelled or expired task again (fresh attempts)", _T,
          "BackgroundTask", errors=_TASK_ERRORS),
    Route("POST", "/admin/v1/tasks/{task_id}/cancel", cancel_task,
          "Cancel a task (a running one: its run is asked to stop)", _T, "BackgroundTask",
          errors=_TASK_ERRORS),
    Route("GET", "/admin/v1/incidents", list_incidents, "Self-healing incidents, newest first",
          _I, "IncidentList", query=(Param("active", "boolean", default=False),
                                     Param("limit", "integer", default=32, minimum=1))),
    Route("GET", "/admin/v1/incidents/attempts", list_remediation_attempts,
          "Remediation attempts, newest first", _I, "RemediationAttemptList",
          query=(Param("incident_id"),)),
    Route("POST", "/admin/v1/incidents/check", check_incidents,
          "Run one self-healing loop now; its writes land asynchronously", _I, "IncidentCheck"),
    Route("GET", "/admin/v1/learning/candidates", list_learning_candidates,
          "Learning candidates, newest first", _L, "CandidateList",
          query=(Param("principal"), Param("status"), Param("session_id", ulid=True), LIMIT)),
    Route("POST", "/admin/v1/learning/candidates/{candidate_id}/review",
          review_learning_candidate, "Accept or reject a candidate (with history)", _L,
          "Candidate", body=REVIEW, errors=(404, 409)),
    Route("POST", "/admin/v1/memory/search", search_memory, "Search one principal's memory",
          _M, "MemorySearch", body=MEMORY_SEARCH, errors=(413,)),
    Route("POST", "/admin/v1/memory", ingest_memory, "Store a memory item", _M, "MemoryItem",
          status=201, body=MEMORY_INGEST, errors=(413,)),
    Route("GET", "/admin/v1/memory/{memory_id}", get_memory, "One memory item of a principal",
          _M, "MemoryItem", errors=(404,), query=(_OWNER,)),
    Route("DELETE", "/admin/v1/memory/{memory_id}", delete_memory,
          "Delete one memory item of a principal", _M, "MemoryDeleted", errors=(404,),
          query=(_OWNER,)),
    Route("GET", "/admin/v1/usage/export", usage_export,
          "Usage rows as CSV (with a header row, as an attachment) or JSON", _U, "UsageExport",
          content_types=("application/json", CSV), query=(
              Param("format", default="json", enum=("json", "csv")),
              Param("dataset", default="runs", enum=EXPORT_DATASETS,
                    description="runs: one row per run; timeline: the summary's buckets"),
              *WINDOW, Param("bucket", default="auto", enum=("auto", "hour", "day")))),
    Route("GET", "/admin/v1/usage/sessions", usage_sessions, "Usage per session, most tokens first",
          _U, "UsageBreakdown", query=_BREAKDOWN),
    Route("GET", "/admin/v1/usage/principals", usage_principals,
          "Usage per principal, most tokens first", _U, "UsageBreakdown", query=_BREAKDOWN),
    Route("GET", "/admin/v1/usage/alerts", usage_alerts,
          "Evaluate the window, record new alerts, return the stored alerts", _U, "UsageAlerts",
          query=WINDOW),
    Route("GET", "/admin/v1/usage/routing-decisions", usage_routing_decisions,
          "Smart-routing decisions, newest first", _U, "RoutingDecisions",
          query=(Param("run_id"), Param("limit", "integer", default=50, minimum=1))),
)


def schemas() -> dict[str, Any]:
    obj_any = {"type": "object"}
    rows = {"type": "array", "items": obj_any}
    out = dataclass_schemas(BackgroundTask, RuntimeIncidentRecord, RemediationAttempt, Candidate,
                            MemoryItem)
    out["BackgroundTask"]["properties"]["task_kind"]["enum"] = list(KINDS)
    out.update({
        "TaskList": obj({"tasks": array_of("BackgroundTask")}, required=["tasks"]),
        "IncidentList": obj({"incidents": array_of("RuntimeIncidentRecord")},
                            required=["incidents"]),
        "RemediationAttemptList": obj({"attempts": array_of("RemediationAttempt")},
                                      required=["attempts"]),
        "IncidentCheck": obj({"loops_total": {"type": "integer"},
                              "active": array_of("RuntimeIncidentRecord")},
                             required=["loops_total", "active"]),
        "CandidateList": obj({"candidates": array_of("Candidate")}, required=["candidates"]),
        "MemoryHit": obj({"item": ref("MemoryItem"), "score": {"type": "number"},
                          "breakdown": obj_any, "snippet": {"type": "string"}},
                         required=["item", "score", "breakdown", "snippet"]),
        "MemorySearch": obj({"hits": array_of("MemoryHit")}, required=["hits"]),
        "MemoryDeleted": obj({"memory_id": {"type": "string"}, "deleted": {"type": "boolean"}},
                             required=["memory_id", "deleted"]),
        "UsageExport": obj({"contract": {"type": "string"}, "query": obj_any,
                            "dataset": {"type": "string", "enum": list(EXPORT_DATASETS)},
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "rows": rows}, required=["dataset", "columns", "rows"],
                           description="format=csv: the same rows as text/csv, header first"),
        "UsageBreakdown": obj({"items": rows, "next_cursor": {"type": ["string", "null"]}},
                              required=["items", "next_cursor"]),
        "UsageAlerts": obj({"alerts": rows}, required=["alerts"]),
        "RoutingDecisions": obj({"decisions": rows}, required=["decisions"]),
    })
    return out
