"""The FTS query builder: output grammar, and no input ever errors or widens in FTS5."""

from __future__ import annotations

import re

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra.memory.query import build_fts_query, flatten, fts_terms, snippet
from tests.memory.support import open_db

GRAMMAR = re.compile(r'"[a-z0-9_]+"(?:( | OR )"[a-z0-9_]+")*')

SPECIALS = [
    '"', "'", '""', "NEAR", "NEAR(", "NEAR/2", "AND", "OR", "NOT", "*", "(", ")", ":",
    "content_text:", "{content_text}:", "memory_items_fts:", "rank:", "^", "-", "+", ",",
    "\\", "\x00", "\n", "\t", "alpha", "beta", "é", "İ", "\u212a", "ß", "日本", "🙂",
    "\u202e", "\ufeff", "_", "__", "0", "x" * 40,
]
fts_like = st.lists(st.sampled_from(SPECIALS), max_size=12).map(
    lambda parts: "".join(parts)
) | st.lists(st.sampled_from(SPECIALS), max_size=12).map(" ".join)


@pytest.fixture(scope="module")
def fts_conn(tmp_path_factory):
    conn = open_db(tmp_path_factory.mktemp("fts"))
    for i, text in enumerate(
        ["alpha beta", "gamma delta", "alpha or gamma together", "near not and", "x_y z"]
    ):
        conn.execute(
            "INSERT INTO memory_items(memory_ulid, principal, scope, source, content_text,"
            " content_hash, created_at_unix_ms, updated_at_unix_ms)"
            " VALUES (?, 'p', 'principal', 'manual', ?, 'h', 0, 0)",
            (f"01HF7YAT0000000000000000{i:02d}", text),
        )
    yield conn
    conn.close()


def _match(conn: apsw.Connection, query: str) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT rowid FROM memory_items_fts WHERE memory_items_fts MATCH ? ORDER BY rowid",
        (query,),
    )]


def test_builder_examples():
    assert build_fts_query("") is None
    assert build_fts_query("  !!! ((( ") is None
    assert build_fts_query("Hello, World") == '"hello" "world"'
    assert build_fts_query("a OR b", any_term=True) == '"a" OR "or" OR "b"'
    assert build_fts_query('content_text:"x" NEAR(y*)') == '"content_text" "x" "near" "y"'
    assert build_fts_query("dup dup DUP") == '"dup"'
    assert fts_terms("café ñandú") == ["caf", "and"]
    assert len(fts_terms(" ".join(f"t{i}" for i in range(500)))) == 64


def test_snippet_is_bounded_and_centred_on_first_term():
    text = ("filler " * 100) + "NEEDLE in the haystack\n" + ("tail " * 100)
    cut = snippet(text, ["needle"], 200)
    assert len(cut) <= 200 and "NEEDLE" in cut and "\n" not in cut
    assert snippet("short\ntext", ["x"], 200) == "short text"
    assert flatten("a\x00b\r\n\tc") == "a b c"


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | fts_like, any_term=st.booleans())
def test_no_input_raises_an_fts_error(fts_conn, text, any_term):
    query = build_fts_query(text, any_term=any_term)
    if query is None:
        assert not re.search(r"[A-Za-z0-9_]", text.lower())
        return
    assert GRAMMAR.fullmatch(query), query
    _match(fts_conn, query)  # must not raise apsw.SQLError (fts5: syntax error)


@settings(max_examples=200, deadline=None)
@given(text=fts_like)
def test_and_query_never_matches_more_than_its_plain_terms(fts_conn, text):
    """Whatever operators the text spells, a match contains every sanitised term."""
    query = build_fts_query(text)
    if query is None:
        return
    docs = {
        r[0]: set(re.findall(r"[a-z0-9]+", r[1]))
        for r in fts_conn.execute("SELECT item_rowid, content_text FROM memory_items")
    }
    for rowid in _match(fts_conn, query):
        for term in fts_terms(text):
            assert set(term.strip("_").split("_")) - {""} <= docs[rowid], (text, rowid)


def test_raw_operator_text_would_have_been_dangerous(fts_conn):
    """Sanity: the unsanitised strings really are FTS5 syntax (errors or widening)."""
    with pytest.raises(apsw.SQLError):
        _match(fts_conn, 'alpha "')
    assert len(_match(fts_conn, "alpha OR gamma")) == 3  # widened by OR
    assert _match(fts_conn, build_fts_query("alpha OR gamma")) == [3]
    assert len(_match(fts_conn, "alp*")) == 2
    assert _match(fts_conn, build_fts_query("alp*")) == []
