"""Builders for learning tests."""

from __future__ import annotations

from typing import Any

from palyra.ids import new_ulid
from palyra.learning.extract import RunLearningInput

T0 = 1_700_000_000_000
SESSION = new_ulid(T0)


def run_input(*user_texts: str, **kw: Any) -> RunLearningInput:
    args: dict[str, Any] = dict(run_id=new_ulid(T0), session_id=SESSION,
                                owner_principal="user:ada", device_id="dev-1",
                                user_texts=user_texts)
    args.update(kw)
    return RunLearningInput(**args)
