"""Fixtures for the orchestrator tests: a runtime per test with fast supervision."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import palyra
from tests.support.runtime import StartRuntime, runtimes

FAST: dict[str, dict[str, Any]] = {"supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0}}


@pytest.fixture
def start_runtime(tmp_path) -> Iterator[StartRuntime]:
    """``start_runtime(config)`` starts a runtime in ``tmp_path``; all are stopped at teardown."""
    yield from runtimes(tmp_path, FAST)


@pytest.fixture
def runtime(start_runtime: StartRuntime) -> palyra.Runtime:
    return start_runtime()
