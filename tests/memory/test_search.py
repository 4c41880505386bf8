"""Search: scope isolation, TTL hiding, FTS injection, hybrid ranking."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra.clock import ManualClock
from palyra.errors import InvalidInput, PayloadTooLarge
from palyra.memory.query import build_fts_query, fts_terms
from palyra.memory.store import (
    DAY_MS,
    MAX_QUERY_BYTES,
    WEIGHT_LEXICAL,
    WEIGHT_RECENCY,
    WEIGHT_VECTOR,
    MemoryQueries,
    _visibility,
    normalize_scopes,
)
from tests.memory.support import ALICE, BOB, NOW, S1, S2, add, open_db

LATER = NOW + 1000


@pytest.fixture
def db(tmp_path):
    conn = open_db(tmp_path)
    yield conn
    conn.close()


def visible(item, principal, channel, session_id, scopes=("session", "channel", "principal")):
    """The isolation rule, written independently of the SQL."""
    if item.principal != principal or item.scope not in scopes:
        return False
    if item.scope == "channel":
        return channel is not None and item.channel == channel
    if item.scope == "session":
        return session_id is not None and item.session_id == session_id
    return True


# --------------------------------------------------------------------------- isolation


@pytest.fixture
def seeded(db):
    items = {
        "p": add(db, "zebra principal wide", channel="cli", scope="principal"),
        "cli": add(db, "zebra cli note", channel="cli"),
        "web": add(db, "zebra web note", channel="web"),
        "s1": add(db, "zebra session one", channel="cli", session_id=S1),
        "s2": add(db, "zebra session two", channel="web", session_id=S2),
        "bob": add(db, "zebra bob secret", principal=BOB),
        "bob_s1": add(db, "zebra bob session", principal=BOB, channel="cli", session_id=S1),
    }
    return db, items


@pytest.mark.parametrize(
    ("principal", "channel", "session_id", "scopes", "expected"),
    [
        (ALICE, None, None, None, {"p"}),
        (ALICE, "cli", None, None, {"p", "cli"}),
        (ALICE, "cli", S1, None, {"p", "cli", "s1"}),
        (ALICE, "web", S2, None, {"p", "web", "s2"}),
        (ALICE, None, S1, None, {"p", "s1"}),
        (ALICE, "web", S1, None, {"p", "web", "s1"}),
        (ALICE, "cli", S1, ["session"], {"s1"}),
        (ALICE, "cli", S1, ["channel", "session"], {"cli", "s1"}),
        (ALICE, None, None, ["session"], set()),
        (BOB, "cli", S1, None, {"bob", "bob_s1"}),
        ("user:mallory", "cli", S1, None, set()),
        ("user:ALICE", "cli", S1, None, set()),
    ],
)
def test_scope_isolation(seeded, principal, channel, session_id, scopes, expected):
    db, items = seeded
    queries = MemoryQueries(db)
    names = {v.memory_id: k for k, v in items.items()}
    hits = queries.search("zebra", principal, channel=channel, session_id=session_id,
                          scopes=scopes, limit=64, now_ms=LATER)
    assert {names[h.item.memory_id] for h in hits} == expected
    listed = queries.list(principal, channel=channel, session_id=session_id, scopes=scopes,
                          now_ms=LATER)
    assert {names[i.memory_id] for i in listed} == expected
    for name, item in items.items():
        got = queries.get(item.memory_id, principal, channel=channel, session_id=session_id,
                          scopes=scopes, now_ms=LATER)
        assert (got is not None) == (name in expected), name


def test_owner_view_is_still_principal_exact(seeded):
    db, items = seeded
    queries = MemoryQueries(db)
    mine = {i.memory_id for i in queries.list(ALICE, owner_view=True, now_ms=LATER)}
    assert mine == {items[k].memory_id for k in ("p", "cli", "web", "s1", "s2")}
    cli = {i.memory_id for i in queries.list(ALICE, owner_view=True, channel="cli",
                                            now_ms=LATER)}
    assert cli == {items[k].memory_id for k in ("p", "cli", "s1")}
    assert queries.get(items["s1"].memory_id, ALICE, owner_view=True, now_ms=LATER)
    assert queries.get(items["s1"].memory_id, BOB, owner_view=True, now_ms=LATER) is None


def test_list_pages(db):
    made = [add(db, f"n{i}") for i in range(7)]
    queries = MemoryQueries(db)
    page1 = queries.list(ALICE, limit=3, now_ms=LATER)
    page2 = queries.list(ALICE, limit=3, after_id=page1[-1].memory_id, now_ms=LATER)
    page3 = queries.list(ALICE, limit=3, after_id=page2[-1].memory_id, now_ms=LATER)
    assert page1 + page2 + page3 == made
    assert len(queries.list(ALICE, limit=10**6, now_ms=LATER)) == 7


CORPUS = [
    (ALICE, None, None, "alpha beta"),
    (ALICE, None, None, "gamma delta"),
    (ALICE, None, None, "alpha or gamma together"),
    (ALICE, "cli", None, "alpha channel cli"),
    (ALICE, "cli", S1, "alpha in session one"),
    (ALICE, "web", S2, "gamma in session two"),
    (BOB, None, None, "alpha beta gamma bob content_text near not and or"),
    (BOB, "cli", S1, "alpha gamma bob session"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    conn = open_db(tmp_path_factory.mktemp("corpus"))
    items = [add(conn, text, principal=p, channel=c, session_id=s) for p, c, s, text in CORPUS]
    yield conn, items
    conn.close()


def _assert_safe(conn, items, query, principal, channel, session_id, **kw):
    queries = MemoryQueries(conn)
    hits = queries.search(query, principal, channel=channel, session_id=session_id,
                          limit=64, now_ms=LATER, **kw)
    for hit in hits:
        assert visible(hit.item, principal, channel, session_id), (query, hit.item)
        assert 0.0 <= hit.score <= 1.0 + 1e-9
    terms = fts_terms(query)
    fts = build_fts_query(query)
    if fts is not None:
        vis = _visibility(principal, channel, session_id, normalize_scopes(None), LATER)
        for item, _ in queries.lexical_candidates(fts, vis):
            words = set(re.findall(r"[a-z0-9]+", item.content_text.lower()))
            assert all(set(t.split("_")) - {""} <= words for t in terms), (query, item)
    return hits


INJECTIONS = [
    '"', '""', '"alpha', 'alpha"', "'alpha'", "alpha OR gamma", "alpha AND NOT beta",
    "NOT beta", "NEAR(alpha gamma)", "alpha NEAR/2 gamma", "content_text:alpha",
    "content_text : gamma", "{content_text}: alpha", "memory_items_fts:alpha", "rank:1",
    "alp*", "*", "(alpha", "alpha)", "((alpha OR gamma) AND bob)", "^alpha", "-alpha",
    "alpha + beta", "'; DROP TABLE memory_items; --", "\x00alpha", "alpha\u202egamma",
    "ａｌｐｈａ", "ALPHA", "Alpha\nOR\ngamma", "bob", "principal:user:bob alpha",
    "alpha OR principal", "🙂 日本語 émoji", "x" * 4000,
]


@pytest.mark.parametrize("query", INJECTIONS)
@pytest.mark.parametrize(("channel", "session_id"), [(None, None), ("cli", S1), ("web", S2)])
def test_injection_attempts_never_error_or_widen(corpus, query, channel, session_id):
    conn, items = corpus
    _assert_safe(conn, items, query, ALICE, channel, session_id)
    _assert_safe(conn, items, query, ALICE, channel, session_id, any_term=True)


def test_injection_specific_outcomes(corpus):
    conn, items = corpus
    queries = MemoryQueries(conn)
    vis = _visibility(ALICE, None, None, normalize_scopes(None), LATER)

    def lexical(q):
        return {i.content_text for i, _ in queries.lexical_candidates(build_fts_query(q), vis)}

    assert lexical("alpha OR gamma") == {"alpha or gamma together"}  # OR is a word
    assert lexical("alp*") == set()  # no prefix widening
    assert lexical("content_text:gamma") == set()  # no column filter
    assert lexical("NOT beta") == set()
    assert lexical("ALPHA") == {"alpha beta", "alpha or gamma together"}
    assert "bob" not in " ".join(h.item.content_text for h in queries.search(
        "bob alpha gamma", ALICE, channel="cli", session_id=S1, limit=64, now_ms=LATER))


@settings(max_examples=150, deadline=None)
@given(
    query=st.text(max_size=80)
    | st.lists(st.sampled_from(["alpha", "gamma", "OR", "NOT", '"', "*", "(", ")", "bob",
                                "content_text:", "NEAR", "séssion", "one"]),
               max_size=8).map(" ".join),
    who=st.sampled_from([(ALICE, None, None), (ALICE, "cli", S1), (ALICE, "web", S2),
                         (BOB, "cli", S1), (BOB, None, None), ("user:eve", "cli", S1)]),
)
def test_property_every_hit_is_visible_to_the_reader(corpus, query, who):
    conn, items = corpus
    _assert_safe(conn, items, query, *who)


# --------------------------------------------------------------------------- ranking


def test_more_relevant_first_and_stable(db):
    weak = add(db, "meeting notes: we talked about lunch, the weather, the roadmap, hiring,"
                   " budgets, and at some point someone said rollback maybe")
    strong = add(db, "rollback plan: rollback the deploy, then rollback the schema")
    add(db, "unrelated grocery list")
    queries = MemoryQueries(db)
    hits = queries.search("rollback", ALICE, now_ms=LATER)
    assert [h.item for h in hits[:2]] == [strong, weak]
    assert hits[0].lexical_score == 1.0 and 0 < hits[1].lexical_score < 1
    for _ in range(3):
        assert queries.search("rollback", ALICE, now_ms=LATER) == hits


def test_score_is_the_specified_hybrid(db):
    add(db, "kubernetes cluster upgrade runbook", now_ms=NOW - 2 * DAY_MS)
    add(db, "deploy kubernetes with helm", now_ms=NOW)
    hits = MemoryQueries(db).search("deploy kubernetes", ALICE, now_ms=NOW)
    assert len(hits) == 2
    for h in hits:
        expected = WEIGHT_LEXICAL * h.lexical_score + WEIGHT_VECTOR * h.vector_score \
            + WEIGHT_RECENCY * h.recency_score
        assert h.score == pytest.approx(expected)
    top, vector_only = hits
    assert top.lexical_score == 1.0 and top.recency_score == 1.0
    # no lexical match (AND of both terms fails) but found through the embedding
    assert vector_only.lexical_score == 0.0 and vector_only.vector_score > 0.0
    assert vector_only.recency_score == pytest.approx(1 / 3)
    assert (WEIGHT_LEXICAL, WEIGHT_VECTOR, WEIGHT_RECENCY) == (0.55, 0.35, 0.10)


def test_embedding_breaks_a_lexical_tie(db):
    # Identical FTS tokens (so identical bm25), but only one has the whitespace token
    # "zeta" the query embeds. The first-inserted one would win a pure tie.
    punctuated = add(db, "zeta, alpha beta")
    exact = add(db, "zeta alpha beta")
    hits = MemoryQueries(db).search("zeta", ALICE, now_ms=NOW)
    assert [h.item for h in hits] == [exact, punctuated]
    assert hits[0].lexical_score == hits[1].lexical_score == 1.0
    assert hits[0].vector_score > hits[1].vector_score


def test_recency_orders_otherwise_equal_items(db):
    old = add(db, "same words here", now_ms=NOW - 10 * DAY_MS)
    new = add(db, "same words here", now_ms=NOW)
    hits = MemoryQueries(db).search("same words", ALICE, now_ms=NOW)
    assert [h.item for h in hits] == [new, old]


def test_limits_min_score_and_bad_arguments(db):
    for i in range(70):
        add(db, f"common term {i}")
    queries = MemoryQueries(db)
    assert len(queries.search("common", ALICE, limit=1000, now_ms=NOW)) == 64
    assert len(queries.search("common", ALICE, limit=0, now_ms=NOW)) == 1
    hits = queries.search("common", ALICE, limit=64, min_score=0.2, now_ms=NOW)
    assert hits and all(h.score >= 0.2 for h in hits)
    assert queries.search("common", ALICE, min_score=1.0, now_ms=NOW + 10 * DAY_MS) == []
    assert queries.search("", ALICE, now_ms=NOW) == []
    assert queries.search("   ", ALICE, now_ms=NOW) == []
    with pytest.raises(PayloadTooLarge):
        queries.search("q" * (MAX_QUERY_BYTES + 1), ALICE, now_ms=NOW)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(InvalidInput):
            queries.search("common", ALICE, min_score=bad, now_ms=NOW)
    with pytest.raises(InvalidInput):
        queries.search("common", ALICE, scopes=[], now_ms=NOW)
    with pytest.raises(InvalidInput):
        queries.search("common", "", now_ms=NOW)
    with pytest.raises(InvalidInput):
        queries.get("not-a-ulid", ALICE)


def test_clock_is_used_when_now_is_not_given(db):
    clock = ManualClock(NOW)
    item = add(db, "clocked zebra", ttl_unix_ms=NOW + 5000)
    queries = MemoryQueries(db, clock)
    assert queries.get(item.memory_id, ALICE) == item
    clock.advance(5)
    assert queries.get(item.memory_id, ALICE) is None
    assert queries.search("zebra", ALICE) == []


def test_snippet_is_around_the_first_term(db):
    add(db, ("filler words " * 40) + "the NEEDLE is here " + ("tail " * 60))
    [hit] = MemoryQueries(db).search("needle", ALICE, now_ms=NOW)
    assert len(hit.snippet) <= 200 and "NEEDLE" in hit.snippet
