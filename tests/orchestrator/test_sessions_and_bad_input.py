"""Session resolution, admission errors, idempotency and tape paging (spec 1.1, 1.2, 1.4)."""

from __future__ import annotations

import pytest

import palyra
from palyra.ids import new_ulid
from tests.orchestrator.support import TAPE_ROWS

LIMITS = {"runs": {"max_input_bytes": 64}}


@pytest.fixture
def rt(start_runtime):
    return start_runtime(LIMITS)


def fingerprint(rt: palyra.Runtime, run_id: str) -> list[tuple[int, str | None]]:
    return [(e.seq, e.hash) for e in rt.tape(run_id)]


@pytest.mark.parametrize("text", ["", "   ", " \n\t "])
def test_empty_or_blank_text_is_invalid_input(rt, text):
    with pytest.raises(palyra.InvalidInput):
        rt.send(text)
    assert rt.runs() == []


def test_text_over_max_input_bytes_is_payload_too_large(rt):
    with pytest.raises(palyra.PayloadTooLarge) as caught:
        rt.send("x" * 65)
    assert caught.value.details["limit"] == 64
    with pytest.raises(palyra.PayloadTooLarge):
        rt.send("é" * 33)  # 66 bytes in 33 characters: the limit is in bytes
    assert rt.send("x" * 64).wait(10).state == "done"


def test_require_existing_with_an_unknown_key_is_not_found(rt):
    with pytest.raises(palyra.NotFound):
        rt.send("hi", session_key="never-seen", require_existing=True)
    assert rt.sessions.list() == []


def test_require_existing_with_a_known_key_joins_the_session(rt):
    first = rt.send("one", session_key="k")
    second = rt.send("two", session_key="k", require_existing=True)
    assert second.session_id == first.session_id
    assert first.session_created and not second.session_created


def test_same_key_with_another_principal_is_identity_mismatch(rt):
    first = rt.send("mine", session_key="k")
    first.wait(10)
    with pytest.raises(palyra.IdentityMismatch):
        rt.send("theirs", session_key="k", principal="user:other")
    with pytest.raises(palyra.IdentityMismatch):
        rt.send("theirs", session_key="k", device_id="other-device")
    with pytest.raises(palyra.IdentityMismatch):
        rt.send("theirs", session_key="k", channel="discord")
    with pytest.raises(palyra.IdentityMismatch):
        rt.sessions.resolve(session_key="k", principal="user:other")
    assert [r.run_id for r in rt.runs()] == [first.id]


def test_invalid_run_id_is_invalid_input(rt):
    for bad in ("not-a-ulid", "01m84jcm0z5na83794rwgbkxj7", "0" * 27):
        with pytest.raises(palyra.InvalidInput):
            rt.send("hi", run_id=bad)
    assert rt.runs() == []


def test_send_with_the_same_run_id_is_idempotent(rt):
    run_id = new_ulid()
    first = rt.send("once", session_key="k", run_id=run_id)
    again = rt.send("once", session_key="k", run_id=run_id)
    assert first.id == again.id == run_id
    assert again.session_id == first.session_id
    first.wait(10)
    after_done = rt.send("once", session_key="k", run_id=run_id)
    assert after_done.id == run_id and after_done.wait(10).state == "done"
    assert len(rt.runs()) == 1
    assert [e.event_type for e in rt.tape(run_id)].count("message.received") == 1


def test_same_run_id_with_different_text_already_exists(rt):
    run_id = new_ulid()
    rt.send("original", run_id=run_id).wait(10)
    with pytest.raises(palyra.AlreadyExists):
        rt.send("different", run_id=run_id)
    with pytest.raises(palyra.AlreadyExists):
        rt.send("original", run_id=run_id, principal="user:other")
    assert rt.run(run_id).reply_text == "original"


def test_archive_frees_the_key_for_a_new_session(rt):
    first = rt.send("before", session_key="k")
    first.wait(10)
    archived = rt.sessions.archive(session_key="k")
    assert archived["cleaned"] is True and archived["previous_session_key"] == "k"
    assert archived["run_count"] == 1
    second = rt.send("after", session_key="k")
    assert second.session_created and second.session_id != first.session_id
    result = second.wait(10)
    assert result.usage.prompt_tokens == 1  # a fresh session: no history replayed
    [session] = [s for s in rt.sessions.list() if s.session_key == "k"]
    assert session.session_id == second.session_id
    assert rt.run(first.id).state == "done"  # the archived session's run is intact
    with_archived = rt.sessions.list(include_archived=True)
    assert {s.session_id for s in with_archived} == {first.session_id, second.session_id}


def test_archive_checks_identity_and_existence(rt):
    rt.send("mine", session_key="k").wait(10)
    with pytest.raises(palyra.IdentityMismatch):
        rt.sessions.archive(session_key="k", principal="user:other")
    with pytest.raises(palyra.NotFound):
        rt.sessions.archive(session_key="nope")
    assert [s.session_key for s in rt.sessions.list()] == ["k"]


def test_sessions_are_listed_per_identity(rt):
    rt.send("a", session_key="mine").wait(10)
    rt.send("b", session_key="theirs", principal="user:other").wait(10)
    assert [s.session_key for s in rt.sessions.list()] == ["mine"]
    assert [s.session_key for s in rt.sessions.list(principal="user:other")] == ["theirs"]


def test_second_turn_in_a_session_sees_the_history(rt):
    first = rt.send("one two", session_key="k").wait(10)
    second = rt.send("three", session_key="k").wait(10)
    other = rt.send("three", session_key="elsewhere").wait(10)
    assert first.usage.prompt_tokens == 2
    assert other.usage.prompt_tokens == 1
    # one two (user) + one two (assistant) + three
    assert second.usage.prompt_tokens == 5 > first.usage.prompt_tokens
    assert second.reply_text == "three"


def test_bad_requests_corrupt_nothing(rt):
    good = rt.send("alpha beta gamma", session_key="k")
    good.wait(10)
    before = fingerprint(rt, good.id)
    bad_calls = [
        lambda: rt.send(""),
        lambda: rt.send("x" * 100),
        lambda: rt.send("hi", session_key="nope", require_existing=True),
        lambda: rt.send("hi", session_key="k", principal="user:other"),
        lambda: rt.send("hi", run_id="bad"),
        lambda: rt.send("different", run_id=good.id, session_key="k"),
        lambda: rt.cancel(new_ulid()),
        lambda: rt.approvals.decide(new_ulid(), allow=True),
        lambda: rt.sessions.archive(session_key="nope"),
    ]
    for call in bad_calls:
        with pytest.raises(palyra.PalyraError):
            call()
    assert fingerprint(rt, good.id) == before
    assert [r.run_id for r in rt.runs()] == [good.id]
    report = rt.verify_journal()
    assert report.ok and report.tapes == 1 and report.tape_rows == len(before)
    later = rt.send("still fine", session_key="k").wait(10)
    assert later.state == "done" and later.reply_text == "still fine"


def test_tape_page_honours_limit_and_next_after_seq(rt):
    run = rt.send("alpha beta gamma")
    run.wait(10)
    full = rt.tape(run.id)
    seen, after = [], -1
    while True:
        page = rt.tape_page(run.id, after_seq=after, limit=4)
        assert page["run_id"] == run.id and page["requested_after_seq"] == after
        assert page["limit"] == 4 and len(page["events"]) <= 4
        if not page["events"]:
            assert page["next_after_seq"] is None
            break
        assert page["next_after_seq"] == page["events"][-1].seq
        seen += page["events"]
        after = page["next_after_seq"]
    assert [e.seq for e in seen] == [e.seq for e in full] == list(range(TAPE_ROWS))
    assert seen == full


def test_tape_page_clamps_limit(rt):
    run = rt.send("alpha beta gamma")
    run.wait(10)
    assert [e.seq for e in rt.tape_page(run.id, limit=0)["events"]] == [0]
    assert rt.tape_page(run.id, limit=5000)["limit"] == 1000


def test_tape_page_honours_max_bytes(rt):
    run = rt.send("alpha beta gamma")
    run.wait(10)
    whole = rt.tape_page(run.id)
    total = whole["returned_bytes"]
    cap = total // 2
    page = rt.tape_page(run.id, max_bytes=cap)
    assert 0 < len(page["events"]) < len(whole["events"])
    assert page["returned_bytes"] <= cap == page["max_response_bytes"]
    assert page["events"] == whole["events"][: len(page["events"])]
    rest = rt.tape_page(run.id, after_seq=page["next_after_seq"])
    assert page["events"] + rest["events"] == whole["events"]


def test_tape_page_whose_first_event_is_too_big_is_resource_exhausted(rt):
    run = rt.send("alpha beta gamma")
    run.wait(10)
    with pytest.raises(palyra.ResourceExhausted):
        rt.tape_page(run.id, max_bytes=5)


def test_tape_of_an_unknown_run_is_not_found(rt):
    with pytest.raises(palyra.NotFound):
        rt.tape(new_ulid())
    with pytest.raises(palyra.NotFound):
        rt.tape_page(new_ulid())
    with pytest.raises(palyra.NotFound):
        rt.run(new_ulid())
