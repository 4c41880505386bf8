"""The optional column filters of a list query, as one SQL ``WHERE`` clause."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def where(
    equal: Mapping[str, Any], within: Mapping[str, Collection[Any]] | None = None
) -> tuple[str, list[Any]]:
    """``WHERE col = ? AND … AND col IN (?, …)`` and its arguments, in that order.

    A filter left out by the caller is None in ``equal`` or empty in ``within``; with no
    filter at all the clause is ``""``. Column names are the caller's, never input.
    """
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    for column, values in (within or {}).items():
        if values:
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            args.extend(values)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args
