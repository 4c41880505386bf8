"""The trio twin of the embedding API: ``rt.aio`` and ``RunHandle.aevents``."""

from __future__ import annotations

import pytest
import trio

from palyra.ids import new_ulid
from tests.orchestrator.support import TAPE_ROWS, HoldAfterPublish, Recorder, pending_approval

INPUT = "alpha beta gamma"


@pytest.mark.trio
async def test_aio_send_then_aevents_reaches_the_terminal_event(runtime):
    run = await runtime.aio.send(INPUT, session_key="aio")
    with trio.fail_after(10):
        events = [event async for event in run.aevents()]
    assert events[-1].terminal
    assert events[-1].payload["kind"] == "done"
    assert events[-1].payload["reply_text"] == INPUT
    assert events[0].event_type == "status" and events[0].payload["kind"] == "accepted"
    seqs = [e.seq for e in events if e.seq is not None]
    assert seqs == sorted(set(seqs))  # in order, no step twice
    assert runtime.run(run.id).state == "done"


@pytest.mark.trio
async def test_await_result_returns_the_reply(runtime):
    run = await runtime.aio.send(INPUT)
    result = await run.await_result(timeout=10)
    assert (result.run_id, result.state, result.reply_text) == (run.id, "done", INPUT)
    assert result.usage.total_tokens == 6


@pytest.mark.trio
async def test_aevents_after_completion_replays_the_whole_tape(runtime):
    run = await runtime.aio.send(INPUT)
    await run.await_result(timeout=10)
    with trio.fail_after(10):
        events = [event async for event in run.aevents()]
    assert [(e.seq, e.event_type) for e in events] == [
        (e.seq, e.event_type) for e in runtime.tape(run.id)
    ]


@pytest.mark.trio
async def test_concurrent_aio_sends_all_complete(runtime):
    results = {}

    async def one(i: int) -> None:
        run = await runtime.aio.send(f"message number {i}", session_key=f"s{i % 3}")
        results[i] = await run.await_result(timeout=10)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i)
    assert sorted(results) == list(range(8))
    for i, result in results.items():
        assert result.state == "done"
        assert result.reply_text == f"message number {i}"
    assert len({r.run_id for r in results.values()}) == 8
    report = runtime.verify_journal()
    assert report.ok and report.tapes == 8


@pytest.mark.trio
async def test_aio_cancel_ends_a_sleeping_run(runtime):
    run_id = new_ulid()
    recorder = Recorder(runtime, run_id)
    run = await runtime.aio.send("x\n@sleep 30", run_id=run_id)
    await trio.to_thread.run_sync(recorder.wait_for, "agent_loop.turn_started")
    reply = await runtime.aio.cancel(run.id, "operator stop")
    assert reply["cancel_requested"] is True
    result = await run.await_result(timeout=5)
    assert result.state == "cancelled" and result.termination_reason == "cancellation"


@pytest.mark.trio
async def test_aio_decide_resumes_a_run_awaiting_approval(start_runtime):
    rt = start_runtime({"tools": {"allowed": ["palyra.echo"], "sensitive": ["palyra.echo"]},
                        "runs": {"approval_timeout_ms": 30_000}})
    run = await rt.aio.send('x\n@tool palyra.echo {"text": "hey"}')
    approval = await trio.to_thread.run_sync(pending_approval, rt, run.id)
    decided = await rt.aio.decide(approval.approval_id, True)
    assert decided.decision == "allow"
    result = await run.await_result(timeout=10)
    assert result.state == "done" and '"echo":"hey"' in result.reply_text


@pytest.mark.trio
async def test_aevents_subscriber_joining_between_publish_and_commit_sees_every_step(
        runtime, monkeypatch):
    run_id = new_ulid()
    hold = HoldAfterPublish(runtime.services.hub, run_id, seq=2)
    monkeypatch.setattr(runtime.services.hub, "publish", hold)
    try:
        run = await runtime.aio.send(INPUT, run_id=run_id)
        assert await trio.to_thread.run_sync(hold.published.wait, 5)
        events = run.aevents()
        first = await events.__anext__()  # subscribed; committed steps 0 and 1 replayed
    finally:
        hold.release.set()
    with trio.fail_after(10):
        seqs = [first.seq] + [e.seq async for e in events if e.seq is not None]
    assert seqs == list(range(TAPE_ROWS))
