"""``palyra doctor``: checks of a state directory that work with the daemon down.

Each check has an id, a severity (``blocking`` stops a healthy start or loses data,
``warning`` does not) and a fix hint. Checks that have a safe repair carry it; repairs
that write to the journal file only run while no runtime holds the state lock.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from palyra.cli.daemon import load_config
from palyra.errors import InvalidInput, PalyraError
from palyra.journal.schema import LATEST_VERSION, current_version
from palyra.journal.store import Reader, db_path
from palyra.statelock import StateLock

WAL_WARN_BYTES = 64 * 1024 * 1024
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


@dataclasses.dataclass
class Finding:
    id: str
    severity: str  # blocking | warning
    ok: bool
    message: str
    fix_hint: str = ""
    repairable: bool = False
    repaired: bool = False


@dataclasses.dataclass
class Doctor:
    state_dir: Path
    config_path: str | None = None
    wal_warn_bytes: int = WAL_WARN_BYTES
    url: str | None = None  # the daemon's HTTP address, probed when a runtime holds the lock

    @property
    def journal(self) -> Path:
        return db_path(self.state_dir)

    def daemon_pid(self) -> int | None:
        return StateLock(self.state_dir).holder_pid()

    # -- checks -----------------------------------------------------------------------

    def check_config(self) -> Finding:
        try:
            load_config(self.config_path)
        except (PalyraError, ValueError) as exc:
            return Finding("config", "blocking", False, str(exc), "fix the file the message names")
        return Finding("config", "blocking", True, f"config {self.config_path or '(defaults)'} is valid")

    def _loose_files(self) -> list[tuple[Path, int]]:
        """Paths readable by group/others that should be private, with the mode they need."""
        loose = []
        if self.state_dir.exists() and stat.S_IMODE(self.state_dir.stat().st_mode) & 0o077:
            loose.append((self.state_dir, PRIVATE_DIR))
        for name in (self.journal.name, "admin.token", self.journal.name + "-wal"):
            path = self.state_dir / name
            if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
                loose.append((path, PRIVATE_FILE))
        return loose

    def check_permissions(self) -> Finding:
        loose = self._loose_files()
        if not loose:
            return Finding("permissions", "blocking", True, "state directory and secrets are private")
        names = ", ".join(f"{p} ({oct(stat.S_IMODE(p.stat().st_mode))})" for p, _ in loose)
        return Finding("permissions", "blocking", False, f"readable by others: {names}",
                       "chmod 700 the directory and 600 its files (palyra doctor --repair)",
                       repairable=True)

    def check_journal(self) -> Finding:
        if not self.journal.exists():
            return Finding("journal_integrity", "blocking", True, "no journal yet (created on first start)")
        try:
            with Reader.inspect(self.journal) as reader:
                result = [row[0] for row in reader.conn.execute("PRAGMA integrity_check")]
        except apsw.Error as exc:
            return Finding("journal_integrity", "blocking", False, f"journal unreadable: {exc}",
                           "restore the state directory from a backup")
        if result != ["ok"]:
            return Finding("journal_integrity", "blocking", False,
                           f"integrity_check: {'; '.join(result[:5])}",
                           "restore the state directory from a backup")
        return Finding("journal_integrity", "blocking", True, "SQLite integrity_check ok")

    def check_chain(self) -> Finding:
        if not self.journal.exists():
            return Finding("journal_chain", "blocking", True, "no journal yet")
        with Reader.inspect(self.journal) as reader:
            report = reader.verify_chain()
        if report.ok:
            return Finding("journal_chain", "blocking", True,
                           f"hash chain ok: {report.events} events, {report.tapes} tapes")
        where = (f"seq {report.first_bad_seq}" if report.first_bad_seq is not None
                 else f"tape {report.first_bad_tape}")
        return Finding("journal_chain", "blocking", False, f"hash chain broken at {where}: {report.reason}",
                       "the journal was edited outside Palyra; restore it from a backup")

    def check_migrations(self) -> Finding:
        if not self.journal.exists():
            return Finding("migrations", "warning", True, "no journal yet")
        with Reader.inspect(self.journal) as reader:
            version = current_version(reader.conn)
        if version > LATEST_VERSION:
            return Finding("migrations", "blocking", False,
                           f"schema v{version} is newer than this Palyra (v{LATEST_VERSION})",
                           "upgrade Palyra")
        ok = version == LATEST_VERSION
        return Finding("migrations", "warning", ok,
                       f"schema v{version}" + ("" if ok else f", v{LATEST_VERSION} applied on next start"),
                       "" if ok else "start the runtime once to migrate")

    def check_wal(self) -> Finding:
        wal = Path(str(self.journal) + "-wal")
        size = wal.stat().st_size if wal.exists() else 0
        ok = size <= self.wal_warn_bytes
        return Finding("wal_size", "warning", ok, f"WAL is {size} bytes",
                       "" if ok else "checkpoint and truncate it (palyra doctor --repair, daemon stopped)",
                       repairable=not ok)

    def check_lock(self) -> Finding:
        pid = self.daemon_pid()
        if pid is None:
            return Finding("state_lock", "warning", True, "no runtime holds the state directory")
        return Finding("state_lock", "warning", True, f"a runtime (pid {pid}) holds the state directory")

    def check_daemon(self) -> Finding:
        pid = self.daemon_pid()
        if pid is None or not self.url:
            return Finding("daemon_reachable", "warning", True,
                           "no runtime is running" if pid is None else "no daemon URL to probe")
        import httpx

        try:
            reply = httpx.get(self.url.rstrip("/") + "/healthz", timeout=2.0)
            ok, detail = reply.status_code == 200, f"HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            ok, detail = False, type(exc).__name__
        return Finding("daemon_reachable", "warning", ok,
                       f"runtime pid {pid}; {self.url} /healthz: {detail}",
                       "" if ok else "the lock holder may be an embedded runtime, or the daemon is hung:"
                                     " check its log, or pass --url")

    def check_admin_token(self) -> Finding:
        ok = (self.state_dir / "admin.token").exists() or bool(os.environ.get("PALYRA_ADMIN_TOKEN"))
        return Finding("admin_token", "warning", ok, "admin token present" if ok else "no admin token",
                       "" if ok else "palyrad creates one on start; or set PALYRA_ADMIN_TOKEN")

    def check_stuck_runs(self) -> Finding:
        if not self.journal.exists() or self.daemon_pid() is not None:
            return Finding("stuck_runs", "warning", True, "no runs to check (or a runtime owns them)")
        with Reader.inspect(self.journal) as reader:
            (n,) = reader.conn.execute(
                "SELECT count(*) FROM orchestrator_runs WHERE state IN ('accepted', 'in_progress')"
            ).fetchone()
        return Finding("stuck_runs", "warning", n == 0,
                       f"{n} run(s) left accepted/in_progress with no runtime",
                       "" if n == 0 else "start the runtime: recovery finishes or fails them")

    def checks(self) -> dict[str, Callable[[], Finding]]:
        return {
            "config": self.check_config, "permissions": self.check_permissions,
            "journal_integrity": self.check_journal, "journal_chain": self.check_chain,
            "migrations": self.check_migrations, "wal_size": self.check_wal,
            "state_lock": self.check_lock, "daemon_reachable": self.check_daemon,
            "admin_token": self.check_admin_token,
            "stuck_runs": self.check_stuck_runs,
        }

    # -- repairs ----------------------------------------------------------------------

    def repair(self, finding: Finding, *, dry_run: bool) -> list[str]:
        """Apply (or with ``dry_run`` describe) the repair of a failed finding."""
        if finding.id == "permissions":
            loose = self._loose_files()
            if not dry_run:
                for path, mode in loose:
                    path.chmod(mode)
            return [f"chmod {oct(mode)} {path}" for path, mode in loose]
        if finding.id == "wal_size":
            if self.daemon_pid() is not None:
                return ["skipped: a runtime holds the state directory; stop it first"]
            if not dry_run:
                conn = apsw.Connection(str(self.journal))
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    conn.close()
            return [f"checkpoint and truncate {self.journal}-wal"]
        return []


def run_doctor(state_dir: str | os.PathLike[str], *, config_path: str | None = None,
               only: list[str] | None = None, skip: list[str] | None = None,
               repair: bool = False, dry_run: bool = False,
               wal_warn_bytes: int = WAL_WARN_BYTES, url: str | None = None) -> dict[str, Any]:
    doctor = Doctor(Path(state_dir), config_path, wal_warn_bytes, url)
    unknown = sorted((set(only or []) | set(skip or [])) - set(doctor.checks()))
    if unknown:
        raise InvalidInput(f"unknown check id(s): {', '.join(unknown)}; known: {', '.join(doctor.checks())}",
                           details={"unknown": unknown})
    selected = {k: v for k, v in doctor.checks().items()
                if (not only or k in only) and k not in (skip or [])}
    results = []
    for check in selected.values():
        finding = check()
        entry = dataclasses.asdict(finding)
        if repair and not finding.ok and finding.repairable:
            entry["repair_actions"] = doctor.repair(finding, dry_run=dry_run)
            if not dry_run:
                after = check()
                entry.update(repaired=after.ok, message_after=after.message)
        results.append(entry)
    unresolved = [r for r in results if not r["ok"] and not r.get("repaired")]
    blocking = [r["id"] for r in unresolved if r["severity"] == "blocking"]
    warnings = [r["id"] for r in unresolved if r["severity"] == "warning"]
    return {"state_dir": str(state_dir), "mode": ("repair_preview" if dry_run else "repair_apply")
            if repair else "diagnostics", "checks": results, "blocking": blocking, "warnings": warnings,
            "ok": not blocking}
