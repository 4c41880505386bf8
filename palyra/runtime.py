"""The embeddable runtime: ``with palyra.Runtime.start(state_dir) as rt: ...``.

This façade is the one module of ``palyra/`` that assembles the layers above it: it
builds the supervision tree out of the actors, starts it, and offers the embedding
API. Everything it knows durably lives in the journal under ``state_dir``.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import pykka

from actors.journal import JOURNAL, JournalActor, JournalClient, SupervisionRecorder
from actors.services import RuntimeServices
from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.config import Config
from palyra.errors import RuntimeStopped
from palyra.journal.store import (
    ChainReport,
    EventDraft,
    Reader,
    Writer,
    append_op,
    open_writer_connection,
    prepare_state_dir,
)
from palyra.statelock import StateLock
from supervisors import Chaos, ChildExit, ChildSpec, SupervisionEvent, start_root, supervisor_spec
from supervisors.supervised import Supervised, actor_of

log = logging.getLogger("palyra.runtime")

_running: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _stop_all_runtimes() -> None:
    for rt in list(_running):
        rt.stop()


@dataclasses.dataclass(frozen=True)
class StopReport:
    clean: bool
    reason: str
    leaked: tuple[str, ...] = ()
    unrecorded_events: int = 0


def build_tree(config: Config) -> ChildSpec:
    """The daemon's supervision tree; later subsystems fill the empty slots."""
    sup = config.supervision
    child = {
        "probe_interval": sup.probe_interval,
        "probe_timeout": sup.probe_timeout,
        "shutdown_timeout": sup.shutdown_timeout,
    }
    limits = {"max_restarts": sup.max_restarts, "max_seconds": sup.max_seconds}
    return supervisor_spec(
        "root",
        [
            ChildSpec(name=JOURNAL, actor=JournalActor, **child),
            supervisor_spec("core", [], strategy="rest_for_one", **limits),
            supervisor_spec("surfaces", [], **limits),
        ],
        **limits,
    )


class Runtime:
    """A running Palyra: a supervision tree over one state directory."""

    def __init__(self, state_dir: Path, config: Config, clock: Clock) -> None:
        self.state_dir = state_dir
        self.config = config
        self.clock = clock
        self.services = RuntimeServices(state_dir=state_dir, config=config, clock=clock)
        self.journal = JournalClient(
            self.services.names, config.journal, clock, retry_for=config.supervision.address_retry_for
        )
        self.services.journal = self.journal
        self._recorder = SupervisionRecorder(self.journal)
        self.services.emit = self._recorder
        self.chaos = Chaos(self.services.names)
        self._lock = threading.Lock()
        self._root: Any = None
        self._stopping = False
        self.stopped = threading.Event()
        self.stop_report: StopReport | None = None
        self._lock_file: StateLock | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        state_dir: str | os.PathLike[str],
        config: Config | dict[str, Any] | None = None,
        *,
        clock: Clock | None = None,
    ) -> Runtime:
        cfg = config if isinstance(config, Config) else Config.from_mapping(config)
        path = prepare_state_dir(state_dir)
        lock = StateLock(path)
        lock.acquire()
        rt = cls(path, cfg, clock or SYSTEM_CLOCK)
        rt._lock_file = lock
        try:
            rt._root = start_root(build_tree(cfg), rt.services, on_exit=rt._on_root_exit)
        except Exception:
            rt._recorder.close()
            rt.services.timers.stop()
            lock.release()
            raise
        _running.add(rt)
        rt.journal.append("runtime.started", {"pid": os.getpid(), "state_dir": str(rt.state_dir)})
        return rt

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, reason: str = "stop requested") -> StopReport:
        """Stop the tree in reverse start order within the shutdown timeouts."""
        with self._lock:
            if self._stopping:
                self.stopped.wait(120)
                return self.stop_report  # type: ignore[return-value]
            self._stopping = True
        root = self._root
        if root is not None and root.ref.is_alive():
            try:
                root.ref.stop(timeout=120)
            except pykka.Timeout:
                self.services.table.note_leak("root (did not stop within 120s)")
        return self._finish(reason, clean=True)

    def _on_root_exit(self, exit_: ChildExit) -> None:
        if exit_.reason == "normal":
            return
        why = f"root supervisor gave up: {exit_.error}"
        log.error("%s; shutting the runtime down", why)
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        # Not in the root's own thread: it is still unwinding.
        threading.Thread(
            target=self._finish, args=(why, False), name="palyra-shutdown", daemon=True
        ).start()

    def _finish(self, reason: str, clean: bool) -> StopReport:
        unrecorded = self._recorder.close()
        leaked = self._leaked_threads()
        self.services.timers.stop()
        final = [
            EventDraft.build(e.kind, dataclasses.asdict(e), actor="system", clock=self.clock)
            for e in unrecorded
        ]
        final.append(
            EventDraft.build(
                "runtime.stopped" if clean else "runtime.shutdown",
                {"reason": reason, "clean": clean, "leaked": list(leaked)},
                actor="system",
                clock=self.clock,
            )
        )
        self._write_directly(final)
        for actor in _supervised_actors():
            actor.release_hang()  # let abandoned threads finish instead of lingering
        self.stop_report = StopReport(clean and not leaked, reason, tuple(leaked), 0)
        if self._lock_file is not None:
            self._lock_file.release()
        self.stopped.set()
        _running.discard(self)
        return self.stop_report

    def _write_directly(self, drafts: list[EventDraft]) -> None:
        """After the tree is down this process is the only writer left."""
        try:
            conn = open_writer_connection(self.state_dir, self.config.journal, self.clock)
        except Exception:
            log.exception("could not open the journal to record shutdown")
            return
        try:
            Writer(conn, self.config.journal, self.clock).apply([[append_op(d) for d in drafts]])
        finally:
            conn.close()

    def _leaked_threads(self) -> list[str]:
        leaked = list(self.services.table.leaked)
        for actor in _supervised_actors():
            ours = actor.ctx is not None and actor.ctx.services is self.services
            if ours and not actor.actor_stopped.is_set():
                leaked.append(f"{actor.ctx.path} (still running)")
        return leaked

    # -- embedding API ------------------------------------------------------------------

    def _check_running(self) -> None:
        if self.stopped.is_set():
            raise RuntimeStopped("the runtime is stopped")

    def actors(self) -> list[dict[str, Any]]:
        """Every supervised actor: name, path, alive, restarts, incarnation, ..."""
        return sorted(self.services.table.snapshot(), key=lambda row: row["path"])

    def actor(self, name: str) -> dict[str, Any] | None:
        info = self.services.table.get(name)
        return info.snapshot() if info else None

    def verify_journal(self) -> ChainReport:
        """Recompute the journal's hash chain (and every run tape's) from disk."""
        with Reader(self.state_dir, self.config.journal) as reader:
            return reader.verify_chain()

    def recent_events(self, limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        with Reader(self.state_dir, self.config.journal) as reader:
            return reader.recent(limit, kind)

    def supervision_events(self) -> list[SupervisionEvent]:
        return list(self._recorder.pending)


def _supervised_actors() -> list[Supervised]:
    found = []
    for ref in pykka.ActorRegistry.get_all():
        actor = actor_of(ref)
        if actor is not None:
            found.append(actor)
    return found
