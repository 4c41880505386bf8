"""Field checks shared by the domain modules.

Each check raises :class:`~palyra.errors.InvalidInput` whose message starts with the
field name and whose ``details["field"]`` names it, so every surface reports a bad
field the same way.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from palyra.errors import InvalidInput


def bad(field: str, message: str) -> InvalidInput:
    """``InvalidInput("<field> <message>")`` naming ``field`` in its details."""
    return InvalidInput(f"{field} {message}", details={"field": field})


def is_int(value: Any) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool`` (JSON ``true`` must not pass for 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def non_negative_int(value: Any, field: str) -> int:
    """``value`` if it is an integer >= 0; else "must be an integer" / "must not be negative"."""
    if not is_int(value):
        raise bad(field, "must be an integer")
    if value < 0:
        raise bad(field, "must not be negative")
    return value


def non_empty_text(value: Any, field: str) -> str:
    """``value`` if it is a string with something besides white space in it."""
    if not isinstance(value, str) or not value.strip():
        raise bad(field, "must be a non-empty string")
    return value
