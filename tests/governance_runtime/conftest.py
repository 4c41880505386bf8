"""Fixtures for the governance tests that drive real runs: a runtime per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import palyra
from tests.governance_runtime.support import BASE, merged

StartRuntime = Callable[..., palyra.Runtime]


@pytest.fixture
def start_runtime(tmp_path) -> Iterator[StartRuntime]:
    """``start_runtime(config, state=...)`` starts a runtime in ``tmp_path / state`` with
    :data:`BASE` merged under ``config``; every runtime still running is stopped at teardown
    (a test may stop one itself and start another on the same state directory)."""
    started: list[palyra.Runtime] = []

    def start(config: dict[str, Any] | None = None, *, state: str = "state") -> palyra.Runtime:
        rt = palyra.Runtime.start(tmp_path / state, merged(BASE, config))
        started.append(rt)
        return rt

    yield start
    for rt in reversed(started):
        rt.stop()


@pytest.fixture
def runtime(start_runtime: StartRuntime) -> palyra.Runtime:
    return start_runtime()
