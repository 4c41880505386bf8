"""Auth on every route, the error envelope, health probes and the OpenAPI document."""

from __future__ import annotations

import stat

import pytest

import palyra
from palyra.ids import new_ulid
from surfaces.http import ROUTES, token_path
from surfaces.http.errors import STATUS_BY_ERROR, from_exception, status_for
from tests.http.conftest import concrete, serving

pytestmark = pytest.mark.trio


async def test_healthz_is_public_and_reports_the_service(api):
    reply = await api.get("/healthz", auth=False)
    assert reply.status == 200
    body = reply.json
    assert body["service"] == "palyrad" and body["status"] == "ok"
    assert body["version"] and body["uptime_seconds"] >= 0


async def test_every_route_but_healthz_requires_the_admin_token(api):
    assert [r.path for r in ROUTES if r.public] == ["/healthz"]
    for route in ROUTES:
        if route.public:
            continue
        path = concrete(route.path)
        for auth in (False, "Bearer wrong-token", f"Basic {api.token}", "Bearer"):
            reply = await api.call(route.method, path, auth=auth, json={} if route.body else None)
            assert reply.status == 401, (route.method, route.path, auth, reply)
            assert reply.error["code"] == "unauthenticated"
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    # unknown routes do not reveal themselves without the token either
    assert (await api.get("/admin/v1/nope", auth=False)).status == 401


async def test_api_tokens_open_exactly_the_routes_with_their_scope(api):
    """The table says which routes take an API token (``scope``); every other route
    answers a valid API token with 403 admin_token_required, before its handler runs."""
    scoped = {r.path: r.scope for r in ROUTES if r.scope}
    assert scoped == {"/v1/models": "models.read", "/v1/chat/completions": "chat.create"}
    everything, _ = api.rt.api_tokens.create("all", ["compat.*"])
    nothing, _ = api.rt.api_tokens.create("models-only", ["models.read"])
    for route in ROUTES:
        if route.public:
            continue
        path = concrete(route.path)
        body = {} if route.body else None
        reply = await api.call(route.method, path, auth=f"Bearer {everything}", json=body)
        if route.scope is None:
            assert reply.status == 403, (route.path, reply)
            assert reply.error["code"] == "admin_token_required"
        else:
            assert reply.status not in (401, 403), (route.path, reply)
            if route.scope != "models.read":
                reply = await api.call(route.method, path, auth=f"Bearer {nothing}", json=body)
                assert reply.status == 403 and reply.error["code"] == "missing_scope", reply
                assert reply.error["details"]["scope"] == route.scope
        made_up = "Bearer palyra_" + "A" * 43
        reply = await api.call(route.method, path, auth=made_up, json=body)
        assert reply.status == 401 and reply.error["code"] == "invalid_api_token", reply


async def test_admin_token_is_generated_once_with_mode_0600(tmp_path):
    state = tmp_path / "state"
    async with serving(state) as api:
        first = api.token
    path = token_path(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first and len(first) >= 43
    async with serving(state) as api:
        assert api.token == first
        assert (await api.get("/admin/v1/runs")).status == 200


async def test_malformed_bodies_and_parameters_are_400_naming_the_field(api):
    cases = [
        (await api.post("/admin/v1/runs", data=b"{not json"), "body"),
        (await api.post("/admin/v1/runs", data=b"[1, 2]"), "body"),
        (await api.post("/admin/v1/runs", {"text": 5}), "text"),
        (await api.post("/admin/v1/runs", {"text": "x", "colour": "red"}), "colour"),
        (await api.post("/admin/v1/runs", {}), "text"),
        (await api.post("/admin/v1/runs", {"text": "x", "run_id": "not-a-ulid"}), "run_id"),
        (await api.get("/admin/v1/runs", query={"limt": "3"}), "limt"),
        (await api.get("/admin/v1/runs", query={"limit": "many"}), "limit"),
        (await api.get("/admin/v1/runs", query={"state": "sleeping"}), "state"),
        (await api.get("/admin/v1/runs/not-a-ulid"), "run_id"),
        (await api.post(f"/admin/v1/approvals/{new_ulid()}/decision", {"approved": "yes"}),
         "approved"),
    ]
    for reply, field in cases:
        assert reply.status == 400, (field, reply)
        error = reply.error
        assert error["code"] == "invalid_argument"
        assert error["details"]["field"] == field, error


async def test_unknown_routes_methods_and_records_get_the_envelope(api):
    reply = await api.get("/admin/v1/nothing-here")
    assert reply.status == 404 and reply.error["code"] == "not_found"
    reply = await api.call("DELETE", "/admin/v1/runs")
    assert reply.status == 405 and reply.error["code"] == "method_not_allowed"
    reply = await api.get(f"/admin/v1/runs/{new_ulid()}")
    assert reply.status == 404 and reply.error["code"] == "not_found"


async def test_bodies_over_64_kib_are_413(api):
    big = {"text": "x" * (64 * 1024)}
    reply = await api.post("/admin/v1/runs", big)
    assert reply.status == 413
    assert reply.error["code"] == "payload_too_large"
    assert reply.error["details"]["limit_bytes"] == 65536
    # without a Content-Length the limit holds while the body streams in
    async with api.client.request("/admin/v1/runs", method="POST",
                                  headers=api.headers()) as conn:
        for _ in range(5):
            await conn.send(b"x" * 16 * 1024)
        await conn.send_complete()
    assert conn.status_code == 413


async def test_the_body_cap_and_sse_keepalive_come_from_the_http_config(tmp_path):
    config = {"http": {"max_body_bytes": 2048, "sse_keepalive_s": 0.5}}
    async with serving(tmp_path / "state", config) as api:
        reply = await api.post("/admin/v1/runs", {"text": "x" * 4096})
        assert reply.status == 413 and reply.error["details"]["limit_bytes"] == 2048
        assert (await api.post("/admin/v1/runs", {"text": "small"})).status in (200, 201, 202)
        assert api.surface.sse_keepalive == 0.5


async def test_every_palyra_error_has_a_status_and_unexpected_errors_stay_generic(api, monkeypatch):
    for cls, status in STATUS_BY_ERROR.items():
        assert status_for(cls("m")) == status
    assert status_for(palyra.BudgetExceeded("over")) == 402
    assert status_for(palyra.IdentityMismatch("x")) == 409
    status, body = from_exception(palyra.JournalError("disk details"))
    assert status == 500 and body["error"]["message"] == "internal error"

    def boom(**_):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.rt, "runs", boom)
    reply = await api.get("/admin/v1/runs")
    assert reply.status == 500
    error = reply.error
    assert error["code"] == "internal" and "secret" not in reply.text
    assert palyra.PalyraError  # the envelope shape is PalyraError.envelope's
    assert len(error["details"]["error_id"]) == 26


async def test_livez_readyz_and_status(api):
    assert (await api.get("/livez")).json == {"status": "alive"}
    ready = await api.get("/readyz")
    assert ready.status == 200, ready
    assert ready.json["checks"]["journal"] == {"ok": True, "cached": False}
    again = await api.get("/readyz")
    assert again.json["checks"]["journal"]["cached"] is True  # one probe write per 5 s
    assert len(api.rt.recent_events(50, kind="health.probe")) == 1

    status = (await api.get("/admin/v1/status")).json
    assert status["service"] == "palyrad" and status["runtime"]["running"] is True
    names = {row["name"]: row for row in status["actors"]}
    assert {"journal", "gateway", "budget"} <= set(names)
    assert all("restarts" in row for row in status["actors"])
    assert status["journal"]["head_seq"] >= 1 and status["journal"]["verified"] is None
    verified = (await api.get("/admin/v1/status", query={"verify": "true"})).json["journal"]
    assert verified["verified"]["ok"] is True


async def test_readyz_reports_a_dead_actor(api):
    api.rt.services.table.update("gateway", ref=None)  # as while the supervisor restarts it
    reply = await api.get("/readyz")
    assert reply.status == 503
    assert "root/core/gateway" in reply.json["checks"]["tree"]["down"]


async def test_openapi_documents_exactly_the_registered_routes(api):
    doc = (await api.get("/openapi.json")).json
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    registered = set()
    for rule in api.app.url_map.iter_rules():
        path = rule.rule.replace("<", "{").replace(">", "}")
        registered |= {(path, m) for m in rule.methods if m not in ("HEAD", "OPTIONS")}
    assert documented == registered == {(r.path, r.method) for r in ROUTES}
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in doc["paths"]["/admin/v1/runs"]["post"]["responses"]
    run_events = doc["paths"]["/admin/v1/runs/{run_id}/events"]["get"]
    assert "text/event-stream" in run_events["responses"]["200"]["content"]
    schemas = doc["components"]["schemas"]

    def refs(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for target in refs(doc):
        assert target.removeprefix("#/components/schemas/") in schemas, target
    body = schemas["CreateRunRequest"]
    assert body["required"] == ["text"] and body["additionalProperties"] is False
    # rate limits and the SSE slow-client policy are documented; /metrics is plain text
    description = doc["info"]["description"]
    assert "429" in description and "Retry-After" in description
    assert "slow" in description and "tape" in description and "Last-Event-ID" in description
    for route in ROUTES:
        responses = doc["paths"][route.path][route.method.lower()]["responses"]
        assert ("429" in responses) is (not route.public), route.path
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]


async def test_responses_close_their_connection_once_shutdown_began(api):
    assert "Connection" not in (await api.get("/livez")).headers
    api.surface.draining = True
    assert (await api.get("/livez")).headers["Connection"] == "close"
    assert (await api.get("/healthz", auth=False)).headers["Connection"] == "close"
    assert (await api.get("/livez", auth=False)).headers["Connection"] == "close"


async def test_diagnostics_snapshot_and_its_bad_input(api):
    reply = await api.get("/console/v1/diagnostics", query={"deadline_ms": "200"})
    assert reply.status == 200, reply
    assert reply.json["supervision"]["unresponsive"] == []
    assert {"journal", "gateway"} <= {a["name"] for a in reply.json["supervision"]["actors"]}
    assert reply.json["journal"]["events"] >= 1
    bad = await api.get("/console/v1/diagnostics", query={"deadline_ms": "nope"})
    assert bad.status == 400 and "deadline_ms" in str(bad.json["error"])
