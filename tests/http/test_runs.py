"""Runs over HTTP: create, read, tape, cancel, SSE events, approvals."""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio

from palyra.ids import is_ulid, new_ulid
from surfaces.bridge import TrioSink
from surfaces.http.routes import idempotent_run_id
from surfaces.http.streams import follow_run
from tests.http.conftest import STEP, TOOLS, Follower, chunks_of, parse_sse, serving

pytestmark = pytest.mark.trio

INPUT = "alpha beta gamma"
TAPE_ROWS = 12  # a plain deterministic echo run


async def test_create_then_read_the_run_and_its_tape(api):
    reply = await api.post("/admin/v1/runs", {"text": INPUT, "session_key": "k1",
                                              "principal": "user:ops", "channel": "cli"})
    assert reply.status == 202, reply
    accepted = reply.json
    run_id = accepted["run_id"]
    assert is_ulid(run_id) and is_ulid(accepted["session_id"])
    assert accepted["session_created"] is True
    assert reply.headers["Location"] == f"/admin/v1/runs/{run_id}"
    events = await api.events(run_id)
    assert events[-1]["data"]["payload"]["kind"] == "done"

    run = (await api.get(f"/admin/v1/runs/{run_id}")).json
    assert run["state"] == "done" and run["reply_text"] == INPUT
    assert run["session_id"] == accepted["session_id"] and run["tape_events"] == TAPE_ROWS
    assert run["identity"] == {"principal": "user:ops", "device_id": "local", "channel": "cli"}
    assert run["usage"]["total_tokens"] == 6

    page = (await api.get(f"/admin/v1/runs/{run_id}/tape",
                          query={"after_seq": "3", "limit": "4"})).json
    assert set(page) == {"run_id", "requested_after_seq", "limit", "max_response_bytes",
                         "returned_bytes", "next_after_seq", "events"}
    assert page["requested_after_seq"] == 3 and page["limit"] == 4
    assert [e["seq"] for e in page["events"]] == [4, 5, 6, 7]
    assert page["next_after_seq"] == 7 and page["returned_bytes"] > 0
    assert page["max_response_bytes"] == 2 * 1024 * 1024
    whole = (await api.get(f"/admin/v1/runs/{run_id}/tape", query={"limit": "5000"})).json
    assert whole["limit"] == 1000 and len(whole["events"]) == TAPE_ROWS

    listed = (await api.get("/admin/v1/runs", query={"state": "done", "limit": "5"})).json
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    assert (await api.get("/admin/v1/runs", query={"state": "failed"})).json == {"runs": []}


async def test_idempotency_key_means_one_run(api):
    key = {"Idempotency-Key": "order-42"}
    first = await api.post("/admin/v1/runs", {"text": INPUT}, headers=key)
    again = await api.post("/admin/v1/runs", {"text": INPUT}, headers=key)
    assert first.status == again.status == 202
    assert first.json["run_id"] == again.json["run_id"] == idempotent_run_id("order-42")
    other = await api.post("/admin/v1/runs", {"text": "something else"}, headers=key)
    assert other.status == 409 and other.error["code"] == "already_exists"
    both = await api.post("/admin/v1/runs", {"text": INPUT, "run_id": new_ulid()}, headers=key)
    assert both.status == 400 and both.error["details"]["field"] == "run_id"
    bad = await api.post("/admin/v1/runs", {"text": INPUT}, headers={"Idempotency-Key": "a b"})
    assert bad.status == 400 and bad.error["details"]["field"] == "Idempotency-Key"
    assert len((await api.get("/admin/v1/runs")).json["runs"]) == 1


async def test_run_events_are_sse_with_seq_ids_and_end_after_the_terminal_status(api):
    run_id = await api.send(INPUT)
    reply = await api.stream(f"/admin/v1/runs/{run_id}/events")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert reply.headers["Cache-Control"] == "no-cache"
    events = parse_sse(reply.text)
    assert [int(e["id"]) for e in events] == list(range(TAPE_ROWS))
    for event in events:
        assert event["event"] == event["data"]["event_type"]
        assert event["data"]["run_id"] == run_id and event["data"]["seq"] == int(event["id"])
    assert events[0]["data"]["payload"]["kind"] == "accepted"
    assert events[-1]["event"] == "status" and events[-1]["data"]["payload"]["kind"] == "done"


async def test_last_event_id_resumes_after_that_seq(api):
    run_id = await api.send(INPUT)
    await api.events(run_id)
    resumed = await api.events(run_id, headers={"Last-Event-ID": "5"})
    assert [int(e["id"]) for e in resumed] == list(range(6, TAPE_ROWS))
    by_query = await api.stream(f"/admin/v1/runs/{run_id}/events?after_seq=9")
    assert [int(e["id"]) for e in parse_sse(by_query.text)] == [10, 11]
    # resuming after the terminal event ends at once with nothing to send
    assert await api.events(run_id, headers={"Last-Event-ID": str(TAPE_ROWS - 1)}) == []
    bad = await api.get(f"/admin/v1/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status == 400 and bad.error["details"]["field"] == "Last-Event-ID"
    missing = await api.get(f"/admin/v1/runs/{new_ulid()}/events")
    assert missing.status == 404


async def test_a_live_stream_follows_a_run_through_its_approval(tmp_path):
    async with serving(tmp_path / "state", TOOLS) as api:
        run_id = await api.send('x\n@tool palyra.echo {"text": "hey"}')
        follower = Follower(api, run_id)
        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follower.run)
                await follower.wait_for("tool_approval_request")
                assert not [e for e in follower.events if e["event"] == "status"
                            and e["data"]["payload"]["kind"] in ("done", "failed")]
                pending = (await api.get("/admin/v1/approvals",
                                         query={"pending": "true"})).json["approvals"]
                assert [a["run_id"] for a in pending] == [run_id]
                approval_id = pending[0]["approval_id"]
                assert (await api.get(f"/admin/v1/approvals/{approval_id}")).json[
                    "decision"] is None
                decided = await api.post(f"/admin/v1/approvals/{approval_id}/decision",
                                         {"approved": True, "reason": "looks fine"})
                assert decided.status == 200, decided
                assert decided.json["decision"] == "allow"
                assert decided.json["decision_reason"] == "looks fine"
        final = follower.events
        assert final[-1]["data"]["payload"]["kind"] == "done"
        assert '"echo":"hey"' in final[-1]["data"]["payload"]["reply_text"]
        seqs = [int(e["id"]) for e in final if e["id"] is not None]
        assert seqs == list(range(len(seqs)))
        # tokens streamed live carry no id: they are not on the tape, so not resumable
        live = [e for e in final if e["id"] is None]
        assert live and {e["event"] for e in live} == {"model_token"}
        assert all(e["data"]["payload"]["is_final"] is False for e in live)
        again = await api.post(f"/admin/v1/approvals/{approval_id}/decision", {"approved": False})
        assert again.status == 409, again
        assert (await api.get("/admin/v1/approvals", query={"pending": "true"})).json == {
            "approvals": []}
        assert len((await api.get("/admin/v1/approvals")).json["approvals"]) == 1


async def test_deny_and_decision_validation(tmp_path):
    async with serving(tmp_path / "state", TOOLS) as api:
        run_id = await api.send('x\n@tool palyra.echo {"text": "no"}')
        follower = Follower(api, run_id)
        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follower.run)
                await follower.wait_for("tool_approval_request")
                [approval] = (await api.get("/admin/v1/approvals", query={
                    "pending": "1", "run_id": run_id})).json["approvals"]
                path = f"/admin/v1/approvals/{approval['approval_id']}/decision"
                bad = await api.post(path, {"approved": True, "scope": "forever"})
                assert bad.status == 400 and bad.error["details"]["field"] == "scope"
                timeboxed = await api.post(path, {"approved": True, "scope": "timeboxed"})
                assert timeboxed.status == 400
                assert timeboxed.error["details"]["field"] == "ttl_ms"
                denied = await api.post(path, {"approved": False})
                assert denied.json["decision"] == "deny"
        assert follower.events[-1]["data"]["payload"]["kind"] == "done"
        assert (await api.post(f"/admin/v1/approvals/{new_ulid()}/decision",
                               {"approved": True})).status == 404


async def test_cancel_a_sleeping_run(api):
    run_id = await api.send("x\n@sleep 30")
    reply = await api.post(f"/admin/v1/runs/{run_id}/cancel", {"reason": "operator stop"})
    assert reply.status == 200, reply
    assert reply.json["cancel_requested"] is True and reply.json["reason"] == "operator stop"
    events = await api.events(run_id)
    assert events[-1]["data"]["payload"]["kind"] == "cancelled"
    run = (await api.get(f"/admin/v1/runs/{run_id}")).json
    assert run["state"] == "cancelled" and run["cancel_reason"]
    late = await api.post(f"/admin/v1/runs/{run_id}/cancel")
    assert late.json["cancel_requested"] is False and late.json["state"] == "cancelled"
    assert (await api.post(f"/admin/v1/runs/{new_ulid()}/cancel")).status == 404


async def test_shutdown_ends_open_streams(api):
    run_id = await api.send("x\n@sleep 30")
    with trio.fail_after(STEP):
        async with api.open_stream(f"/admin/v1/runs/{run_id}/events") as conn:
            first = await conn.receive()
            assert b"id: 0" in first  # the stream subscribed before its first event
            assert len(api.surface.streams) == 1
            api.surface.streams.close_all()
            rest = b"".join([chunk async for chunk in chunks_of(conn)])
    assert b"cancelled" not in rest  # ended by the shutdown, not by the run
    await api.rt.aio.cancel(run_id)


async def test_a_slow_consumer_falls_back_to_the_tape(api):
    """A subscriber whose buffer overflows is dropped and catches up from the tape:
    every tape step still arrives once and in order."""
    rt, s = api.rt, api.surface
    run_id = new_ulid()
    sink = TrioSink(2)  # far fewer than the run publishes
    rt.services.hub.subscribe(run_id, sink)
    handle = await rt.aio.send(" ".join(f"w{i}" for i in range(40)), run_id=run_id)
    with trio.fail_after(STEP):
        await handle.await_result(timeout=STEP)
        # the terminal step is durable before it is published: the sink's feed (queued
        # through run_sync_soon) may still be landing
        while not sink.overflowed:
            await trio.sleep(0.001)
        seen = []
        async with aclosing(follow_run(rt, s.pool, s.streams, run_id, sink=sink)) as events:
            async for event in events:
                seen.append(event)
    seqs = [e.seq for e in seen if e.seq is not None]
    assert seqs == list(range(TAPE_ROWS))
    assert seen[-1].terminal and seen[-1].payload["kind"] == "done"


async def test_idle_streams_send_keepalive_comments(api):
    api.surface.sse_keepalive = 0.05
    run_id = await api.send("x\n@sleep 30")
    buffer, cancelled = b"", False
    with trio.fail_after(STEP):
        async with api.open_stream(f"/admin/v1/runs/{run_id}/events") as conn:
            async for chunk in chunks_of(conn):
                buffer += chunk
                if b": keepalive\n\n" in buffer and not cancelled:
                    cancelled = True
                    await api.rt.aio.cancel(run_id, "enough")
    assert cancelled
    assert parse_sse(buffer.decode())[-1]["data"]["payload"]["kind"] == "cancelled"
