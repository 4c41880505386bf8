"""The doctor's repair steps. Each is planned from a failed finding (what it would do,
whether it needs ``--force``, or why it cannot run now) and applied through a
:class:`~palyra.cli.doctor.recovery.RecoveryRun`, which backs every file up first.

Steps that write inside the state directory's journal or lock file hold the
:class:`~palyra.statelock.StateLock` while they run, so a runtime cannot start
half-way through (and they are refused while one runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

from palyra.cli.doctor import recovery
from palyra.cli.doctor.checks import Doctor, Finding, latest_config_backup
from palyra.cli.doctor.config_template import default_config_toml
from palyra.clock import SYSTEM_CLOCK
from palyra.healing import remediation as rem
from palyra.journal.schema import LATEST_VERSION, current_version
from palyra.journal.store import Operation, Reader, Writer, open_writer_connection
from palyra.orchestrator import store

Apply = Callable[[recovery.RecoveryRun], list[str]]


@dataclasses.dataclass
class Step:
    id: str
    actions: list[str]
    apply: Apply | None = None
    requires_force: bool = False
    blocked: str = ""  # why it cannot run now (nothing is attempted)


@contextlib.contextmanager
def holding_lock(doctor: Doctor) -> Iterator[None]:
    """The state lock for the step's duration; ``Conflict`` names a runtime that has it."""
    lock = doctor.lock
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _runtime_blocks(doctor: Doctor) -> str:
    pid = doctor.daemon_pid()
    return "" if pid is None else f"a runtime (pid {pid}) holds the state directory; stop it first"


def _journal_needs_force(doctor: Doctor) -> bool:
    return recovery.journal_bytes(doctor.journal) > recovery.JOURNAL_BACKUP_LIMIT


def plan_config_initialize(doctor: Doctor) -> Step:
    path = Path(doctor.config_path or "palyra.toml")

    def apply(run: recovery.RecoveryRun) -> list[str]:
        with run.change(path, "created"):
            recovery.write_private(path, default_config_toml().encode())
        return [f"wrote a default config to {path} (0600)"]

    blocked = "" if path.absolute().parent.is_dir() else f"directory {path.absolute().parent} does not exist"
    return Step("config.initialize", [f"write a default commented palyra.toml to {path}"], apply,
                blocked=blocked)


def plan_config_restore(doctor: Doctor) -> Step:
    path = Path(doctor.config_path or "")
    backup = latest_config_backup(doctor.state_dir, str(path))

    def apply(run: recovery.RecoveryRun) -> list[str]:
        assert backup is not None
        with run.change(path, "modified"):
            recovery.write_private(path, backup.read_bytes(), recovery.file_mode(path) or 0o600)
        return [f"restored {path} from {backup}"]

    return Step("config.restore_latest_backup", [f"restore {path} from {backup}"], apply,
                blocked="" if backup else "no good backup of the config")


def plan_permissions(doctor: Doctor) -> Step:
    loose = doctor.loose_files()

    def apply(run: recovery.RecoveryRun) -> list[str]:
        for path, mode in loose:
            with run.change(path, "chmod"):
                path.chmod(mode)
        return actions

    actions = [f"chmod {oct(mode)} {path}" for path, mode in loose]
    return Step("permissions.tighten", actions, apply)


def plan_wal(doctor: Doctor) -> Step:
    journal = doctor.journal

    def apply(run: recovery.RecoveryRun) -> list[str]:
        note = ("a checkpoint moves committed pages from the WAL into the database; the content"
                " is unchanged, so there is nothing to back up or undo")
        with holding_lock(doctor), run.change(journal, "modified", kind="wal_checkpoint", note=note):
            recovery.checkpoint(journal)
        return actions

    actions = [f"checkpoint and truncate {journal}-wal"]
    return Step("wal.checkpoint_truncate", actions, apply, blocked=_runtime_blocks(doctor))


def plan_stale_lock(doctor: Doctor) -> Step:
    lock = doctor.lock

    def apply(run: recovery.RecoveryRun) -> list[str]:
        # Taking the lock first means no runtime can be starting on this file meanwhile;
        # the unlinked inode is released harmlessly, a new start creates a fresh file.
        with run.change(lock.path, "deleted"), holding_lock(doctor):
            lock.path.unlink()
        return actions

    actions = [f"remove {lock.path} (names pid {lock.recorded_pid()}, not running)"]
    return Step("state_lock.remove_stale", actions, apply, blocked=_runtime_blocks(doctor))


def _finish(cancel_requested: bool) -> tuple[str, str, str]:
    """Self-healing's choice for a stale run (``remediation.action_for``)."""
    return rem.run_finish(rem.CANCEL_RUN if cancel_requested else rem.FAIL_RUN)


def plan_stuck_runs(doctor: Doctor) -> Step:
    """Finish each stuck run exactly as self-healing's watchdog does (``_remediate`` in
    ``actors/self_healing.py``): ``finish_run_from_outside`` with ``run_finish`` of
    ``fail_run`` (``cancel_run`` when a cancel was asked for), in one transaction."""
    runs = doctor.live_runs()
    config = doctor.settings_or_defaults()

    def finish_ops() -> list[tuple[str, Operation]]:
        now = SYSTEM_CLOCK.now_ms()
        ops = []
        for run_id, session_id, cancel_requested in doctor.live_runs():  # re-read under the lock
            state, reason, termination = _finish(cancel_requested)
            ops.append((f"{state} run {run_id}: {reason}", store.finish_run_from_outside(
                run_id, session_id, state, reason=reason, termination_reason=termination,
                now_ms=now, max_payload_bytes=config.journal.max_payload_bytes)))
        return ops

    def apply(run: recovery.RecoveryRun) -> list[str]:
        with holding_lock(doctor):
            ops = finish_ops()
            with run.change(doctor.journal, "modified", kind="sqlite"):
                conn = open_writer_connection(doctor.state_dir, config.journal)
                try:
                    (outcome,) = Writer(conn, config.journal).apply([[op for _, op in ops]])
                finally:
                    conn.close()
            if not outcome.ok:
                raise outcome.error or RuntimeError("journal write failed")
        return [what for what, _ in ops]

    blocked = _runtime_blocks(doctor)
    if not blocked and doctor.journal.exists():
        with Reader.inspect(doctor.journal) as reader:
            if current_version(reader.conn) != LATEST_VERSION:
                blocked = "the journal schema is not current: start the runtime once to migrate"
    actions = [f"{_finish(cancel)[0]} run {run_id}: {_finish(cancel)[1]}" for run_id, _, cancel in runs]
    return Step("runs.remediate_stuck", actions, apply, requires_force=_journal_needs_force(doctor),
                blocked=blocked)


PLANNERS: dict[str, Callable[[Doctor], Step]] = {
    "config.initialize": plan_config_initialize,
    "config.restore_latest_backup": plan_config_restore,
    "permissions.tighten": plan_permissions,
    "wal.checkpoint_truncate": plan_wal,
    "state_lock.remove_stale": plan_stale_lock,
    "runs.remediate_stuck": plan_stuck_runs,
}


def plan(doctor: Doctor, finding: Finding) -> Step:
    return PLANNERS[finding.repair](doctor)
