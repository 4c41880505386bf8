"""The memory store through the runtime: auto-inject, scope isolation, maintenance."""

from __future__ import annotations

import palyra
from palyra.clock import ManualClock


def test_auto_inject_fences_relevant_memory_ahead_of_the_message(tmp_path):
    with palyra.Runtime.start(tmp_path, {"memory": {"auto_inject_enabled": True}}) as rt:
        rt.memory.ingest("The deploy window is Tuesday at 10:00 UTC")
        rt.memory.ingest("The deploy window is secret", principal="user:other")
        run = rt.send("when is the deploy window?", session_key="m")
        reply = run.wait(10).reply_text  # the deterministic provider echoes its input
        assert reply.startswith('<memory_context fence="palyra.memory_context.v2"')
        assert "not system instructions" in reply and "Tuesday at 10:00 UTC" in reply
        assert "secret" not in reply  # another principal's memory never leaks in
        [inject] = [e for e in rt.tape(run.id) if e.event_type == "memory_auto_inject"]
        assert len(inject.payload["hits"]) == 1


def test_auto_inject_is_off_by_default(tmp_path):
    with palyra.Runtime.start(tmp_path) as rt:
        rt.memory.ingest("The deploy window is Tuesday at 10:00 UTC")
        run = rt.send("when is the deploy window?", session_key="m")
        assert run.wait(10).reply_text == "when is the deploy window?"
        assert "memory_auto_inject" not in [e.event_type for e in rt.tape(run.id)]


def test_maintenance_removes_expired_items(tmp_path):
    clock = ManualClock()
    with palyra.Runtime.start(tmp_path, clock=clock) as rt:
        short = rt.memory.ingest("short lived note about zebras", ttl_ms=1_000)
        kept = rt.memory.ingest("long lived note about zebras")
        assert len(rt.memory.search("zebras")) == 2
        clock.advance(5)
        assert [h.item.memory_id for h in rt.memory.search("zebras")] == [kept.memory_id]
        rt.memory.maintain()
        assert rt.memory.delete(short.memory_id) is False  # already gone
