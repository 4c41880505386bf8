"""Injection-proof FTS5 query building and snippets (spec §2.5, §7).

User text never reaches FTS5 syntax: it is lower-cased, every character outside
``[A-Za-z0-9_]`` becomes a space, and each remaining term is emitted as a double-quoted
string. A quoted string of ``[a-z0-9_]`` characters is always a plain phrase to FTS5, so
``AND``/``OR``/``NOT``/``NEAR``, ``*`` prefixes, ``^`` anchors, ``col:`` filters,
parentheses and quotes in the input can neither raise a syntax error nor change the
query's meaning. Terms are joined by spaces (implicit AND, as upstream); ``any_term``
joins them with ``OR`` instead.

Consequence worth knowing: non-ASCII letters are dropped (``café`` -> ``caf``), so
lexical search is effectively ASCII-only; the vector branch still matches such words.
"""

from __future__ import annotations

import re

MAX_FTS_TERMS = 64

_NON_TERM = re.compile(r"[^a-z0-9_]+")
_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def fts_terms(text: str, max_terms: int = MAX_FTS_TERMS) -> list[str]:
    """The distinct sanitised terms of ``text`` in first-seen order (at most ``max_terms``)."""
    seen: dict[str, None] = {}
    for term in _NON_TERM.sub(" ", text.lower()).split():
        if term not in seen:
            seen[term] = None
            if len(seen) >= max_terms:
                break
    return list(seen)


def build_fts_query(
    text: str, *, any_term: bool = False, max_terms: int = MAX_FTS_TERMS
) -> str | None:
    """An FTS5 MATCH expression for ``text``, or None when it has no searchable term."""
    terms = fts_terms(text, max_terms)
    if not terms:
        return None
    return (" OR " if any_term else " ").join(f'"{t}"' for t in terms)


def flatten(text: str) -> str:
    """One line: control characters dropped, whitespace runs collapsed to one space."""
    return _WHITESPACE.sub(" ", _CONTROL.sub(" ", text)).strip()


def snippet(text: str, terms: list[str], max_chars: int = 200) -> str:
    """At most ``max_chars`` of ``text`` (flattened) around the first query term found."""
    flat = flatten(text)
    if len(flat) <= max_chars:
        return flat
    pos = -1
    for term in terms:
        match = re.search(rf"(?<![a-z0-9]){re.escape(term)}", flat, re.IGNORECASE)
        if match:
            pos = match.start()
            break
    start = 0 if pos < 0 else max(0, pos - max_chars // 4)
    start = min(start, len(flat) - max_chars)
    return flat[start : start + max_chars].strip()
