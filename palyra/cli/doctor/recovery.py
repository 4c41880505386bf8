"""Doctor runs: backups and a manifest for every file a repair changes, and rollback.

A run lives in ``<state_dir>/recovery/runs/<run_id>/``: ``manifest.json`` and
``backups/``. Each manifest entry names one changed path, the kind of change
(``modified | created | deleted | chmod``), its backup and its SHA-256 and mode before
and after, so ``palyra doctor --rollback RUN_ID`` can put the exact bytes back and
refuse when a file moved on since the repair.

The SQLite journal is the exception to byte copies. Its committed content is split
between the database file and its WAL, and any connection may checkpoint one into the
other, so the raw file bytes are neither a consistent copy nor a stable fingerprint.
A journal entry therefore carries, besides the raw file hashes, the SHA-256 of an
online-backup image (``content_*_sha256``): the image of unchanged content is the same
whatever the checkpoint state, so rollback can tell "edited since" from "checkpointed
since". Journals over :data:`JOURNAL_BACKUP_LIMIT` are not copied; such a step needs
``--force`` and its entry says it cannot be rolled back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import orjson

from palyra.errors import InvalidInput, NotFound
from palyra.ids import is_ulid, new_ulid

RUNS_DIR = Path("recovery") / "runs"
MANIFEST = "manifest.json"
JOURNAL_BACKUP_LIMIT = 256 * 1024 * 1024
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
CHANGES = ("modified", "created", "deleted", "chmod")


class NeedsForce(InvalidInput):
    """A step would change something that cannot be backed up."""


def sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def journal_bytes(journal: Path) -> int:
    """Database plus WAL: what a backup has to copy."""
    return sum(p.stat().st_size for p in (journal, Path(f"{journal}-wal")) if p.exists())


def _online_backup(source: Path, dest: Path, dest_flags: int) -> apsw.Connection:
    """Copy ``source`` into ``dest`` through SQLite's online backup API (a consistent
    image, WAL included); returns the open destination connection."""
    src = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READONLY)
    out = apsw.Connection(str(dest), flags=dest_flags)
    try:
        with out.backup("main", src, "main") as backup:
            backup.step(-1)
    except BaseException:
        out.close()
        raise
    finally:
        src.close()
    return out


def sqlite_copy(source: Path, dest: Path) -> None:
    _online_backup(source, dest, apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE).close()


def sqlite_restore(image: Path, journal: Path) -> None:
    """Write ``image`` back into the live journal through SQLite (the WAL stays coherent
    for any other connection), then fold the WAL in."""
    _online_backup(image, journal, apsw.SQLITE_OPEN_READWRITE).close()
    checkpoint(journal)


def checkpoint(journal: Path) -> None:
    """Move the WAL's committed pages into the database file and truncate the WAL."""
    conn = apsw.Connection(str(journal), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def sqlite_content_sha256(journal: Path, scratch: Path) -> str:
    """SHA-256 of the journal's online-backup image (see the module doc)."""
    tmp = scratch / f".image-{new_ulid()}"
    try:
        sqlite_copy(journal, tmp)
        return sha256_file(tmp) or ""
    finally:
        tmp.unlink(missing_ok=True)


def write_private(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` atomically with ``data`` (a reader never sees half a file, and a
    failed write leaves no temp file behind)."""
    tmp = path.with_name(f".{path.name}.{new_ulid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as fh:  # write() loops until every byte is out
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
            fh.write(data)
            fh.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def private_dirs(base: Path, *parts: str) -> Path:
    """``base/parts...``, every level created or tightened to 0700 (backups hold secrets)."""
    path = base
    for part in parts:
        path = path / part
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        path.chmod(PRIVATE_DIR)
    return path


@dataclasses.dataclass
class Entry:
    path: str
    change: str  # modified | created | deleted | chmod
    backup_path: str | None
    before_sha256: str | None
    after_sha256: str | None = None
    before_mode: int | None = None
    after_mode: int | None = None
    kind: str = "file"  # file | sqlite | wal_checkpoint (content unchanged: nothing to undo)
    restorable: bool = True
    note: str = ""
    content_before_sha256: str | None = None  # sqlite: online-backup image digests
    content_after_sha256: str | None = None


class RecoveryRun:
    """One ``--repair`` run: backs a file up before a step changes it, then records the
    result. Nothing is written until the first change (a run that changes nothing leaves
    no directory behind)."""

    def __init__(self, state_dir: Path, *, force: bool = False, mode: str = "repair_apply") -> None:
        self.state_dir = state_dir.absolute()  # the manifest's paths must not depend on the cwd
        self.run_id = new_ulid()
        self.force = force
        self.dir = self.state_dir / RUNS_DIR / self.run_id
        self.entries: list[Entry] = []
        self.steps: list[dict[str, Any]] = []
        self.kept: list[dict[str, Any]] = []  # known-good copies, never rolled back
        self.created_at_unix_ms = int(time.time() * 1000)
        self.mode = mode

    @property
    def used(self) -> bool:
        return bool(self.entries or self.steps or self.kept)

    def keep(self, path: Path, newest_sha256: str | None) -> None:
        """Keep a known-good copy of ``path`` (the config) for a later
        ``config.restore_latest_backup``, unless the newest kept copy has the same bytes."""
        path = path.absolute()
        digest = sha256_file(path)
        if digest is None or digest == newest_sha256:
            return
        backup = private_dirs(self.state_dir, *RUNS_DIR.parts, self.run_id, "backups") / f"kept-{path.name}"
        write_private(backup, path.read_bytes())
        self.kept.append({"path": str(path), "backup_path": str(backup), "sha256": digest})

    def _backup_path(self, path: Path) -> Path:
        return private_dirs(self.state_dir, *RUNS_DIR.parts, self.run_id, "backups") / (
            f"{len(self.entries):03d}-{path.name}")

    @contextlib.contextmanager
    def change(self, path: Path, change: str, *, kind: str = "file",
               restorable: bool = True, note: str = "") -> Iterator[Entry]:
        """Back ``path`` up, let the caller change it, record the outcome (also when the
        change raised half-way, so what did happen can still be rolled back)."""
        if change not in CHANGES:
            raise ValueError(change)
        path = path.absolute()
        entry = Entry(str(path), change, None, sha256_file(path), before_mode=file_mode(path),
                      kind=kind, restorable=restorable, note=note)
        if kind == "sqlite" and restorable:
            self._backup_journal(path, entry)
        elif path.is_file() and change in ("modified", "deleted"):  # chmod keeps the bytes
            backup = self._backup_path(path)
            write_private(backup, path.read_bytes())
            entry.backup_path = str(backup)
        try:
            yield entry
        finally:
            entry.after_sha256, entry.after_mode = sha256_file(path), file_mode(path)
            # A journal write may land in the WAL only, so the db file's hash cannot tell:
            # journal entries are always kept.
            unchanged = kind == "file" and entry.after_sha256 == entry.before_sha256 \
                and entry.after_mode == entry.before_mode and path.exists() == (change != "created")
            if unchanged:  # e.g. the step was refused before it touched anything
                if entry.backup_path:
                    Path(entry.backup_path).unlink(missing_ok=True)
            else:
                if entry.backup_path and kind == "sqlite":
                    entry.content_after_sha256 = sqlite_content_sha256(path, self.dir)
                self.entries.append(entry)
                self.save()

    def _backup_journal(self, journal: Path, entry: Entry) -> None:
        size = journal_bytes(journal)
        if size > JOURNAL_BACKUP_LIMIT:
            if not self.force:
                raise NeedsForce(f"the journal is {size} bytes, over the {JOURNAL_BACKUP_LIMIT}-byte"
                                 " backup limit; pass --force to change it without a rollback")
            entry.restorable = False
            entry.note = f"journal of {size} bytes not backed up (--force): no rollback"
            return
        backup = self._backup_path(journal)
        sqlite_copy(journal, backup)
        backup.chmod(PRIVATE_FILE)
        entry.backup_path = str(backup)
        entry.content_before_sha256 = sha256_file(backup)

    def step(self, step_id: str, status: str, actions: list[str]) -> None:
        self.steps.append({"id": step_id, "status": status, "actions": actions})
        if self.entries:
            self.save()

    def manifest(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "mode": self.mode, "state_dir": str(self.state_dir.absolute()),
                "created_at_unix_ms": self.created_at_unix_ms, "steps": self.steps,
                "entries": [dataclasses.asdict(e) for e in self.entries], "kept": self.kept,
                "rolled_back_at_unix_ms": None}

    def save(self) -> None:
        private_dirs(self.state_dir, *RUNS_DIR.parts, self.run_id)
        write_private(manifest_path(self.state_dir, self.run_id),
                      orjson.dumps(self.manifest(), option=orjson.OPT_INDENT_2))


# -- reading runs back ---------------------------------------------------------------------


def run_ids(state_dir: Path) -> list[str]:
    """Doctor runs with a manifest, newest first (ULIDs sort by time)."""
    root = state_dir / RUNS_DIR
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if is_ulid(p.name) and manifest_path(state_dir, p.name).is_file()),
                  reverse=True)


def manifest_path(state_dir: Path, run_id: str) -> Path:
    return state_dir / RUNS_DIR / run_id / MANIFEST


def load_manifest(state_dir: Path, run_id: str) -> dict[str, Any]:
    if not is_ulid(run_id):
        raise InvalidInput(f"{run_id!r} is not a doctor run id")
    path = manifest_path(state_dir, run_id)
    if not path.is_file():
        raise NotFound(f"no doctor run {run_id} in {state_dir}", details={"run_id": run_id})
    return orjson.loads(path.read_bytes())
