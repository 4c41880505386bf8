"""Fixtures for the orchestrator tests: a runtime per test with fast supervision."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import palyra

FAST: dict[str, dict[str, Any]] = {"supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0}}

StartRuntime = Callable[..., palyra.Runtime]


def merged(config: dict[str, Any] | None) -> dict[str, Any]:
    """FAST merged section by section with the test's own config."""
    out = {name: dict(section) for name, section in FAST.items()}
    for name, section in (config or {}).items():
        out[name] = {**out.get(name, {}), **section}
    return out


@pytest.fixture
def start_runtime(tmp_path) -> Iterator[StartRuntime]:
    """``start_runtime(config)`` starts a runtime in ``tmp_path``; all are stopped at teardown."""
    started: list[palyra.Runtime] = []

    def start(config: dict[str, Any] | None = None, *, state: str = "state") -> palyra.Runtime:
        rt = palyra.Runtime.start(tmp_path / state, merged(config))
        started.append(rt)
        return rt

    yield start
    for rt in reversed(started):
        rt.stop()


@pytest.fixture
def runtime(start_runtime: StartRuntime) -> palyra.Runtime:
    return start_runtime()
