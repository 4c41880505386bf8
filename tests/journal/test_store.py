from __future__ import annotations

import stat
import threading

import apsw
import orjson
import pytest

from palyra.errors import AlreadyExists, PayloadTooLarge, ResourceExhausted, Superseded
from palyra.journal.schema import LATEST_VERSION, current_version, migrate
from palyra.journal.store import (
    EventDraft,
    JournalSettings,
    Reader,
    TapeDraft,
    Writer,
    append_op,
    db_path,
    open_writer_connection,
)


@pytest.fixture
def writer(tmp_path):
    conn = open_writer_connection(tmp_path)
    yield Writer(conn, JournalSettings())
    conn.close()


def append(writer: Writer, kind: str = "test", payload=None, **kw):
    [outcome] = writer.apply([[append_op(EventDraft.build(kind, payload, **kw))]])
    if not outcome.ok:
        raise outcome.error
    return outcome.value


def test_migrations_are_recorded_and_idempotent(tmp_path):
    conn = open_writer_connection(tmp_path)
    assert current_version(conn) == LATEST_VERSION
    assert migrate(conn) == []  # nothing left to apply
    conn.close()


def test_state_dir_is_0700_and_database_files_0600(tmp_path):
    state = tmp_path / "state"
    conn = open_writer_connection(state)
    conn.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(db_path(state).stat().st_mode) == 0o600


def test_wal_mode_and_configured_synchronous(tmp_path):
    conn = open_writer_connection(tmp_path, JournalSettings(synchronous="FULL"))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    conn.close()


def test_events_link_into_a_chain_that_verifies(writer, tmp_path):
    first = append(writer, payload={"n": 1})
    second = append(writer, payload={"n": 2})
    assert first.prev_hash is None
    assert second.prev_hash == first.hash
    with Reader(tmp_path) as reader:
        report = reader.verify_chain()
    assert report.ok and report.events == 2 and report.head_hash == second.hash


def test_journal_is_append_only(writer):
    append(writer)
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        writer.conn.execute("UPDATE journal_events SET kind = 'x'")
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        writer.conn.execute("DELETE FROM journal_events")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("UPDATE journal_events SET payload_json = '{\"n\":99}' WHERE seq = 2", "content"),
        ("UPDATE journal_events SET prev_hash = 'ff' WHERE seq = 3", "link"),
        ("DELETE FROM journal_events WHERE seq = 2", "gap"),
    ],
)
def test_verify_chain_reports_the_first_break(writer, tmp_path, tamper, reason):
    for n in range(4):
        append(writer, payload={"n": n})
    writer.conn.execute("DROP TRIGGER journal_events_no_update; DROP TRIGGER journal_events_no_delete")
    writer.conn.execute(tamper)
    with Reader(tmp_path) as reader:
        report = reader.verify_chain()
    assert not report.ok
    assert report.first_bad_seq in (2, 3)
    assert reason in report.reason


def test_secrets_are_redacted_before_storage(writer, tmp_path):
    result = append(writer, payload={"api_key": "sk-live-123", "note": "Bearer abc", "ok": 1})
    with Reader(tmp_path) as reader:
        stored = orjson.loads(reader.event(result.event_id)["payload_json"])
    assert stored == {"api_key": "<redacted>", "note": "<redacted>", "ok": 1}
    assert result.redacted


def test_payload_size_limit_is_enforced_before_anything_is_written():
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        EventDraft.build("big", {"x": "y" * 200}, max_payload_bytes=100)


def test_tape_payload_limit_counts_utf8_bytes_not_characters():
    # 40 characters of three bytes each: 120 stored bytes, over a 100-byte limit
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        TapeDraft.build("run", 0, "status", {"t": "\u20ac" * 40}, now_ms=0, max_payload_bytes=100)
    assert TapeDraft.build("run", 0, "status", {"t": "e" * 40}, now_ms=0, max_payload_bytes=100)


def test_payload_with_int_keys_is_sized_too():
    # JSON turns the keys into strings either way; the size check must not skip the payload
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        EventDraft.build("big", {1: "y" * 200}, max_payload_bytes=100)


@pytest.mark.parametrize("payload", [{"n": 1, "text": "plain"}, [1, {"2": 3}], {7: "int key"},
                                     {"api_key": "sk-" + "x" * 20}])
def test_a_dict_or_list_payload_is_serialised_once(monkeypatch, payload):
    real = orjson.dumps
    calls = []

    def counting(value, *args, **kwargs):
        calls.append(value)
        return real(value, *args, **kwargs)

    monkeypatch.setattr(orjson, "dumps", counting)
    draft = EventDraft.build("once", payload)
    monkeypatch.undo()
    # a payload that needs redaction is dumped again after it, as the redacted copy
    assert [value is payload for value in calls] == [True] + [False] * draft.redacted
    assert draft.redacted or draft.payload_json == real(
        payload, option=orjson.OPT_NON_STR_KEYS).decode()


def test_duplicate_event_id_fails_only_that_caller(writer, tmp_path):
    draft = EventDraft.build("dup")
    other = EventDraft.build("other")
    outcomes = writer.apply([[append_op(draft)], [append_op(draft)], [append_op(other)]])
    assert [o.ok for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, AlreadyExists)
    with Reader(tmp_path) as reader:
        assert reader.count() == 2
        assert reader.verify_chain().ok  # the rolled-back savepoint left no hole


def test_optional_event_cap_rejects_with_a_clear_error(tmp_path):
    conn = open_writer_connection(tmp_path, JournalSettings(max_events=2))
    w = Writer(conn, JournalSettings(max_events=2))
    append(w)
    append(w)
    with pytest.raises(ResourceExhausted, match="max_events"):
        append(w)
    conn.close()


def test_reopen_after_close_continues_the_chain(tmp_path):
    for _ in range(2):
        conn = open_writer_connection(tmp_path)
        w = Writer(conn, JournalSettings())
        append(w)
        append(w)
        conn.close()
    with Reader(tmp_path) as reader:
        report = reader.verify_chain()
    assert report.ok and report.events == 4


def test_recent_is_newest_first_and_clamped(writer, tmp_path):
    for n in range(5):
        append(writer, kind="k", payload={"n": n})
    with Reader(tmp_path) as reader:
        rows = reader.recent(limit=0)
        assert len(rows) == 1 and orjson.loads(rows[0]["payload_json"]) == {"n": 4}
        assert len(reader.recent(limit=10_000)) == 5


def test_readers_see_committed_rows_while_the_writer_works(writer, tmp_path):
    reader = Reader(tmp_path)
    seen = []

    def read() -> None:
        for _ in range(50):
            seen.append(reader.count())

    t = threading.Thread(target=read)
    t.start()
    for _ in range(50):
        append(writer)
    t.join(5)
    reader.close()
    assert seen == sorted(seen)  # never goes backwards, never errors


def test_canonical_form_is_documented_and_stable():
    from palyra.canonical import canonical_bytes, chain_hash

    assert canonical_bytes({"b": 1, "a": "x"}) == b'{"a":"x","b":1}'
    assert chain_hash(None, {"a": 1}) == chain_hash("", {"a": 1})
    assert chain_hash("00", {"a": 1}) != chain_hash(None, {"a": 1})


def test_a_writer_that_was_replaced_writes_nothing_of_its_batch(writer, tmp_path):
    append(writer, "before")
    current = [True]
    guarded = Writer(writer.conn, JournalSettings(), still_writer=lambda: current[0])
    assert guarded.apply([[append_op(EventDraft.build("while_current", {}))]])[0].ok
    current[0] = False  # its successor has taken over: this batch must not land behind it
    outcomes = guarded.apply([[append_op(EventDraft.build("late", {}))],
                              [append_op(EventDraft.build("late", {}))]])
    assert [type(o.error) for o in outcomes] == [Superseded, Superseded]
    with Reader(tmp_path) as reader:
        kinds = [e["kind"] for e in reader.recent(10)]
    assert "late" not in kinds and {"before", "while_current"} <= set(kinds)
    assert writer.conn.getautocommit()  # the lock was given back
