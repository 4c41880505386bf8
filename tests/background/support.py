"""Builders for background task tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from palyra.background.tasks import BackgroundTask
from palyra.ids import new_ulid
from palyra.records import Run

T0 = 1_700_000_000_000
SESSION = new_ulid(T0)


def make_task(**changes: Any) -> BackgroundTask:
    base = BackgroundTask(
        task_id=new_ulid(T0), task_kind="background_prompt", session_id=SESSION,
        owner_principal="user:ops", device_id="dev-1", created_at_unix_ms=T0,
        updated_at_unix_ms=T0, input_text="do the thing",
    )
    return dataclasses.replace(base, **changes)


def make_run(state: str = "in_progress", **changes: Any) -> Run:
    base = Run(run_id=new_ulid(T0), session_id=SESSION, state=state, created_at_unix_ms=T0,
               updated_at_unix_ms=T0)
    return dataclasses.replace(base, **changes)
