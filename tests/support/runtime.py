"""Starting runtimes in tests: a base config merged under each test's own, all stopped
at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import palyra

StartRuntime = Callable[..., palyra.Runtime]


def merged(base: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` merged section by section with ``config`` (config wins)."""
    out = {name: dict(section) for name, section in base.items()}
    for name, section in (config or {}).items():
        out[name] = {**out.get(name, {}), **section}
    return out


def runtimes(tmp_path: Path, base: dict[str, Any]) -> Iterator[StartRuntime]:
    """The body of a ``start_runtime`` fixture (``yield from runtimes(tmp_path, BASE)``).

    ``start_runtime(config, state=...)`` starts a runtime in ``tmp_path / state`` with
    ``base`` merged under ``config``; every runtime still running is stopped at teardown
    (a test may stop one itself and start another on the same state directory)."""
    started: list[palyra.Runtime] = []

    def start(config: dict[str, Any] | None = None, *, state: str = "state") -> palyra.Runtime:
        rt = palyra.Runtime.start(tmp_path / state, merged(base, config))
        started.append(rt)
        return rt

    yield start
    for rt in reversed(started):
        rt.stop()
