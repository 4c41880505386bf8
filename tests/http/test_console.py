"""Console routes over HTTP: background tasks, incidents, learning, memory, usage export."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from palyra.ids import new_ulid
from tests.http.conftest import STEP, TOOLS, Follower, serving

pytestmark = pytest.mark.trio


async def eventually(read: Callable[[], Awaitable[Any]]) -> Any:
    """``read()`` once it is truthy. For state written by an actor's asynchronous journal
    write (self-healing, reflection), which no stream announces."""
    with trio.fail_after(STEP):
        while not (value := await read()):
            await trio.sleep(0.02)
    return value


def field_of(reply: Any) -> str:
    assert reply.status == 400, reply
    return reply.error["details"]["field"]


# -- background tasks -----------------------------------------------------------------


async def test_tasks_create_read_and_control(api):
    later = api.rt.clock.now_ms() + 3_600_000  # held back: the queue must not run it meanwhile
    created = await api.post("/admin/v1/tasks", {
        "text": "tidy up", "session_key": "bg", "principal": "user:ops", "priority": 99,
        "not_before_unix_ms": later})
    assert created.status == 201, created
    task = created.json
    task_id = task["task_id"]
    assert created.headers["Location"] == f"/admin/v1/tasks/{task_id}"
    assert (task["state"], task["task_kind"], task["priority"]) == ("queued", "background_prompt", 10)
    assert task["owner_principal"] == "user:ops" and task["not_before_unix_ms"] == later

    assert (await api.get(f"/admin/v1/tasks/{task_id}")).json == task
    listed = (await api.get("/admin/v1/tasks", query={"principal": "user:ops",
                                                      "state": "queued"})).json["tasks"]
    assert [t["task_id"] for t in listed] == [task_id]
    assert (await api.get("/admin/v1/tasks", query={"state": "paused"})).json == {"tasks": []}
    assert (await api.get("/admin/v1/tasks", query={"principal": "user:local"})).json == {"tasks": []}

    base = f"/admin/v1/tasks/{task_id}"
    assert (await api.post(f"{base}/pause")).json["state"] == "paused"
    again = await api.post(f"{base}/pause")
    assert again.status == 409 and again.error["code"] == "invalid_state_transition", again
    assert (await api.post(f"{base}/resume")).json["state"] == "queued"
    assert (await api.post(f"{base}/cancel")).json["state"] == "cancelled"
    assert (await api.post(f"{base}/cancel")).status == 409  # terminal: no second cancel
    retried = (await api.post(f"{base}/retry")).json
    assert (retried["state"], retried["attempt_count"]) == ("queued", 0)

    missing = new_ulid()
    for reply in (await api.get(f"/admin/v1/tasks/{missing}"),
                  await api.post(f"/admin/v1/tasks/{missing}/pause")):
        assert reply.status == 404 and reply.error["code"] == "not_found", reply
    assert field_of(await api.get("/admin/v1/tasks/nope")) == "task_id"
    assert field_of(await api.post("/admin/v1/tasks/nope/retry")) == "task_id"


async def test_task_create_and_list_validation_names_the_field(api):
    cases = [
        ({}, "text"),
        ({"text": "x", "priority": "high"}, "priority"),
        ({"text": "x", "task_kind": "reflection"}, "task_kind"),  # internal-only
        ({"text": "x", "task_kind": "juggling"}, "task_kind"),
        ({"text": "x", "session_id": "not-a-ulid"}, "session_id"),
        ({"text": "x", "expires_at_unix_ms": 5}, "expires_at_unix_ms"),  # in the past
        ({"text": "x", "budget_tokens": 2**62}, "budget_tokens"),
        ({"text": "x", "colour": "red"}, "colour"),
    ]
    for body, field in cases:
        assert field_of(await api.post("/admin/v1/tasks", body)) == field, body
    assert field_of(await api.get("/admin/v1/tasks", query={"state": "asleep"})) == "state"


# -- incidents ------------------------------------------------------------------------

# A pending approval is stale after 1 ms; the loop runs only when asked (POST …/check).
HEALING = {**TOOLS, "healing": {"loop_interval_ms": 600_000, "approval_stale_ms": 1}}


async def test_incidents_check_list_and_attempts(tmp_path):
    async with serving(tmp_path / "state", HEALING) as api:
        assert (await api.get("/admin/v1/incidents")).json == {"incidents": []}
        run_id = await api.send('x\n@tool palyra.echo {"text": "hey"}')
        follower = Follower(api, run_id)
        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follower.run)
                await follower.wait_for("tool_approval_request")
                checked = await api.post("/admin/v1/incidents/check")
                assert checked.status == 200, checked
                assert checked.json["loops_total"] >= 1

                async def active() -> list[dict[str, Any]]:
                    reply = await api.get("/admin/v1/incidents", query={"active": "true"})
                    return reply.json["incidents"]

                [incident] = await eventually(active)
                assert incident["domain"] == "approval" and incident["state"] != "resolved"
                attempts = (await api.get("/admin/v1/incidents/attempts",
                                          query={"incident_id": incident["incident_id"]})).json
                assert all(a["incident_id"] == incident["incident_id"]
                           for a in attempts["attempts"])
                [approval] = (await api.get("/admin/v1/approvals",
                                            query={"pending": "true"})).json["approvals"]
                await api.post(f"/admin/v1/approvals/{approval['approval_id']}/decision",
                               {"approved": False})
        assert (await api.get("/admin/v1/incidents/attempts",
                              query={"incident_id": "incident_none"})).json == {"attempts": []}
        assert field_of(await api.get("/admin/v1/incidents", query={"active": "maybe"})) == "active"
        assert field_of(await api.get("/admin/v1/incidents", query={"limit": "0"})) == "limit"


# -- learning -------------------------------------------------------------------------

LEARNING = {"learning": {"sampling_percent": 100, "cooldown_ms": 0}}


async def test_learning_candidates_list_and_review(tmp_path):
    async with serving(tmp_path / "state", LEARNING) as api:
        run_id = await api.send("I prefer concise answers")
        await api.events(run_id)

        async def queued() -> list[dict[str, Any]]:
            reply = await api.get("/admin/v1/learning/candidates", query={"status": "proposed"})
            return reply.json["candidates"]

        [cand] = await eventually(queued)
        assert (cand["candidate_kind"], cand["run_id"]) == ("preference", run_id)
        listed = await api.get("/admin/v1/learning/candidates", query={
            "principal": "user:local", "session_id": cand["session_id"]})
        assert [c["candidate_id"] for c in listed.json["candidates"]] == [cand["candidate_id"]]
        assert (await api.get("/admin/v1/learning/candidates",
                              query={"principal": "user:other"})).json == {"candidates": []}

        path = f"/admin/v1/learning/candidates/{cand['candidate_id']}/review"
        assert field_of(await api.post(path, {"status": "bogus"})) == "status"
        assert field_of(await api.post(path, {})) == "status"
        other = await api.post(path, {"status": "accepted", "principal": "user:other"})
        assert other.status == 404  # someone else's candidate does not exist for them
        accepted = await api.post(path, {"status": "approved", "reason": "yes"})
        assert accepted.status == 200, accepted
        assert (accepted.json["status"], accepted.json["reviewed_by"]) == ("accepted", "user:local")
        assert (await api.post(path, {"status": "accepted"})).status == 409
        missing = await api.post(f"/admin/v1/learning/candidates/{new_ulid()}/review",
                                 {"status": "accepted"})
        assert missing.status == 404 and missing.error["code"] == "not_found"
        assert field_of(await api.get("/admin/v1/learning/candidates",
                                      query={"status": "nope"})) == "status"


# -- memory ---------------------------------------------------------------------------


async def test_memory_ingest_get_search_delete_scoped_by_principal(api):
    ingested = await api.post("/admin/v1/memory", {
        "text": "the deploy window is Tuesday at 10:00 UTC", "principal": "user:ops",
        "tags": ["ops"], "confidence": 0.9})
    assert ingested.status == 201, ingested
    item = ingested.json
    path = f"/admin/v1/memory/{item['memory_id']}"
    assert ingested.headers["Location"] == path
    assert (item["scope"], item["source"], item["tags"]) == ("principal", "manual", ["ops"])

    assert (await api.get(path, query={"principal": "user:ops"})).json == item
    assert (await api.get(path)).status == 404  # user:local's view: not there

    hits = (await api.post("/admin/v1/memory/search", {"query": "deploy window",
                                                       "principal": "user:ops"})).json["hits"]
    assert [h["item"]["memory_id"] for h in hits] == [item["memory_id"]]
    assert hits[0]["score"] > 0 and "deploy" in hits[0]["snippet"]
    assert (await api.post("/admin/v1/memory/search", {"query": "deploy window"})).json == {
        "hits": []}

    assert (await api.call("DELETE", path)).status == 404  # not user:local's to delete
    deleted = await api.call("DELETE", path, query={"principal": "user:ops"})
    assert deleted.json == {"memory_id": item["memory_id"], "deleted": True}
    assert (await api.call("DELETE", path, query={"principal": "user:ops"})).status == 404
    assert (await api.get(path, query={"principal": "user:ops"})).status == 404
    assert field_of(await api.get("/admin/v1/memory/nope")) == "memory_id"


async def test_memory_bad_bodies_name_the_field(api):
    cases = [
        ("/admin/v1/memory", {}, "text"),
        ("/admin/v1/memory", {"text": "   "}, "text"),
        ("/admin/v1/memory", {"text": "x", "scope": "galaxy"}, "scope"),
        ("/admin/v1/memory", {"text": "x", "scope": "session"}, "scope"),  # needs a session
        ("/admin/v1/memory", {"text": "x", "session_id": "s1"}, "session_id"),
        ("/admin/v1/memory", {"text": "x", "tags": [1]}, "tags"),
        ("/admin/v1/memory", {"text": "x", "confidence": 7}, "confidence"),
        ("/admin/v1/memory", {"text": "x", "principal": ""}, "principal"),
        ("/admin/v1/memory/search", {"query": 3}, "query"),
        ("/admin/v1/memory/search", {"query": "x", "min_score": 2}, "min_score"),
        ("/admin/v1/memory/search", {"query": "x", "limit": 0}, "limit"),
    ]
    for path, body, field in cases:
        assert field_of(await api.post(path, body)) == field, body


# -- usage ----------------------------------------------------------------------------


async def test_usage_export_csv_and_json_match_the_runs(api):
    runs = {}
    for text, principal in (("alpha beta gamma", "user:local"), ("one two", "=cmd|evil")):
        run_id = await api.send(text, principal=principal)
        await api.events(run_id)
        runs[run_id] = principal

    reply = await api.get("/admin/v1/usage/export", query={"format": "csv"})
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/csv")
    assert reply.headers["Content-Disposition"].startswith('attachment; filename="palyra-usage-runs')
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert {r["run_id"] for r in rows} == set(runs)
    by_id = {r["run_id"]: r for r in rows}
    first = next(iter(runs))
    assert by_id[first]["state"] == "done" and by_id[first]["total_tokens"] == "6"
    assert int(by_id[first]["prompt_tokens"]) + int(by_id[first]["completion_tokens"]) == 6
    assert by_id[first]["model_id"] == "deterministic"
    # a cell a spreadsheet would run as a formula is quoted with a leading apostrophe
    assert {r["principal"] for r in rows} == {"user:local", "'=cmd|evil"}

    data = (await api.get("/admin/v1/usage/export")).json
    assert data["columns"] == reply.text.splitlines()[0].split(",")
    assert [r["run_id"] for r in data["rows"]] == [r["run_id"] for r in rows]
    assert data["rows"][0]["total_tokens"] == 6

    timeline = (await api.get("/admin/v1/usage/export", query={"dataset": "timeline"})).json
    assert sum(bucket["runs"] for bucket in timeline["rows"]) == 2
    for query, field in (({"format": "xml"}, "format"), ({"dataset": "agents"}, "dataset"),
                         ({"start_at_unix_ms": "9", "end_at_unix_ms": "3"}, "end_at_unix_ms")):
        assert field_of(await api.get("/admin/v1/usage/export", query=query)) == field

    sessions = (await api.get("/admin/v1/usage/sessions", query={"limit": "1"})).json
    assert len(sessions["items"]) == 1 and sessions["next_cursor"] == "1"
    principals = (await api.get("/admin/v1/usage/principals")).json["items"]
    assert {p["principal"] for p in principals} == set(runs.values())
    assert field_of(await api.get("/admin/v1/usage/principals", query={"limit": "51"})) == "limit"
    assert isinstance((await api.get("/admin/v1/usage/alerts")).json["alerts"], list)
    decisions = await api.get("/admin/v1/usage/routing-decisions", query={"run_id": first})
    assert decisions.status == 200 and isinstance(decisions.json["decisions"], list)
