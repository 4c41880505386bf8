"""The admin API handlers and THE route table (:data:`ROUTES`).

The app registers exactly these routes and ``/openapi.json`` renders exactly these
routes; tests walk the same table to check auth on every one of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from contextlib import aclosing
from typing import Any

import trio
from quart import Response, current_app

from actors.budget import BUDGET, PutPolicy, PutPricing, RequestOverride
from actors.gateway import GATEWAY, ArchiveSession, ResolveSessionRequest
from palyra.access.tokens import (
    CHAT_CREATE,
    DEFAULT_RATE_LIMIT_PER_MINUTE,
    MODELS_READ,
    SCOPE_GROUPS,
    ApiToken,
)
from palyra.access.tokens import SCOPES as API_TOKEN_SCOPES
from palyra.errors import InvalidInput
from palyra.governance import UsageScope
from palyra.ids import new_ulid
from palyra.orchestrator.approvals import SCOPES
from palyra.orchestrator.sessions import SessionSelector
from palyra.orchestrator.state import STATES
from palyra.records import Identity, Run
from palyra.support_bundle import DEFAULT_MAX_BYTES, MIN_MAX_BYTES
from surfaces.http import console
from surfaces.http import openai_compat as openai
from surfaces.http.bundle_jobs import DEFAULT_RETAIN_JOBS, MAX_BUNDLE_BYTES, MAX_RETAIN_JOBS
from surfaces.http.bundle_jobs import STATES as JOB_STATES
from surfaces.http.metrics import CONTENT_TYPE as PROMETHEUS
from surfaces.http.schema import (
    JSON,
    LIMIT,
    SSE,
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
from surfaces.http.streams import SSE_HEADERS, SSE_KEEPALIVE, follow_run, sse

IDEMPOTENCY_HEADER = "Idempotency-Key"
LAST_EVENT_ID = "Last-Event-ID"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def idempotent_run_id(key: str) -> str:
    """The run id an ``Idempotency-Key`` stands for: a ULID made of the first 128 bits
    of ``sha256(key)``. Deterministic across restarts without remembering anything; the
    gateway's idempotency by run id does the rest (same request: same run; a different
    request under the same key: 409). Its time part is not a timestamp."""
    value = int.from_bytes(hashlib.sha256(b"palyra.http.idempotency.v1\0" + key.encode()).digest()[:16], "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _check_idempotency_key(key: str) -> str:
    if not 1 <= len(key) <= 255 or not all(33 <= ord(c) <= 126 for c in key):
        raise InvalidInput(f"{IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters",
                           details={"field": IDEMPOTENCY_HEADER})
    return key


# -- health ---------------------------------------------------------------------------


async def healthz(call: Call) -> Any:
    s = call.surface
    running = s.rt is not None and not s.rt.stopped.is_set()
    data = {"service": "palyrad", "status": "ok" if running else "stopped", "version": s.version,
            "uptime_seconds": s.uptime()}
    return respond(data, 200 if running else 503)


async def livez(call: Call) -> Any:
    """Alive while the runtime runs; a runtime that shut itself down (its root
    supervisor gave up) wants the process restarted."""
    s = call.surface
    if s.rt is None or s.rt.stopped.is_set():
        reason = s.rt.stop_report.reason if s.rt is not None and s.rt.stop_report else None
        return respond({"status": "dead", "reason": reason}, 503)
    return respond({"status": "alive"})


async def readyz(call: Call) -> Any:
    s = call.surface
    rt = s.rt
    if rt is None or rt.stopped.is_set():
        return respond({"status": "not_ready", "checks": {"runtime": {"ok": False}}}, 503)
    down = [row["path"] for row in rt.actors() if not row["alive"] and not _is_run_actor(row)]
    checks = {"runtime": {"ok": True}, "tree": {"ok": not down, "down": down},
              "journal": await _journal_writable(call)}
    ok = all(check["ok"] for check in checks.values())
    return respond({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)


def _is_run_actor(row: dict[str, Any]) -> bool:
    # children of the dynamic runs supervisor come and go with their runs
    return "/runs/" in row["path"]


async def _journal_writable(call: Call) -> dict[str, Any]:
    probe, rt = call.surface.probe, call.surface.runtime
    now = trio.current_time()
    if probe.last_ok_at is not None and now - probe.last_ok_at < probe.every:
        return {"ok": True, "cached": True}
    if probe.in_flight:
        return {"ok": False, "error": "the previous journal probe has not returned"}
    probe.in_flight = True

    def write() -> None:
        try:
            call.surface.metrics.timed_write(
                lambda: rt.journal.append("health.probe", {"source": "http.readyz"}))
        finally:
            probe.in_flight = False

    try:
        with trio.fail_after(2.0):
            await call.pool.run(write)
    except trio.TooSlowError:
        probe.last_ok_at, probe.last_error = None, "journal write took longer than 2s"
    except Exception as exc:
        probe.last_ok_at, probe.last_error = None, f"{type(exc).__name__}: {exc}"
    else:
        probe.last_ok_at, probe.last_error = now, None
        return {"ok": True, "cached": False}
    return {"ok": False, "error": probe.last_error}


async def status(call: Call) -> Any:
    s, rt = call.surface, call.rt
    actors = rt.actors()

    def journal() -> dict[str, Any]:
        head = rt.recent_events(1)
        out: dict[str, Any] = {
            "head_seq": head[0]["seq"] if head else 0,
            "head_hash": head[0]["hash"] if head else None,
            "last_event_kind": head[0]["kind"] if head else None,
            "last_event_at_unix_ms": head[0]["timestamp_unix_ms"] if head else None,
            "verified": None,
        }
        if call.query["verify"]:
            out["verified"] = dataclasses.asdict(rt.verify_journal())
        return out

    return respond({
        "service": "palyrad",
        "version": s.version,
        "pid": os.getpid(),
        "state_dir": str(rt.state_dir),
        "uptime_seconds": s.uptime(),
        "runtime": {"running": not rt.stopped.is_set(),
                    "provider": rt.services.provider.status_snapshot(),
                    "routing_mode": rt.config.governance.routing_mode},
        "actors": actors,
        "restarts_total": sum(row["restarts"] for row in actors),
        "journal": await call.pool.run(journal),
        "http": {"open_streams": len(s.streams)},
    })


async def diagnostics(call: Call) -> Any:
    deadline = min(call.query["deadline_ms"], 10_000) / 1000
    return respond(await call.pool.run(lambda: call.rt.diagnostics(deadline)))


async def metrics(call: Call) -> Any:
    s = call.surface
    return Response(await s.metrics.render(s.pool), 200, content_type=PROMETHEUS)


async def openapi_json(call: Call) -> Any:
    from surfaces.http.app import openapi_document

    return respond(openapi_document(call.surface.version))


# -- runs -----------------------------------------------------------------------------


async def create_run(call: Call) -> Any:
    body = call.body
    key = call.headers[IDEMPOTENCY_HEADER]
    run_id = body.get("run_id")
    if key is not None:
        _check_idempotency_key(key)
        if run_id is not None:
            raise InvalidInput(f"give either run_id or {IDEMPOTENCY_HEADER}, not both",
                               details={"field": "run_id"})
        run_id = idempotent_run_id(key)
    handle = await call.rt.aio.send(
        body["text"],
        session_key=body.get("session_key"),
        session_id=body.get("session_id"),
        session_label=body.get("session_label"),
        principal=body.get("principal", "user:local"),
        channel=body.get("channel"),
        run_id=run_id or new_ulid(),
    )
    data = {"run_id": handle.id, "session_id": handle.session_id,
            "session_created": handle.session_created}
    return respond(data, 202, {"Location": f"/admin/v1/runs/{handle.id}"})


async def list_runs(call: Call) -> Any:
    q = call.query
    runs = await call.pool.run(call.rt.runs, state=q["state"], session_id=q["session_id"],
                               limit=q["limit"])
    return respond({"runs": runs})


async def get_run(call: Call) -> Any:
    run_id, rt = call.ulid("run_id"), call.rt

    def read() -> dict[str, Any]:
        run: Run = rt.run(run_id)
        session = rt.sessions.get(run.session_id)
        return {**run.to_dict(), "identity": {"principal": session.principal,
                                              "device_id": session.device_id,
                                              "channel": session.channel}}

    return respond(await call.pool.run(read))


async def get_run_tape(call: Call) -> Any:
    run_id = call.ulid("run_id")
    page = await call.pool.run(call.rt.tape_page, run_id, after_seq=call.query["after_seq"],
                               limit=call.query["limit"])
    return respond(page)


async def cancel_run(call: Call) -> Any:
    run_id = call.ulid("run_id")
    reason = call.body.get("reason") or "cancelled by operator"
    reply = await call.rt.aio.cancel(run_id, reason)
    return respond({**reply, "reason": reason})


async def run_events(call: Call) -> Any:
    s, rt = call.surface, call.rt
    run_id = call.ulid("run_id")
    after = call.query["after_seq"]
    last_event_id = call.headers[LAST_EVENT_ID]
    if last_event_id is not None:
        try:
            after = int(last_event_id.strip())
        except ValueError:
            raise InvalidInput(f"{LAST_EVENT_ID} must be an integer tape seq",
                               details={"field": LAST_EVENT_ID}) from None
        if after < -1:
            raise InvalidInput(f"{LAST_EVENT_ID} must be >= -1", details={"field": LAST_EVENT_ID})
    await call.pool.run(rt.run, run_id)  # 404 before the stream starts
    events = follow_run(rt, s.pool, s.streams, run_id, after_seq=after,
                        keepalive=s.sse_keepalive)

    async def body() -> Any:
        async with aclosing(events):
            async for event in events:
                if event is None:
                    yield SSE_KEEPALIVE
                    continue
                data = {"run_id": event.run_id, "seq": event.seq, "event_type": event.event_type,
                        "payload": event.payload}
                yield sse(event.event_type, data, event.seq)

    response = Response(body(), 200, headers=SSE_HEADERS, content_type=SSE)
    response.timeout = None  # an event stream lives as long as its run
    return response


# -- approvals ------------------------------------------------------------------------


async def list_approvals(call: Call) -> Any:
    q = call.query
    approvals = await call.pool.run(call.rt.approvals.list, run_id=q["run_id"],
                                    pending=q["pending"])
    return respond({"approvals": approvals})


async def get_approval(call: Call) -> Any:
    return respond(await call.pool.run(call.rt.approvals.get, call.ulid("approval_id")))


async def decide_approval(call: Call) -> Any:
    body = call.body
    decided = await call.rt.aio.decide(
        call.ulid("approval_id"), body["approved"], scope=body.get("scope", "once"),
        ttl_ms=body.get("ttl_ms"), reason=body.get("reason"),
    )
    return respond(decided)


# -- sessions -------------------------------------------------------------------------


async def list_sessions(call: Call) -> Any:
    q = call.query
    sessions = await call.pool.run(
        call.rt.sessions.list, principal=q["principal"], device_id=q["device_id"],
        channel=q["channel"], after_key=q["after_key"], limit=q["limit"],
        include_archived=q["include_archived"],
    )
    return respond({"sessions": sessions})


def _identity(body: dict[str, Any]) -> Identity:
    return Identity(body.get("principal", "user:local"), body.get("device_id", "local"),
                    body.get("channel"))


async def resolve_session(call: Call) -> Any:
    b = call.body
    selector = SessionSelector(b.get("session_id"), b.get("session_key"), b.get("session_label"),
                               b.get("require_existing", False), b.get("reset_session", False))
    resolution = await call.surface.ask(GATEWAY, ResolveSessionRequest(selector, _identity(b)))
    return respond({"session": resolution.session, "created": resolution.created,
                    "reset_applied": resolution.reset_applied,
                    "label_changed": resolution.label_changed})


async def archive_session(call: Call) -> Any:
    b = call.body
    if not b.get("session_id") and not b.get("session_key"):
        raise InvalidInput("session_id or session_key is required", details={"field": "session_id"})
    selector = SessionSelector(b.get("session_id"), b.get("session_key"))
    return respond(await call.surface.ask(GATEWAY, ArchiveSession(selector, _identity(b))))


# -- budgets, pricing, usage ----------------------------------------------------------


async def list_budgets(call: Call) -> Any:
    return respond({"policies": [p.to_record() for p in call.rt.budgets.list()]})


async def put_budget(call: Call) -> Any:
    policy = await call.surface.ask(BUDGET, PutPolicy(dict(call.body), call.actor_principal()))
    return respond(policy.to_record())


async def request_budget_override(call: Call) -> Any:
    policy_id = call.path["policy_id"]
    approval = await call.surface.ask(
        BUDGET, RequestOverride(policy_id, call.body.get("reason"), call.actor_principal()))
    return respond(approval, 202)


async def evaluate_budgets(call: Call) -> Any:
    q = call.query
    scope = UsageScope(q["principal"], q["session_id"], q["agent_id"])
    return respond(await call.pool.run(call.rt.budgets.evaluate, scope))


async def list_pricing(call: Call) -> Any:
    return respond({"pricing": [p.to_record() for p in call.rt.pricing.list()]})


async def put_pricing(call: Call) -> Any:
    record = await call.surface.ask(BUDGET, PutPricing(dict(call.body)))
    return respond(record.to_record())


async def usage_summary(call: Call) -> Any:
    q = call.query
    return respond(await call.pool.run(call.rt.usage.summary, q["start_at_unix_ms"],
                                       q["end_at_unix_ms"], q["bucket"]))


async def usage_models(call: Call) -> Any:
    q = call.query
    rows = await call.pool.run(call.rt.usage.model_mix, q["start_at_unix_ms"], q["end_at_unix_ms"])
    return respond({"models": rows})


async def usage_tools(call: Call) -> Any:
    q = call.query
    rows = await call.pool.run(call.rt.usage.tool_mix, q["start_at_unix_ms"], q["end_at_unix_ms"])
    return respond({"tools": rows})


# -- support bundles ------------------------------------------------------------------


async def create_support_bundle_job(call: Call) -> Any:
    body, rt, jobs = call.body, call.rt, call.surface.bundle_jobs
    job = jobs.create(rt.clock.now_ms(), body.get("max_bytes", DEFAULT_MAX_BYTES),
                      body.get("retain_jobs", DEFAULT_RETAIN_JOBS))
    # In the app's nursery: the job outlives this request (and is cancelled at shutdown).
    current_app.add_background_task(jobs.run, job, call.pool, rt, call.surface.token)
    return respond(job.to_record(), 202,
                   {"Location": f"/console/v1/support-bundle/jobs/{job.job_id}"})


async def list_support_bundle_jobs(call: Call) -> Any:
    return respond({"jobs": [job.to_record() for job in call.surface.bundle_jobs.list()]})


async def get_support_bundle_job(call: Call) -> Any:
    return respond(call.surface.bundle_jobs.get(call.ulid("job_id")).to_record())


# -- API tokens -----------------------------------------------------------------------


def _token_record(call: Call, record: ApiToken) -> dict[str, Any]:
    return {**record.to_record(), "state": record.state(call.rt.clock.now_ms())}


async def create_api_token(call: Call) -> Any:
    b, tokens = call.body, call.rt.api_tokens
    token, record = await call.pool.run(
        tokens.create, b["name"], b["scopes"], principal=b.get("principal"),
        expires_in_s=b.get("expires_in_s"),
        rate_limit_per_minute=b.get("rate_limit_per_minute", DEFAULT_RATE_LIMIT_PER_MINUTE))
    return respond({**_token_record(call, record), "token": token}, 201,
                   {"Location": f"/admin/v1/api-tokens/{record.token_id}",
                    "Cache-Control": "no-store"})


async def list_api_tokens(call: Call) -> Any:
    records = await call.pool.run(call.rt.api_tokens.list)
    return respond({"api_tokens": [_token_record(call, r) for r in records]})


async def get_api_token(call: Call) -> Any:
    record = await call.pool.run(call.rt.api_tokens.get, call.ulid("token_id"))
    return respond(_token_record(call, record))


async def revoke_api_token(call: Call) -> Any:
    record = await call.pool.run(call.rt.api_tokens.revoke, call.ulid("token_id"))
    return respond(_token_record(call, record))


# -- parameters and bodies ------------------------------------------------------------

_STR = 256
TOKEN_SCOPES = (*API_TOKEN_SCOPES, *SCOPE_GROUPS)
IDENTITY_FIELDS = (
    Field("principal", "string", max_length=_STR, description="default user:local"),
    Field("device_id", "string", max_length=_STR, description="default local"),
    Field("channel", "string", max_length=_STR),
)

CREATE_RUN = Body("CreateRunRequest", (
    Field("text", "string", required=True, description="the user message"),
    Field("session_key", "string", description="free-text session alias"),
    Field("session_id", "string", description="a session ULID"),
    Field("session_label", "string"),
    Field("principal", "string", max_length=_STR, description="default user:local"),
    Field("channel", "string", max_length=_STR),
    Field("run_id", "string", description="a ULID; repeating it is idempotent"),
))
CANCEL_RUN = Body("CancelRunRequest", (Field("reason", "string", max_length=512),))
DECISION = Body("ApprovalDecision", (
    Field("approved", "boolean", required=True),
    Field("scope", "string", enum=SCOPES, description="default once"),
    Field("ttl_ms", "integer", minimum=1, description="required for scope timeboxed"),
    Field("reason", "string", max_length=512),
))
RESOLVE_SESSION = Body("ResolveSessionRequest", (
    Field("session_key", "string"),
    Field("session_id", "string"),
    Field("session_label", "string"),
    *IDENTITY_FIELDS,
    Field("require_existing", "boolean"),
    Field("reset_session", "boolean"),
))
ARCHIVE_SESSION = Body("ArchiveSessionRequest", (
    Field("session_key", "string"),
    Field("session_id", "string"),
    *IDENTITY_FIELDS,
))
BUDGET_POLICY = Body("BudgetPolicyInput", (
    Field("policy_id", "string", description="generated when absent"),
    Field("scope_kind", "string", required=True,
          enum=("global", "principal", "session", "agent")),
    Field("scope_id", "string"),
    Field("metric_kind", "string", required=True, enum=("total_tokens", "estimated_cost_usd")),
    Field("interval_kind", "string", required=True,
          enum=("rolling_24h", "rolling_30d", "calendar_month", "run")),
    Field("action", "string", required=True, enum=("block", "approval_required", "warn")),
    Field("soft_limit_value", "number", description="tokens, or USD for estimated_cost_usd"),
    Field("hard_limit_value", "number", description="tokens, or USD for estimated_cost_usd"),
    Field("routing_mode_override", "string", enum=("suggest", "dry_run", "dry-run", "enforced")),
    Field("enabled", "boolean"),
))
SUPPORT_BUNDLE_JOB = Body("SupportBundleJobRequest", (
    Field("max_bytes", "integer", minimum=MIN_MAX_BYTES, maximum=MAX_BUNDLE_BYTES,
          description=f"size cap, default {DEFAULT_MAX_BYTES}, at most {MAX_BUNDLE_BYTES}"),
    Field("retain_jobs", "integer", minimum=1, maximum=MAX_RETAIN_JOBS,
          description=f"jobs kept in memory, default {DEFAULT_RETAIN_JOBS}, at most {MAX_RETAIN_JOBS}"),
))
CREATE_API_TOKEN = Body("ApiTokenRequest", (
    Field("name", "string", required=True, max_length=64,
          description="letters, digits, '.', '_', '-'; the default principal is api:<name>"),
    Field("scopes", "array", required=True, items="string", max_length=16,
          description=f"from {', '.join(TOKEN_SCOPES)}; compat.* stands for all of them"),
    Field("principal", "string", max_length=_STR,
          description="whom the token's runs belong to (default api:<name>)"),
    Field("expires_in_s", "integer", minimum=1, description="default: never expires"),
    Field("rate_limit_per_minute", "integer", minimum=1,
          description=f"default {DEFAULT_RATE_LIMIT_PER_MINUTE}"),
))
OVERRIDE = Body("OverrideRequest", (Field("reason", "string", max_length=512),))
PRICING = Body("PricingInput", (
    Field("pricing_id", "string", required=True),
    Field("provider_id", "string", required=True),
    Field("provider_kind", "string", required=True),
    Field("model_id", "string", required=True),
    Field("effective_from_unix_ms", "integer", minimum=0),
    Field("effective_to_unix_ms", "integer", minimum=0),
    Field("input_cost_per_million_usd", "number"),
    Field("output_cost_per_million_usd", "number"),
    Field("fixed_request_cost_usd", "number"),
    Field("source", "string"),
    Field("precision", "string"),
    Field("currency", "string"),
))

# -- the table --------------------------------------------------------------------------

A, H = "admin", "health"
ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "Service health (no auth)", H, "Health", public=True),
    Route("GET", "/livez", livez, "Liveness: the runtime is running", H, "Probe", errors=(503,)),
    Route("GET", "/readyz", readyz, "Readiness: the tree is up and the journal takes writes", H,
          "Probe", errors=(503,)),
    Route("GET", "/openapi.json", openapi_json, "This document", H, "OpenApi"),
    Route("GET", "/metrics", metrics, "Prometheus metrics (text exposition format 0.0.4)", H,
          "Metrics", content_types=(PROMETHEUS,)),
    Route("GET", "/admin/v1/status", status, "Runtime, actors with restart counts, journal head",
          A, "Status", query=(Param("verify", "boolean", default=False,
                                    description="also recompute the hash chain (slow)"),)),
    Route("GET", "/console/v1/diagnostics", diagnostics,
          "One redacted snapshot of every subsystem; hung actors are named, not waited for",
          A, "Diagnostics", query=(Param("deadline_ms", "integer", default=1000, minimum=10,
                                         description="how long actor probes may take (max 10000)"),)),
    Route("POST", "/console/v1/support-bundle/jobs", create_support_bundle_job,
          "Build a redacted support bundle in the background, under <state_dir>/support-bundles/",
          A, "SupportBundleJob", status=202, body=SUPPORT_BUNDLE_JOB),
    Route("GET", "/console/v1/support-bundle/jobs", list_support_bundle_jobs,
          "Support bundle jobs (in memory), newest first", A, "SupportBundleJobList"),
    Route("GET", "/console/v1/support-bundle/jobs/{job_id}", get_support_bundle_job,
          "One support bundle job", A, "SupportBundleJob", errors=(404,)),
    Route("POST", "/admin/v1/runs", create_run, "Send a message: start a run", "runs",
          "RunAccepted", status=202, body=CREATE_RUN, errors=(404, 409, 413, 503),
          headers=(Param(IDEMPOTENCY_HEADER, description="same key, same run"),)),
    Route("GET", "/admin/v1/runs", list_runs, "Recent runs, newest first", "runs", "RunList",
          query=(Param("state", enum=STATES), Param("session_id"), LIMIT)),
    Route("GET", "/admin/v1/runs/{run_id}", get_run, "Run status snapshot", "runs", "RunStatus",
          errors=(404,)),
    Route("GET", "/admin/v1/runs/{run_id}/tape", get_run_tape, "A page of the run's tape",
          "runs", "TapePage", errors=(404,), query=(
              Param("after_seq", "integer", default=-1, minimum=-1),
              Param("limit", "integer", default=100, minimum=1,
                    description="clamped to 1000; pages are also capped at 2 MiB"))),
    Route("POST", "/admin/v1/runs/{run_id}/cancel", cancel_run, "Request cancellation", "runs",
          "CancelReply", body=CANCEL_RUN, errors=(404,)),
    Route("GET", "/admin/v1/runs/{run_id}/events", run_events,
          "Run events as Server-Sent Events (resumable with Last-Event-ID)", "runs", "RunEvent",
          content_types=(SSE,), errors=(404,),
          query=(Param("after_seq", "integer", default=-1, minimum=-1,
                       description="start after this seq (Last-Event-ID wins)"),),
          headers=(Param(LAST_EVENT_ID, description="resume after this tape seq"),)),
    Route("GET", "/admin/v1/approvals", list_approvals, "Approvals, newest first", "approvals",
          "ApprovalList", query=(Param("pending", "boolean"), Param("run_id"))),
    Route("GET", "/admin/v1/approvals/{approval_id}", get_approval, "One approval", "approvals",
          "Approval", errors=(404,)),
    Route("POST", "/admin/v1/approvals/{approval_id}/decision", decide_approval,
          "Allow or deny a pending approval", "approvals", "Approval", body=DECISION,
          errors=(404, 409)),
    Route("GET", "/admin/v1/sessions", list_sessions, "Sessions of one identity", "sessions",
          "SessionList", query=(
              Param("principal", default="user:local"), Param("device_id", default="local"),
              Param("channel"), Param("after_key"), LIMIT,
              Param("include_archived", "boolean", default=False))),
    Route("POST", "/admin/v1/sessions/resolve", resolve_session, "Find or create a session",
          "sessions", "SessionResolution", body=RESOLVE_SESSION, errors=(404, 409)),
    Route("POST", "/admin/v1/sessions/archive", archive_session, "Archive a session",
          "sessions", "ArchiveReply", body=ARCHIVE_SESSION, errors=(404, 409)),
    Route("GET", "/admin/v1/budgets", list_budgets, "Budget policies", "budgets",
          "BudgetPolicyList"),
    Route("POST", "/admin/v1/budgets", put_budget, "Create or replace a budget policy",
          "budgets", "BudgetPolicy", body=BUDGET_POLICY),
    Route("POST", "/admin/v1/budgets/{policy_id}/override-request", request_budget_override,
          "Ask for an override (decide it as an approval)", "budgets", "Approval", status=202,
          body=OVERRIDE, errors=(404,)),
    Route("GET", "/admin/v1/budgets/evaluate", evaluate_budgets,
          "Evaluate the policies for a usage scope", "budgets", "BudgetEvaluation", query=(
              Param("principal", default="user:local"), Param("session_id"),
              Param("agent_id"))),
    Route("GET", "/admin/v1/pricing", list_pricing, "The pricing catalog", "budgets",
          "PricingList"),
    Route("POST", "/admin/v1/pricing", put_pricing, "Create or replace a pricing record",
          "budgets", "PricingRecord", body=PRICING),
    Route("GET", "/admin/v1/usage/summary", usage_summary, "Usage totals and timeline",
          "usage", "UsageSummary",
          query=(*WINDOW, Param("bucket", default="auto", enum=("auto", "hour", "day")))),
    Route("GET", "/admin/v1/usage/models", usage_models, "Usage per model", "usage",
          "UsageModels", query=WINDOW),
    Route("GET", "/admin/v1/usage/tools", usage_tools, "Tool proposals per tool", "usage",
          "UsageTools", query=WINDOW),
    Route("POST", "/admin/v1/api-tokens", create_api_token,
          "Create an API token (the token is in this answer only: store it now)", "access",
          "ApiTokenCreated", status=201, body=CREATE_API_TOKEN),
    Route("GET", "/admin/v1/api-tokens", list_api_tokens,
          "API tokens, newest first (never their values)", "access", "ApiTokenList"),
    Route("GET", "/admin/v1/api-tokens/{token_id}", get_api_token, "One API token", "access",
          "ApiToken", errors=(404,)),
    Route("POST", "/admin/v1/api-tokens/{token_id}/revoke", revoke_api_token,
          "Revoke an API token (at once; revoking twice keeps the first time)", "access",
          "ApiToken", errors=(404,)),
    Route("GET", "/v1/models", openai.list_models, "OpenAI-compatible: the served model",
          "openai", "ModelList", scope=MODELS_READ),
    Route("POST", "/v1/chat/completions", openai.chat_completions,
          "OpenAI-compatible chat completion: the last user message becomes a run", "openai",
          "ChatCompletion", body=openai.CHAT_COMPLETION, content_types=(JSON, SSE),
          errors=(404, 409, 413, 502, 503, 504), scope=CHAT_CREATE),
    *console.ROUTES,
)


def _api_token_schemas() -> dict[str, Any]:
    nullable_ms = {"type": ["integer", "null"]}
    record = obj({
        "token_id": {"type": "string"}, "name": {"type": "string"},
        "prefix": {"type": "string", "description": "the token's first characters, to tell "
                                                    "tokens apart (not enough to use one)"},
        "scopes": {"type": "array", "items": {"type": "string", "enum": list(TOKEN_SCOPES)}},
        "principal": {"type": "string"}, "rate_limit_per_minute": {"type": "integer"},
        "created_at_unix_ms": {"type": "integer"}, "expires_at_unix_ms": nullable_ms,
        "revoked_at_unix_ms": nullable_ms, "last_used_at_unix_ms": nullable_ms,
        "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
    }, required=["token_id", "name", "prefix", "scopes", "principal", "state"])
    return {
        "ApiToken": record,
        "ApiTokenCreated": {"allOf": [ref("ApiToken"), obj(
            {"token": {"type": "string", "description": "the token itself, shown once"}},
            required=["token"])]},
        "ApiTokenList": obj({"api_tokens": array_of("ApiToken")}, required=["api_tokens"]),
    }


def schemas() -> dict[str, Any]:
    """Component schemas of every response (request bodies come from the table)."""
    from palyra.records import Approval, Session, TapeEvent

    out = dataclass_schemas(Run, TapeEvent, Approval, Session)
    obj_any = {"type": "object"}
    out.update({
        "Error": obj({"error": obj({"code": {"type": "string"}, "message": {"type": "string"},
                                    "details": obj_any}, required=["code", "message", "details"])},
                     required=["error"]),
        "Health": obj({"service": {"type": "string"}, "status": {"type": "string"},
                       "version": {"type": "string"}, "uptime_seconds": {"type": "number"}},
                      required=["service", "status", "version", "uptime_seconds"]),
        "Probe": obj({"status": {"type": "string"}, "checks": obj_any}, required=["status"]),
        "OpenApi": {"type": "object", "description": "an OpenAPI 3.1 document"},
        "Status": obj({"service": {"type": "string"}, "version": {"type": "string"},
                       "pid": {"type": "integer"}, "state_dir": {"type": "string"},
                       "uptime_seconds": {"type": "number"}, "runtime": obj_any,
                       "actors": {"type": "array", "items": obj_any},
                       "restarts_total": {"type": "integer"}, "journal": obj_any,
                       "http": obj_any}),
        "Diagnostics": obj({"generated_at_unix_ms": {"type": "integer"}, "supervision": obj_any,
                            "journal": obj_any, "runs": obj_any, "background": obj_any,
                            "incidents": obj_any, "provider": obj_any, "config": obj_any},
                           required=["supervision", "journal"]),
        "SupportBundleJob": obj({
            "job_id": {"type": "string"}, "state": {"type": "string", "enum": list(JOB_STATES)},
            "requested_at_unix_ms": {"type": "integer"},
            "started_at_unix_ms": {"type": ["integer", "null"]},
            "completed_at_unix_ms": {"type": ["integer", "null"]},
            "output_path": {"type": ["string", "null"]}, "size_bytes": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "truncated": {"type": "array", "items": {"type": "string"}},
        }, required=["job_id", "state", "requested_at_unix_ms"]),
        "SupportBundleJobList": obj({"jobs": array_of("SupportBundleJob")}, required=["jobs"]),
        "RunAccepted": obj({"run_id": {"type": "string"}, "session_id": {"type": "string"},
                            "session_created": {"type": "boolean"}},
                           required=["run_id", "session_id", "session_created"]),
        "RunList": obj({"runs": array_of("Run")}, required=["runs"]),
        "RunStatus": {"allOf": [ref("Run"), obj({"identity": obj_any})]},
        "TapePage": obj({
            "run_id": {"type": "string"}, "requested_after_seq": {"type": "integer"},
            "limit": {"type": "integer"}, "max_response_bytes": {"type": "integer"},
            "returned_bytes": {"type": "integer"},
            "next_after_seq": {"type": ["integer", "null"]}, "events": array_of("TapeEvent"),
        }, required=["run_id", "requested_after_seq", "limit", "max_response_bytes",
                     "returned_bytes", "next_after_seq", "events"]),
        "CancelReply": obj({"run_id": {"type": "string"}, "cancel_requested": {"type": "boolean"},
                            "state": {"type": "string"}, "reason": {"type": "string"}}),
        "RunEvent": obj({"run_id": {"type": "string"}, "seq": {"type": ["integer", "null"]},
                         "event_type": {"type": "string"}, "payload": obj_any},
                        description="the data of one SSE event (id: seq, event: event_type)"),
        "ApprovalList": obj({"approvals": array_of("Approval")}, required=["approvals"]),
        "SessionList": obj({"sessions": array_of("Session")}, required=["sessions"]),
        "SessionResolution": obj({"session": ref("Session"), "created": {"type": "boolean"},
                                  "reset_applied": {"type": "boolean"},
                                  "label_changed": {"type": "boolean"}}),
        "ArchiveReply": obj({"session_id": {"type": "string"}, "cleaned": {"type": "boolean"}}),
        "BudgetPolicy": {"type": "object", "description": "UsageBudgetPolicyRecord"},
        "BudgetPolicyList": obj({"policies": array_of("BudgetPolicy")}, required=["policies"]),
        "BudgetEvaluation": {"type": "object"},
        "PricingRecord": {"type": "object", "description": "UsagePricingRecord"},
        "PricingList": obj({"pricing": array_of("PricingRecord")}, required=["pricing"]),
        "UsageSummary": {"type": "object", "description": "UsageSummaryEnvelope"},
        "UsageModels": obj({"models": {"type": "array", "items": obj_any}}),
        "UsageTools": obj({"tools": {"type": "array", "items": obj_any}}),
        **_api_token_schemas(),
        **openai.schemas(),
        **console.schemas(),
    })
    return out
