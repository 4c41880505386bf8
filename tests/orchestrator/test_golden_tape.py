"""The golden tape of one deterministic run (spec 1.4, fixture ``run_tape_basic.json``)."""

from __future__ import annotations

import re
from typing import Any

from palyra.ids import new_ulid
from tests.orchestrator.support import TAPE_ROWS, HoldAfterPublish

INPUT = "alpha beta gamma"
# The upstream golden tape has 6 rows; ours adds the input, the catalog, the loop steps and
# the routing decision of usage governance (12 rows for a plain echo run).
DROPPED = {"tool_catalog_snapshot", "message.received", "usage.routing_decision"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def golden(tape: list[Any]) -> list[dict[str, Any]]:
    """Drop the bookkeeping rows and renumber ``seq`` from 0, as the golden comparison does."""
    kept = [e for e in tape
            if e.event_type not in DROPPED and not e.event_type.startswith("agent_loop.")]
    return [{"seq": i, "event_type": e.event_type, "payload": e.payload}
            for i, e in enumerate(kept)]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def test_golden_tape_of_a_plain_echo_run(runtime):
    run = runtime.send(INPUT, session_key="golden")
    result = run.wait(10)
    assert (result.state, result.reply_text) == ("done", INPUT)
    assert result.termination_reason == "final_answer"

    rows = golden(runtime.tape(run.id))
    assert [(r["seq"], r["event_type"]) for r in rows] == [
        (0, "status"), (1, "status"), (2, "model_token"), (3, "provider_turn_output"),
        (4, "message.replied"), (5, "status"),
    ]
    accepted, streaming, token, output, replied, done = (r["payload"] for r in rows)
    assert accepted == {"kind": "accepted",
                        "message": f"accepted session={run.session_id} principal=user:local"}
    assert streaming == {"kind": "in_progress", "message": "streaming"}
    assert token == {"token": INPUT, "is_final": True}  # stored as is, not "<redacted>"
    assert output["full_text"] == INPUT
    assert output["finish_reason"] == "stop"
    assert output["content_parts"] == [{"kind": "text", "text": INPUT}]
    usage = output["usage"]
    assert all(is_int(usage[k]) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 3)  # word counts
    assert replied == {"reply_text": INPUT}
    assert (done["kind"], done["message"], done["reply_text"]) == ("done", "completed", INPUT)


def test_full_tape_has_contiguous_rows_with_the_bookkeeping_steps(runtime):
    run = runtime.send(INPUT)
    run.wait(10)
    tape = runtime.tape(run.id)
    assert [e.seq for e in tape] == list(range(TAPE_ROWS))
    assert [e.event_type for e in tape] == [
        "status", "message.received", "status", "tool_catalog_snapshot", "agent_loop.started",
        "agent_loop.turn_started", "usage.routing_decision", "model_token",
        "provider_turn_output", "message.replied",
        "agent_loop.terminated", "status",
    ]
    by_type = {e.event_type: e.payload for e in tape}
    assert by_type["message.received"] == {"text": INPUT}
    catalog = by_type["tool_catalog_snapshot"]
    assert catalog["schema_version"] == 1 and HEX64.match(catalog["catalog_hash"])
    assert by_type["agent_loop.terminated"] == {"reason": "final_answer"}
    assert all(e.run_id == run.id and HEX64.match(e.hash or "") for e in tape)
    record = runtime.run(run.id)
    assert (record.state, record.tape_events, record.reply_text) == ("done", TAPE_ROWS, INPUT)
    assert record.usage.total_tokens == 6


def test_tape_chain_verifies_after_runs(runtime):
    runs = [runtime.send(INPUT), runtime.send("delta epsilon")]
    for run in runs:
        run.wait(10)
    report = runtime.verify_journal()
    assert report.ok, report
    assert report.first_bad_tape is None
    assert report.tapes == 2
    assert report.tape_rows == sum(len(runtime.tape(r.id)) for r in runs) == 2 * TAPE_ROWS


def test_golden_tape_is_the_same_for_every_run(runtime):
    first, second = runtime.send(INPUT), runtime.send(INPUT)
    first.wait(10)
    second.wait(10)

    def normal(run) -> list[dict[str, Any]]:
        rows = golden(runtime.tape(run.id))
        accepted = rows[0]["payload"]
        accepted["message"] = accepted["message"].replace(run.session_id, "<sid>")
        return rows

    assert normal(first) == normal(second)


def test_events_yields_the_tape_steps_in_order_and_ends_at_the_terminal_status(runtime):
    run = runtime.send(INPUT)
    run.wait(10)
    events = list(run.events(timeout=5))
    tape = runtime.tape(run.id)
    assert [(e.seq, e.event_type) for e in events] == [(e.seq, e.event_type) for e in tape]
    assert events[-1].terminal and events[-1].payload["kind"] == "done"


def test_events_subscriber_joining_between_publish_and_commit_sees_every_step(runtime, monkeypatch):
    run_id = new_ulid()
    hold = HoldAfterPublish(runtime.services.hub, run_id, seq=2)  # status in_progress
    monkeypatch.setattr(runtime.services.hub, "publish", hold)
    try:
        run = runtime.send(INPUT, run_id=run_id)
        assert hold.published.wait(5)  # announced, not yet flushed to the journal
        events = run.events(timeout=5)
        first = next(events)  # subscribed; the committed tape (seq 0, 1) is replayed
    finally:
        hold.release.set()
    seqs = [first.seq] + [e.seq for e in events if e.seq is not None]
    assert seqs == list(range(TAPE_ROWS))
