"""Post-run reflection and candidate review through the full runtime (spec 6).

Assumes the wiring of :mod:`actors.learning` into the runtime: a ``learning`` config
section, ``rt.learning.candidates(...)`` / ``rt.learning.review(...)``, and runs that
reach ``done`` telling the learning actor ``RunFinished``.
"""

from __future__ import annotations

import time

import pytest

import palyra
from actors import learning
from palyra.background.tasks import POST_RUN_REFLECTION, REFLECTION_PRIORITY
from tests.support.wait import until

FAST = {"supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0}}
# A 60 s poll: only the wake-ups of the learning actor can make reflection finish in time.
SLOW_POLL = {"background": {"poll_interval_ms": 60_000}}
ALWAYS = {"learning": {"sampling_percent": 100, "cooldown_ms": 0}}
TERMINAL = ("succeeded", "failed", "cancelled", "expired")


def start(tmp_path, **sections) -> palyra.Runtime:
    return palyra.Runtime.start(tmp_path, {**FAST, **SLOW_POLL, **ALWAYS, **sections})


def reflections(rt: palyra.Runtime, run_id: str | None = None):
    return [t for t in rt.tasks.list() if t.task_kind == POST_RUN_REFLECTION
            and (run_id is None or t.parent_run_id == run_id)]


def reflected(rt: palyra.Runtime, run_id: str, timeout: float = 10.0):
    """The run's reflection task once it is terminal."""
    found = until(lambda: [t for t in reflections(rt, run_id) if t.state in TERMINAL][:1], timeout=timeout,
                  what=f"a terminal reflection of {run_id}")
    return found[0]


def finish(rt: palyra.Runtime, text: str, session_key: str = "learn"):
    handle = rt.send(text, session_key=session_key)
    handle.wait(10)
    assert rt.run_state(handle.id) == "done"
    return handle, reflected(rt, handle.id)


def mine(rt: palyra.Runtime, **filters):
    return rt.learning.candidates(principal="user:local", **filters)


def test_a_stated_preference_becomes_a_queued_candidate(tmp_path):
    with start(tmp_path) as rt:
        handle, task = finish(rt, "I prefer concise answers")
        assert task.state == "succeeded" and task.result["candidate_count"] == 1
        [cand] = mine(rt)
        assert (cand.candidate_kind, cand.status, cand.run_id) == ("preference", "queued", handle.id)
        assert cand.content == {"key": "interaction.style", "value": "I prefer concise answers"}
        assert (cand.scope_kind, cand.scope_id) == ("profile", "user:local")
        assert cand.source_task_id == task.task_id and not cand.auto_applied
        assert rt.learning.candidates(principal="user:other") == []


def test_a_confident_durable_fact_is_auto_applied_to_memory(tmp_path):
    with start(tmp_path) as rt:
        _, task = finish(rt, "remember that the deploy window is Tuesday at 10:00 UTC")
        [cand] = mine(rt)
        assert (cand.candidate_kind, cand.status, cand.auto_applied) == ("durable_fact", "auto_applied", True)
        assert cand.reviewed_by == "system:reflection"
        assert task.result["auto_applied_ids"] == [cand.candidate_id]
        hits = rt.memory.search("deploy window")
        assert [h.item.content_text for h in hits] == ["the deploy window is Tuesday at 10:00 UTC"]
        assert hits[0].item.source == "learning" and hits[0].item.scope == "principal"
        conn = rt.services.readers.conn()
        steps = [(h.from_status, h.to_status) for h in learning.history(conn, cand.candidate_id)]
        assert steps == [(None, "queued"), ("queued", "auto_applied")]
        # the same fact again: deduped, not written to memory twice
        _, again = finish(rt, "Remember that the deploy window is Tuesday at 10:00 UTC.")
        assert again.result["candidate_ids"] == [cand.candidate_id]
        assert again.result["auto_applied_ids"] == []
        assert len(rt.memory.search("deploy window")) == 1


def test_the_reflection_task_is_an_internal_background_task_that_succeeds(tmp_path):
    with start(tmp_path) as rt:
        handle, task = finish(rt, "I prefer tables over prose")
        [listed] = reflections(rt)
        assert listed.task_id == task.task_id
        assert (task.task_kind, task.state, task.priority) == (POST_RUN_REFLECTION, "succeeded",
                                                              REFLECTION_PRIORITY)
        assert (task.attempt_count, task.max_attempts, task.target_run_id) == (1, 1, None)
        assert task.parent_run_id == handle.id and task.session_id == handle.session_id
        assert task.payload["trigger_policy"] == "post_run_learning_v1"
        assert task.payload["run_id"] == handle.id
        assert task.result["status"] == "succeeded" and task.result["run_id"] == handle.id
        # a run without anything to learn still reflects, and finds nothing
        _, empty = finish(rt, "what time is it?")
        assert empty.state == "succeeded" and empty.result["candidate_count"] == 0


def test_sampling_zero_schedules_nothing(tmp_path):
    with start(tmp_path, learning={"sampling_percent": 0, "cooldown_ms": 0}) as rt:
        handle = rt.send("I prefer concise answers", session_key="learn")
        handle.wait(10)
        time.sleep(0.6)  # past the 250 ms a reflection would wait
        assert reflections(rt) == [] and mine(rt) == []


def test_the_cooldown_holds_back_the_next_reflection_of_a_session(tmp_path):
    with start(tmp_path, learning={"sampling_percent": 100, "cooldown_ms": 60_000}) as rt:
        finish(rt, "I prefer concise answers")
        second = rt.send("never use emoji", session_key="learn")
        second.wait(10)
        other = rt.send("never use emoji", session_key="elsewhere")  # another session
        other.wait(10)
        reflected(rt, other.id)
        assert reflections(rt, second.id) == []


def test_anonymous_sessions_of_a_principal_share_one_cooldown(tmp_path):
    """Each OpenAI-compatible call gets a fresh session: without a shared cooldown every
    call would schedule a reflection."""
    with start(tmp_path, learning={"sampling_percent": 100, "cooldown_ms": 60_000}) as rt:
        first = rt.send("I prefer concise answers", principal="api:alice")
        first.wait(10)
        reflected(rt, first.id)
        later = [rt.send("never use emoji", principal="api:alice") for _ in range(3)]
        keyed = rt.send("never use emoji", principal="api:alice", session_key="named")
        for handle in [*later, keyed]:
            handle.wait(10)
        assert len({h.session_id for h in [first, *later]}) == 4
        other = rt.send("I prefer tabs", principal="api:bob")  # another principal
        other.wait(10)
        reflected(rt, other.id)
        reflected(rt, keyed.id)  # a named session keeps its own cooldown
        assert all(reflections(rt, h.id) == [] for h in later)


def test_review_accept_and_reject_with_history(tmp_path):
    with start(tmp_path) as rt:
        finish(rt, "I prefer concise answers")
        finish(rt, "never deploy on Fridays")
        finish(rt, "my name is Ada Lovelace")  # a fact below the auto-write threshold
        by_kind = {}
        for cand in mine(rt):
            by_kind.setdefault(cand.content.get("key", cand.candidate_kind), cand)
        style, rule, fact = by_kind["interaction.style"], by_kind["workflow.rule"], by_kind["durable_fact"]
        assert fact.status == "queued" and not fact.auto_applied
        conn = rt.services.readers.conn()

        accepted = rt.learning.review(style.candidate_id, "approved", principal="user:local")
        assert (accepted.status, accepted.reviewed_by) == ("accepted", "user:local")
        with pytest.raises(palyra.InvalidTransition):
            rt.learning.review(style.candidate_id, "accepted", principal="user:local")
        prefs = learning.preferences(conn, "user:local")
        assert [(p.key, p.value) for p in prefs] == [("interaction.style", "I prefer concise answers")]

        rejected = rt.learning.review(rule.candidate_id, "rejected", principal="user:local")
        assert rejected.status == "rejected"
        for status in ("rejected", "accepted"):
            with pytest.raises(palyra.InvalidTransition):
                rt.learning.review(rule.candidate_id, status, principal="user:local")
        steps = [(h.from_status, h.to_status, h.actor) for h in learning.history(conn, rule.candidate_id)]
        assert steps == [(None, "queued", "system:reflection"), ("queued", "rejected", "user:local")]

        # an accepted fact is written to memory; rejecting it later takes it out again
        assert rt.memory.search("Ada Lovelace") == []
        rt.learning.review(fact.candidate_id, "accepted", principal="user:local")
        assert [h.item.content_text for h in rt.memory.search("Ada Lovelace")] == ["my name is Ada Lovelace"]
        rt.learning.review(fact.candidate_id, "rejected", principal="user:local")
        assert rt.memory.search("Ada Lovelace") == []
        assert [h.to_status for h in learning.history(conn, fact.candidate_id)] == [
            "queued", "accepted", "rejected"]

        with pytest.raises(palyra.NotFound):
            rt.learning.review("01J0000000000000000000NONE", "accepted", principal="user:local")
        with pytest.raises(palyra.NotFound):  # someone else's candidate
            rt.learning.review(style.candidate_id, "rejected", principal="user:other")
        with pytest.raises(palyra.InvalidInput):
            rt.learning.review(style.candidate_id, "bogus", principal="user:local")
        assert [c.candidate_id for c in mine(rt, status="approved")] == [style.candidate_id]


def test_a_repeated_successful_tool_sequence_becomes_a_procedure_candidate(tmp_path):
    tools = {"tools": {"allowed": ["palyra.echo"]}}
    text = 'do the usual\n@tool palyra.echo {"text": "a"}\n@tool palyra.echo {"text": "b"}'
    with start(tmp_path, **tools) as rt:
        finish(rt, text, session_key="p1")
        assert not [c for c in rt.learning.candidates() if c.candidate_kind == "procedure"]
        finish(rt, text, session_key="p2")  # the second time the sequence is seen
        procedures = [c for c in rt.learning.candidates() if c.candidate_kind == "procedure"]
        assert procedures and "palyra.echo" in str(procedures[0].content)
