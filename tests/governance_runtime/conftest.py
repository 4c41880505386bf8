"""Fixtures for the governance tests that drive real runs: a runtime per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import palyra
from tests.governance_runtime.support import BASE
from tests.support.runtime import StartRuntime, runtimes


@pytest.fixture
def start_runtime(tmp_path) -> Iterator[StartRuntime]:
    """``start_runtime(config, state=...)``: a runtime with :data:`BASE` under ``config``
    (see :func:`tests.support.runtime.runtimes`)."""
    yield from runtimes(tmp_path, BASE)


@pytest.fixture
def runtime(start_runtime: StartRuntime) -> palyra.Runtime:
    return start_runtime()
