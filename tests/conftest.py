from __future__ import annotations

from collections.abc import Iterator

import pytest

import palyra

FAST = {
    "supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0, "max_restarts": 50, "max_seconds": 5.0}
}


@pytest.fixture
def runtime(tmp_path) -> Iterator[palyra.Runtime]:
    rt = palyra.Runtime.start(tmp_path / "state", FAST)
    yield rt
    rt.stop()
