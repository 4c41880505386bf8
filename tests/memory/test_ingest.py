"""Item validation, limits, redaction, duplicates, delete/purge, retention, backfill."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from palyra.errors import AlreadyExists, InvalidInput, PayloadTooLarge
from palyra.journal.store import JournalSettings, Writer, open_writer_connection
from palyra.memory.embedding import EMBEDDING_MODEL_ID, embed, pack, unpack
from palyra.memory.store import (
    DAY_MS,
    DEFAULT_TTL_MS,
    MAX_MEMORY_ITEM_BYTES,
    MemoryItem,
    MemoryQueries,
    RetentionPolicy,
    backfill_embeddings_op,
    delete_op,
    expire_op,
    ingest_op,
    purge_op,
    retention_op,
)
from tests.memory.support import ALICE, BOB, NOW, S1, S2, add, apply, fts_ok, open_db


@pytest.fixture
def db(tmp_path):
    conn = open_db(tmp_path)
    yield conn
    conn.close()


def build(text="note", **kw):
    kw.setdefault("principal", ALICE)
    kw.setdefault("now_ms", NOW)
    return MemoryItem.build(text, **kw)


# --------------------------------------------------------------------------- limits


def test_size_limit_is_16_kib_in_utf8_bytes():
    assert MAX_MEMORY_ITEM_BYTES == 16 * 1024
    assert len(build("a" * MAX_MEMORY_ITEM_BYTES).content_text) == MAX_MEMORY_ITEM_BYTES
    with pytest.raises(PayloadTooLarge) as err:
        build("a" * (MAX_MEMORY_ITEM_BYTES + 1))
    assert err.value.details["payload_kind"] == "memory"
    assert isinstance(err.value, InvalidInput)  # maps to invalid_argument
    with pytest.raises(PayloadTooLarge):
        build("é" * (MAX_MEMORY_ITEM_BYTES // 2 + 1))  # 2 bytes each


def test_token_limit_and_configurable_limits():
    build(" ".join(["w"] * 2048))
    with pytest.raises(PayloadTooLarge, match="token limit"):
        build(" ".join(["w"] * 2049))
    with pytest.raises(PayloadTooLarge):
        build("one two three four", max_item_tokens=3)
    with pytest.raises(PayloadTooLarge):
        build("x" * 129, max_item_bytes=128)


@pytest.mark.parametrize(
    "kw",
    [
        {"text": ""},
        {"text": " \n\t "},
        {"text": "bad \ud800 surrogate"},
        {"text": 42},
        {"principal": ""},
        {"principal": " padded"},
        {"principal": "x" * 257},
        {"channel": ""},
        {"session_id": "not-a-ulid"},
        {"memory_id": "01hf7yat00000000000000000s"},
        {"scope": "global"},
        {"scope": "session"},
        {"scope": "channel"},
        {"source": "web"},
        {"confidence": -0.01},
        {"confidence": 1.01},
        {"confidence": float("nan")},
        {"confidence": True},
        {"confidence": "0.5"},
        {"ttl_unix_ms": NOW},
        {"ttl_unix_ms": NOW - 1},
        {"ttl_unix_ms": 1.5},
        {"tags": "not-a-list"},
        {"tags": [f"t{i}" for i in range(33)]},
        {"tags": ["x" * 65]},
        {"tags": [1]},
    ],
)
def test_rejects_malformed_items(kw):
    text = kw.pop("text", "note")
    with pytest.raises(InvalidInput):
        build(text, **kw)


def test_defaults_and_normalisation():
    item = build("  line one\r\nline\x00 two \x07 ", tags=[" Pref ", "pref", "", "A b"],
                 confidence=1)
    assert item.content_text == "line one\nline two"
    assert item.content_hash == hashlib.sha256(item.content_text.encode()).hexdigest()
    assert item.tags == ("a b", "pref")
    assert item.confidence == 1.0
    assert item.ttl_unix_ms == NOW + DEFAULT_TTL_MS == NOW + 30 * DAY_MS
    assert item.scope == "principal" and item.source == "manual"
    assert build(channel="cli").scope == "channel"
    assert build(channel="cli", session_id=S1).scope == "session"
    assert build(channel="cli", session_id=S1, scope="principal").scope == "principal"
    assert build(default_ttl_ms=None).ttl_unix_ms is None
    assert build(confidence=0).confidence == 0.0


def test_content_is_redacted_before_storage_and_hashing(db):
    secret = add(db, "Authorization: Bearer abcdefghijklmnop")
    assert secret.content_text == "<redacted>"
    assert secret.content_hash == hashlib.sha256(b"<redacted>").hexdigest()
    nested = add(db, '{"note": "keep", "api_key": "sk-123456789"}')
    assert orjson.loads(nested.content_text) == {"note": "keep", "api_key": "<redacted>"}
    stored = MemoryQueries(db).get(nested.memory_id, ALICE, now_ms=NOW)
    assert stored == nested and "sk-123456789" not in str(db.execute(
        "SELECT group_concat(content_text) FROM memory_items").fetchone())


def test_round_trip_and_duplicate_id(db):
    item = add(db, "likes green tea", channel="cli", session_id=S1, tags=["drink"],
               confidence=0.9, source="tape:user_message")
    assert MemoryQueries(db).get(item.memory_id, ALICE, channel="cli", session_id=S1,
                                 now_ms=NOW) == item
    with pytest.raises(AlreadyExists):
        apply(db, ingest_op(build("other", memory_id=item.memory_id)))
    [(model, dims, version, blob)] = db.execute(
        "SELECT embedding_model_id, embedding_dims, embedding_version, embedding_vector"
        " FROM memory_vectors").fetchall()
    assert (model, dims, version) == (EMBEDDING_MODEL_ID, 64, 1)
    assert blob == pack(embed("likes green tea"))


def test_ops_compose_with_the_real_journal_writer(tmp_path):
    conn = open_writer_connection(tmp_path)  # migration 4 creates the memory tables
    writer = Writer(conn, JournalSettings())
    first = build("first memory")
    ok, dup = writer.apply([[ingest_op(first)], [ingest_op(build("x", memory_id=first.memory_id))]])
    assert ok.ok and ok.value == first
    assert not dup.ok and isinstance(dup.error, AlreadyExists)
    [deleted] = writer.apply([[delete_op(first.memory_id, ALICE)]])
    assert deleted.value is True
    assert MemoryQueries(conn).count() == 0
    conn.close()


# --------------------------------------------------------------------------- TTL


def test_ttl_hides_before_retention_deletes(db):
    item = add(db, "ephemeral zebra fact", ttl_unix_ms=NOW + 1000)
    queries = MemoryQueries(db)
    assert queries.get(item.memory_id, ALICE, now_ms=NOW + 999) == item
    assert [h.item for h in queries.search("zebra", ALICE, now_ms=NOW + 999)] == [item]
    for now in (NOW + 1000, NOW + 10**9):
        assert queries.get(item.memory_id, ALICE, now_ms=now) is None
        assert queries.get(item.memory_id, ALICE, owner_view=True, now_ms=now) is None
        assert queries.search("zebra", ALICE, now_ms=now) == []
        assert queries.list(ALICE, owner_view=True, now_ms=now) == []
    assert queries.count() == 1  # hidden, not yet deleted
    assert apply(db, expire_op(NOW + 999)) == 0
    assert apply(db, expire_op(NOW + 1000)) == 1
    assert queries.count() == 0
    assert db.execute("SELECT count(*) FROM memory_vectors").fetchone()[0] == 0
    fts_ok(db)


def test_ingest_purges_expired_items(db):
    add(db, "old", ttl_unix_ms=NOW + 10)
    add(db, "keeps", default_ttl_ms=None)
    add(db, "new", now_ms=NOW + 10)
    texts = {r[0] for r in db.execute("SELECT content_text FROM memory_items")}
    assert texts == {"keeps", "new"}


# --------------------------------------------------------------------------- delete / purge


def _seed(db):
    return {
        "p": add(db, "zebra principal wide"),
        "cli": add(db, "zebra cli", channel="cli"),
        "web": add(db, "zebra web", channel="web"),
        "s1": add(db, "zebra session one", channel="cli", session_id=S1),
        "s2": add(db, "zebra session two", channel="web", session_id=S2),
        "bob": add(db, "zebra bob", principal=BOB, channel="cli", session_id=S1),
    }


def _ids(db, principal=None):
    sql, args = "SELECT memory_ulid FROM memory_items", ()
    if principal:
        sql, args = sql + " WHERE principal = ?", (principal,)
    return {r[0] for r in db.execute(sql, args)}


def test_delete_is_principal_bound(db):
    items = _seed(db)
    assert apply(db, delete_op(items["p"].memory_id, BOB)) is False
    assert items["p"].memory_id in _ids(db)
    assert apply(db, delete_op(items["p"].memory_id, ALICE)) is True
    assert apply(db, delete_op(items["p"].memory_id, ALICE)) is False
    with pytest.raises(InvalidInput):
        delete_op("nope", ALICE)
    assert MemoryQueries(db).search("principal wide", ALICE, now_ms=NOW) == []
    fts_ok(db)


def test_purge_filters(db):
    items = _seed(db)
    assert apply(db, purge_op(ALICE, session_id=S1)) == 1
    assert items["s1"].memory_id not in _ids(db) and items["bob"].memory_id in _ids(db)
    assert apply(db, purge_op(ALICE, channel="web", scopes=["channel"])) == 1
    assert items["s2"].memory_id in _ids(db)
    assert apply(db, purge_op(ALICE, channel="web")) == 1  # the session-two item
    assert apply(db, purge_op(ALICE)) == 2
    assert _ids(db, ALICE) == set() and _ids(db) == {items["bob"].memory_id}
    assert db.execute("SELECT count(*) FROM memory_vectors").fetchone()[0] == 1
    lexical = db.execute(
        "SELECT count(*) FROM memory_items_fts WHERE memory_items_fts MATCH 'zebra'"
    ).fetchone()[0]
    assert lexical == 1
    fts_ok(db)
    with pytest.raises(InvalidInput):
        purge_op(ALICE, scopes=["everything"])


# --------------------------------------------------------------------------- maintenance


def test_retention_policy(db):
    for i in range(6):
        add(db, f"item {i} " + "x" * 100, now_ms=NOW + i * DAY_MS, default_ttl_ms=None)
    add(db, "expiring", now_ms=NOW + 6 * DAY_MS, ttl_unix_ms=NOW + 6 * DAY_MS + 1)
    now = NOW + 7 * DAY_MS
    report = apply(db, retention_op(now, RetentionPolicy(ttl_days=6)))
    assert (report.expired, report.aged_out, report.evicted) == (1, 1, 0)
    report = apply(db, retention_op(now, RetentionPolicy(max_entries=4)))
    assert report.evicted == 1 and report.entries_after == 4
    report = apply(db, retention_op(now, RetentionPolicy(max_bytes=250)))
    assert report.evicted == 2 and report.bytes_after <= 250 and report.changed
    remaining = sorted(r[0] for r in db.execute("SELECT content_text FROM memory_items"))
    assert [t.split()[1] for t in remaining] == ["4", "5"]  # oldest evicted first
    assert not apply(db, retention_op(now, RetentionPolicy(max_entries=10))).changed
    fts_ok(db)
    with pytest.raises(InvalidInput):
        RetentionPolicy(max_entries=-1)


@pytest.mark.parametrize("field", ["max_entries", "max_bytes", "ttl_days"])
def test_retention_policy_rejects_a_bool_for_a_count(field):
    with pytest.raises(InvalidInput, match=f"memory.retention.{field} must be a non-negative integer"):
        RetentionPolicy(**{field: True})


def test_backfill_is_batched_and_resumable(db):
    items = [add(db, f"note number {i}") for i in range(5)]
    db.execute("UPDATE memory_vectors SET embedding_version = 0")
    db.execute("DELETE FROM memory_vectors WHERE memory_ulid = ?", (items[0].memory_id,))
    first = apply(db, backfill_embeddings_op(NOW + 5, limit=2))
    assert (first.updated, first.remaining) == (2, 3)
    second = apply(db, backfill_embeddings_op(NOW + 6, limit=1000))  # clamped to 256
    assert (second.updated, second.remaining) == (3, 0)
    assert apply(db, backfill_embeddings_op(NOW + 7)).updated == 0
    for item in items:
        blob, version, at = db.execute(
            "SELECT embedding_vector, embedding_version, embedded_at_unix_ms FROM memory_vectors"
            " WHERE memory_ulid = ?", (item.memory_id,)).fetchone()
        assert version == 1 and at in (NOW + 5, NOW + 6)
        assert unpack(blob) == pytest.approx(embed(item.content_text), abs=1e-6)


def test_time_arguments_must_be_integers():
    for bad in (1.5, "1", True, None):
        with pytest.raises(InvalidInput):
            build(now_ms=bad)
        with pytest.raises(InvalidInput):
            expire_op(bad)
        with pytest.raises(InvalidInput):
            backfill_embeddings_op(bad)
