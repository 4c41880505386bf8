"""Real servers for tests: ``palyrad`` in a subprocess, or the app on hypercorn in a thread.

Both bind ``127.0.0.1:0`` (a free port, read back from the server) and are bounded:
every wait has a deadline and teardown kills what did not stop.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import trio

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
URL_LINE = re.compile(r"palyrad: serving (http://\S+)")


def palyrad_cmd(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "palyra.cli.daemon", "--state-dir", str(state),
            "--http", "127.0.0.1:0", *extra]


def palyrad_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PALYRA_LOG_LEVEL": "WARNING", **extra}


def lines_of(stream: Any) -> queue.Queue[str | None]:
    """Lines of a pipe, pumped by a daemon thread (None at EOF)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_url(lines: queue.Queue[str | None], seen: list[str],
                 timeout: float = START_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        assert line is not None, f"palyrad exited before serving: {seen}"
        seen.append(line)
        match = URL_LINE.search(line)
        if match:
            return match.group(1)


class Palyrad:
    """One ``palyrad`` process over ``state`` (a context manager; SIGKILL on the way out
    if it is still running)."""

    def __init__(self, state: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.state = state
        self.proc = subprocess.Popen(palyrad_cmd(state, *extra), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=palyrad_env(**(env or {})))
        self.out = lines_of(self.proc.stdout)
        self.err = lines_of(self.proc.stderr)  # drained: a chatty daemon never blocks
        self.seen: list[str] = []
        try:
            self.url = wait_for_url(self.out, self.seen)
        except BaseException:
            self.kill()
            raise
        self.token = (state / "admin.token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.auth, timeout=timeout)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then the exit code (the rest of stdout lands in ``seen``)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            line = self.out.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                break
            self.seen.append(line)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> Palyrad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class ServedApp:
    """An app served by hypercorn on trio in a background thread (for synchronous tests,
    such as Hypothesis ones, that want a real socket without a subprocess)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.url = ""
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._shutdown: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="served-app", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        import hypercorn.trio
        from hypercorn.config import Config

        cfg = Config()
        cfg.bind = ["127.0.0.1:0"]
        cfg.accesslog = None
        cfg.graceful_timeout = 2.0
        self._token = trio.lowlevel.current_trio_token()
        self._shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(functools.partial(
                hypercorn.trio.serve, self.app, cfg, shutdown_trigger=self._shutdown.wait))
            self.url = binds[0]
            self._ready.set()

    def __enter__(self) -> ServedApp:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or not self.url:
            raise RuntimeError(f"the app did not start serving: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._shutdown is not None:
            try:
                self._token.run_sync_soon(self._shutdown.set)
            except trio.RunFinishedError:
                pass
        self._thread.join(STOP_TIMEOUT)
        assert not self._thread.is_alive(), "the served app did not stop"
        if self._error is not None and not exc[0]:
            raise self._error
