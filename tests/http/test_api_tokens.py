"""API tokens over HTTP on the real app and runtime: create, use, scope, revoke, expire,
rate limits per token, durability, and no plaintext at rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from palyra.clock import ManualClock
from palyra.runtime import Runtime
from surfaces.http import create_app
from surfaces.http.ratelimit import RateLimiter, RateLimits
from tests.http.conftest import GENEROUS, Api, merged, parse_sse, serving

pytestmark = pytest.mark.trio

CHAT = {"model": "deterministic", "messages": [{"role": "user", "content": "hello tokens"}]}


async def make(api: Api, **body) -> dict:
    reply = await api.post("/admin/v1/api-tokens", {"name": "ci", "scopes": ["compat.*"], **body})
    assert reply.status == 201, reply
    return reply.json


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_created_token_is_shown_once_and_listed_without_its_value(api):
    made = await make(api, rate_limit_per_minute=30)
    token = made["token"]
    assert token.startswith("palyra_") and len(token) == 50
    assert made["prefix"] == token[:12] and made["state"] == "active"
    assert made["scopes"] == ["models.read", "chat.create"] and made["principal"] == "api:ci"
    assert made["rate_limit_per_minute"] == 30
    listed = (await api.get("/admin/v1/api-tokens")).json["api_tokens"]
    assert [t["token_id"] for t in listed] == [made["token_id"]]
    one = (await api.get(f"/admin/v1/api-tokens/{made['token_id']}")).json
    for record in (*listed, one):
        assert "token" not in record and token not in str(record)
    # the creation is journalled with the prefix, never the token
    [event] = api.rt.recent_events(5, kind="api_token.created")
    assert made["token_id"] in event["payload_json"] and token not in event["payload_json"]


async def test_bad_create_requests_are_400_naming_the_field(api):
    for body, field in [({"name": "x", "scopes": ["root"]}, "scopes"),
                        ({"name": "x", "scopes": []}, "scopes"),
                        ({"name": "x", "scopes": [7]}, "scopes"),
                        ({"name": "no spaces", "scopes": ["chat.create"]}, "name"),
                        ({"name": "x", "scopes": ["chat.create"], "principal": ""}, "principal"),
                        ({"name": "x", "scopes": ["chat.create"], "expires_in_s": 0}, "expires_in_s"),
                        ({"name": "x", "scopes": ["chat.create"], "expires_in_s": 10**12},
                         "expires_in_s")]:
        reply = await api.post("/admin/v1/api-tokens", body)
        assert reply.status == 400, (body, reply)
        assert reply.error["details"]["field"] == field


async def test_token_lists_models_and_its_completions_run_as_its_principal(api):
    token = (await make(api, principal="team:ci"))["token"]
    models = await api.get("/v1/models", auth=bearer(token))
    assert models.status == 200 and models.json["data"][0]["id"] == "deterministic"
    # "user" cannot move the run to another principal
    reply = await api.post("/v1/chat/completions", {**CHAT, "user": "user:root"},
                           auth=bearer(token))
    assert reply.status == 200, reply
    assert reply.json["choices"][0]["message"]["content"] == "hello tokens"
    run = (await api.get(f"/admin/v1/runs/{reply.headers['X-Palyra-Run-Id']}")).json
    assert run["identity"]["principal"] == "team:ci"
    streamed = await api.stream("/v1/chat/completions", method="POST",
                                body={**CHAT, "stream": True},
                                headers={"Authorization": bearer(token)})
    assert streamed.status == 200, streamed
    chunks = [e["data"] for e in parse_sse(streamed.text)]
    assert chunks[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) \
        == "hello tokens"
    run_id = streamed.headers["X-Palyra-Run-Id"]
    assert (await api.get(f"/admin/v1/runs/{run_id}")).json["identity"]["principal"] == "team:ci"


async def test_missing_scope_is_403_naming_it(api):
    token = (await make(api, scopes=["models.read"]))["token"]
    assert (await api.get("/v1/models", auth=bearer(token))).status == 200
    reply = await api.post("/v1/chat/completions", CHAT, auth=bearer(token))
    assert reply.status == 403
    assert reply.error["code"] == "missing_scope" and reply.error["details"]["scope"] == "chat.create"


async def test_api_token_on_an_admin_route_is_403_admin_token_required(api):
    token = (await make(api))["token"]
    for method, path in [("GET", "/admin/v1/runs"), ("GET", "/admin/v1/api-tokens"),
                         ("POST", "/admin/v1/api-tokens")]:
        reply = await api.call(method, path, auth=bearer(token),
                               json={"name": "evil", "scopes": ["compat.*"]})
        assert reply.status == 403 and reply.error["code"] == "admin_token_required", reply
    assert len((await api.get("/admin/v1/api-tokens")).json["api_tokens"]) == 1


async def test_revoked_unknown_and_malformed_tokens_are_401(api):
    made = await make(api)
    token = made["token"]
    assert (await api.get("/v1/models", auth=bearer(token))).status == 200  # now cached
    revoked = await api.post(f"/admin/v1/api-tokens/{made['token_id']}/revoke")
    assert revoked.status == 200 and revoked.json["state"] == "revoked"
    for credential in (token, "palyra_" + "x" * 43, "palyra_short", token[:-1] + "A"):
        reply = await api.get("/v1/models", auth=bearer(credential))
        assert reply.status == 401, (credential, reply)
        assert reply.error["code"] == "invalid_api_token"
        assert reply.error["message"] == "invalid, revoked or expired API token"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    again = await api.post(f"/admin/v1/api-tokens/{made['token_id']}/revoke")
    assert again.json["revoked_at_unix_ms"] == revoked.json["revoked_at_unix_ms"]
    missing = await api.post("/admin/v1/api-tokens/01HF7YAT00QPM1080C0N7ZSEMM/revoke")
    assert missing.status == 404


async def test_expired_token_is_401(tmp_path: Path):
    clock = ManualClock()
    rt = Runtime.start(tmp_path / "state", merged(None), clock=clock)
    try:
        app = create_app(rt, rate_limits=GENEROUS)
        async with app.test_app():
            api = Api(app)
            made = await make(api, expires_in_s=60)
            assert (await api.get("/v1/models", auth=bearer(made["token"]))).status == 200
            clock.advance(61)
            reply = await api.get("/v1/models", auth=bearer(made["token"]))
            assert reply.status == 401 and reply.error["code"] == "invalid_api_token"
            record = (await api.get(f"/admin/v1/api-tokens/{made['token_id']}")).json
            assert record["state"] == "expired"
    finally:
        rt.stop()


async def test_each_token_has_its_own_per_minute_bucket(tmp_path: Path):
    now = [0.0]
    limiter = RateLimiter(RateLimits(per_s=1e6, loopback_per_s=1e6, token_per_s=1e6),
                          clock=lambda: now[0])
    async with serving(tmp_path / "state", rate_limits=limiter) as api:
        slow = (await make(api, rate_limit_per_minute=2))["token"]
        other = (await make(api, rate_limit_per_minute=2))["token"]
        for _ in range(2):
            assert (await api.get("/v1/models", auth=bearer(slow))).status == 200
        limited = await api.get("/v1/models", auth=bearer(slow))
        assert limited.status == 429 and limited.error["details"]["scope"] == "token"
        assert limited.headers["Retry-After"] == "30"  # 2/min: one every 30 s
        assert (await api.get("/v1/models", auth=bearer(other))).status == 200
        assert (await api.get("/admin/v1/status")).status == 200  # the admin's bucket too
        now[0] += 30
        assert (await api.get("/v1/models", auth=bearer(slow))).status == 200


async def test_tokens_and_revocations_survive_a_restart_and_no_plaintext_is_stored(tmp_path):
    state = tmp_path / "state"
    async with serving(state) as api:
        kept = await make(api)
        gone = await make(api)
        await api.post(f"/admin/v1/api-tokens/{gone['token_id']}/revoke")
        assert (await api.get("/v1/models", auth=bearer(kept["token"]))).status == 200
    async with serving(state) as api:
        assert (await api.get("/v1/models", auth=bearer(kept["token"]))).status == 200
        assert (await api.get("/v1/models", auth=bearer(gone["token"]))).status == 401
        record = (await api.get(f"/admin/v1/api-tokens/{kept['token_id']}")).json
        assert record["last_used_at_unix_ms"] is not None
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for made in (kept, gone):
                assert made["token"].encode() not in data, path
