"""The doctor's checks: each reads the state directory (never writes it) and returns a
:class:`Finding` with an id, a severity (``blocking`` stops a healthy start or loses
data, ``warning`` does not), a fix hint and, when one exists, the id of its repair step.
They work with the daemon down; with a runtime up they only read (SQLite WAL readers
never block the writer).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from pathlib import Path

import apsw

from palyra.access.tokens import ADMIN_TOKEN_FILE
from palyra.cli.doctor import recovery
from palyra.config import Config, load_config
from palyra.errors import PalyraError
from palyra.healing import remediation as rem
from palyra.healing.incidents import WATCHDOG
from palyra.journal.schema import LATEST_VERSION, current_version
from palyra.journal.store import Reader, db_path
from palyra.redaction import redact_message, redact_url
from palyra.statelock import StateLock

WAL_WARN_BYTES = 64 * 1024 * 1024
PROVIDER_TIMEOUT_S = 3.0
PRIVATE_DIR, PRIVATE_FILE = recovery.PRIVATE_DIR, recovery.PRIVATE_FILE
OPENAI_KINDS = ("openai_compatible", "openai-compatible", "openai")
LIVE_RUN_STATES = ("accepted", "in_progress")
# What loading a config can raise: our own errors, a dataclass check, or the file itself
# (a directory, unreadable).
CONFIG_ERRORS = (PalyraError, ValueError, OSError)


@dataclasses.dataclass
class Finding:
    id: str
    severity: str  # blocking | warning
    ok: bool
    message: str
    fix_hint: str = ""
    repair: str = ""  # the id of the repair step that fixes it, if any
    repairable: bool = False
    repaired: bool = False

    def __post_init__(self) -> None:
        self.repairable = bool(self.repair)


@dataclasses.dataclass
class Doctor:
    state_dir: Path
    config_path: str | None = None
    wal_warn_bytes: int = WAL_WARN_BYTES
    url: str | None = None  # the daemon's HTTP address, probed when a runtime holds the lock

    @property
    def journal(self) -> Path:
        return db_path(self.state_dir)

    @property
    def lock(self) -> StateLock:
        return StateLock(self.state_dir)

    def daemon_pid(self) -> int | None:
        return self.lock.holder_pid()

    def config(self) -> Config:
        return load_config(self.config_path)

    def settings_or_defaults(self) -> Config:
        """The effective config, or the defaults when it does not load (the config check
        reports that; the other checks still run)."""
        try:
            return self.config()
        except CONFIG_ERRORS:
            return Config()

    # -- checks -----------------------------------------------------------------------

    def check_config(self) -> Finding:
        path = self.config_path
        if path and not Path(path).exists():
            return Finding("config", "blocking", False, f"config file {path} does not exist",
                           "palyra doctor --repair writes a default commented palyra.toml there",
                           repair="config.initialize")
        try:
            self.config()
        except CONFIG_ERRORS as exc:
            backup = latest_config_backup(self.state_dir, path) if path else None
            if backup is None:
                return Finding("config", "blocking", False, str(exc), "fix the file the message names")
            return Finding("config", "blocking", False, str(exc),
                           f"fix it, or restore the last good copy {backup} (palyra doctor --repair)",
                           repair="config.restore_latest_backup")
        return Finding("config", "blocking", True, f"config {path or '(defaults)'} is valid")

    def loose_files(self) -> list[tuple[Path, int]]:
        """Paths readable by group/others that should be private, with the mode they need."""
        loose = []
        if self.state_dir.exists() and stat.S_IMODE(self.state_dir.stat().st_mode) & 0o077:
            loose.append((self.state_dir, PRIVATE_DIR))
        for name in (self.journal.name, ADMIN_TOKEN_FILE, self.journal.name + "-wal"):
            path = self.state_dir / name
            if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
                loose.append((path, PRIVATE_FILE))
        return loose

    def check_permissions(self) -> Finding:
        loose = self.loose_files()
        if not loose:
            return Finding("permissions", "blocking", True, "state directory and secrets are private")
        names = ", ".join(f"{p} ({oct(stat.S_IMODE(p.stat().st_mode))})" for p, _ in loose)
        return Finding("permissions", "blocking", False, f"readable by others: {names}",
                       "chmod 700 the directory and 600 its files (palyra doctor --repair)",
                       repair="permissions.tighten")

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
                       "the journal was edited outside Palyra; restore it from a backup"
                       " (or palyra doctor --rollback RUN_ID if a doctor run did it)")

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
                       repair="" if ok else "wal.checkpoint_truncate")

    def check_lock(self) -> Finding:
        pid = self.daemon_pid()
        if pid is not None:
            return Finding("state_lock", "warning", True, f"a runtime (pid {pid}) holds the state directory")
        recorded = self.lock.recorded_pid()
        if recorded is None or pid_running(recorded):
            return Finding("state_lock", "warning", True, "no runtime holds the state directory")
        return Finding("state_lock", "warning", False, f"stale lock file (pid {recorded} not running)",
                       "harmless for a start (the lock is an flock), but it names a runtime that"
                       " died without stopping: palyra doctor --repair removes it",
                       repair="state_lock.remove_stale")

    def check_daemon(self) -> Finding:
        pid = self.daemon_pid()
        if pid is None or not self.url:
            return Finding("daemon_reachable", "warning", True,
                           "no runtime is running" if pid is None else "no daemon URL to probe")
        ok, detail = http_get(self.url.rstrip("/") + "/healthz", timeout=2.0)
        return Finding("daemon_reachable", "warning", ok,
                       f"runtime pid {pid}; {self.url} /healthz: {detail}",
                       "" if ok else "the lock holder may be an embedded runtime, or the daemon is hung:"
                                     " check its log, or pass --url")

    def check_admin_token(self) -> Finding:
        ok = (self.state_dir / ADMIN_TOKEN_FILE).exists() or bool(os.environ.get("PALYRA_ADMIN_TOKEN"))
        return Finding("admin_token", "warning", ok, "admin token present" if ok else "no admin token",
                       "" if ok else "palyrad creates one on start; or set PALYRA_ADMIN_TOKEN")

    def live_runs(self) -> list[tuple[str, str, bool]]:
        """``(run_id, session_id, cancel_requested)`` of runs not yet terminal."""
        if not self.journal.exists():
            return []
        with Reader.inspect(self.journal) as reader:
            rows = reader.conn.execute(
                "SELECT run_ulid, session_ulid, cancel_requested FROM orchestrator_runs"
                f" WHERE state IN {LIVE_RUN_STATES!r} ORDER BY run_ulid").fetchall()
        return [(run_id, session_id, bool(cancel)) for run_id, session_id, cancel in rows]

    def check_stuck_runs(self) -> Finding:
        runs = self.live_runs()
        pid = self.daemon_pid()
        if pid is not None:
            healing = self.settings_or_defaults().healing
            mode = rem.HealingModes(healing.mode, dict(healing.modes)).mode_for(WATCHDOG)
            return Finding("stuck_runs", "warning", True,
                           f"{len(runs)} run(s) active under runtime pid {pid}; its self-healing"
                           f" (watchdog {mode}) fails a run silent for {healing.run_stale_ms} ms")
        if not runs:
            return Finding("stuck_runs", "warning", True, "no run left accepted/in_progress")
        return Finding("stuck_runs", "warning", False,
                       f"{len(runs)} run(s) left accepted/in_progress with no runtime",
                       "starting the runtime resumes them (recovery); palyra doctor --repair instead"
                       " fails them the way self-healing does",
                       repair="runs.remediate_stuck")

    def check_provider(self) -> Finding:
        try:
            provider = self.config().provider
        except CONFIG_ERRORS:
            return Finding("provider_reachable", "warning", False, "not probed: the config does not load",
                           "see the config check")
        kind = provider.kind.strip().lower()
        if kind == "deterministic":
            return Finding("provider_reachable", "warning", True, "deterministic provider (built in)")
        if kind not in OPENAI_KINDS:
            return Finding("provider_reachable", "warning", False, f"unknown provider kind {kind!r}",
                           f"use one of deterministic, {', '.join(OPENAI_KINDS)}")
        ok, message = probe_models(provider.options)
        return Finding("provider_reachable", "warning", ok, message,
                       "" if ok else "check provider.base_url, the network and provider.api_key")

    def checks(self) -> dict[str, Callable[[], Finding]]:
        return {
            "config": self.check_config, "permissions": self.check_permissions,
            "journal_integrity": self.check_journal, "journal_chain": self.check_chain,
            "migrations": self.check_migrations, "wal_size": self.check_wal,
            "state_lock": self.check_lock, "daemon_reachable": self.check_daemon,
            "admin_token": self.check_admin_token, "stuck_runs": self.check_stuck_runs,
            "provider_reachable": self.check_provider,
        }


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def http_get(url: str, *, timeout: float, headers: dict[str, str] | None = None) -> tuple[bool, str]:
    """``(2xx?, "HTTP <status>" or the error's class name)``. Never ``str(exc)``: an
    httpx error may quote the request, and the request may carry a key."""
    import httpx

    try:
        reply = httpx.get(url, headers=headers, timeout=timeout, follow_redirects=False, trust_env=False)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return False, type(exc).__name__
    return 200 <= reply.status_code < 300, f"HTTP {reply.status_code}"


def probe_models(options: dict[str, object]) -> tuple[bool, str]:
    """``GET <base_url>/models`` with the configured key; the message never holds the key."""
    from palyra.providers.openai_compatible import DEFAULT_BASE_URL

    base = str(options.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
    key = str(options.get("api_key") or "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ok, detail = http_get(base + "/models", timeout=PROVIDER_TIMEOUT_S, headers=headers)
    message = redact_message(f"{redact_url(base)}/models: {detail}")
    return ok, message.replace(key, "<redacted>") if key else message


def latest_config_backup(state_dir: Path, config_path: str) -> Path | None:
    """The newest copy of ``config_path`` a doctor run kept that still loads."""
    target = str(Path(config_path).absolute())
    for run_id in recovery.run_ids(state_dir):
        manifest = recovery.load_manifest(state_dir, run_id)
        for item in [*reversed(manifest.get("entries", [])), *manifest.get("kept", [])]:
            backup = item.get("backup_path")
            if item["path"] != target or not backup or not Path(backup).is_file():
                continue
            try:
                load_config(backup)
            except CONFIG_ERRORS:
                continue  # the backup of a broken file: not a restore target
            return Path(backup)
    return None
