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

from palyra.errors import Conflict, InvalidInput, NotFound
from palyra.ids import is_ulid, new_ulid
from palyra.statelock import LOCK_NAME, StateLock

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


def sqlite_copy(source: Path, dest: Path) -> None:
    """Copy ``source`` into ``dest`` through SQLite's online backup (consistent, WAL included)."""
    src = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READONLY)
    out = apsw.Connection(str(dest))
    try:
        with out.backup("main", src, "main") as backup:
            backup.step(-1)
    finally:
        out.close()
        src.close()


def sqlite_restore(image: Path, journal: Path) -> None:
    """Write ``image`` back into the live journal through SQLite (the WAL stays coherent
    for any other connection), then fold the WAL in."""
    src = apsw.Connection(str(image), flags=apsw.SQLITE_OPEN_READONLY)
    out = apsw.Connection(str(journal), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        with out.backup("main", src, "main") as backup:
            backup.step(-1)
        out.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        out.close()
        src.close()


def sqlite_content_sha256(journal: Path, scratch: Path) -> str:
    """SHA-256 of the journal's online-backup image (see the module doc)."""
    tmp = scratch / f".image-{new_ulid()}"
    try:
        sqlite_copy(journal, tmp)
        return sha256_file(tmp) or ""
    finally:
        tmp.unlink(missing_ok=True)


def write_private(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` atomically with ``data`` (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{new_ulid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


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
        write_private(self.dir / MANIFEST, orjson.dumps(self.manifest(), option=orjson.OPT_INDENT_2))


# -- reading runs back ---------------------------------------------------------------------


def run_ids(state_dir: Path) -> list[str]:
    """Doctor runs with a manifest, newest first (ULIDs sort by time)."""
    root = state_dir / RUNS_DIR
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if is_ulid(p.name) and (p / MANIFEST).is_file()),
                  reverse=True)


def load_manifest(state_dir: Path, run_id: str) -> dict[str, Any]:
    if not is_ulid(run_id):
        raise InvalidInput(f"{run_id!r} is not a doctor run id")
    path = state_dir / RUNS_DIR / run_id / MANIFEST
    if not path.is_file():
        raise NotFound(f"no doctor run {run_id} in {state_dir}", details={"run_id": run_id})
    return orjson.loads(path.read_bytes())


def _drifted(entry: dict[str, Any], path: Path, scratch: Path) -> bool:
    """Has ``path`` changed since the repair wrote it?"""
    if entry["kind"] == "wal_checkpoint":
        return False  # nothing to undo, so nothing to protect
    if entry["kind"] == "sqlite":
        return (not path.exists()
                or sqlite_content_sha256(path, scratch) != entry["content_after_sha256"])
    if path.name == LOCK_NAME and entry["change"] == "deleted" and path.exists():
        # The StateLock this rollback holds re-created it with our pid: still "no lock".
        return path.read_text(errors="replace").strip() not in ("", str(os.getpid()))
    if entry["change"] == "chmod":  # the bytes are not ours to protect, only the mode
        return file_mode(path) != entry["after_mode"]
    return sha256_file(path) != entry["after_sha256"] or (
        entry["after_mode"] is not None and file_mode(path) != entry["after_mode"])


def _restore(entry: dict[str, Any], path: Path) -> str:
    if entry["kind"] == "wal_checkpoint":
        return f"keep {path}: {entry['note']}"
    if entry["change"] == "created":
        path.unlink(missing_ok=True)
        return f"delete {path} (the repair created it)"
    if entry["change"] == "chmod":
        path.chmod(entry["before_mode"])
        return f"chmod {oct(entry['before_mode'])} {path}"
    if entry["kind"] == "sqlite":
        sqlite_restore(Path(entry["backup_path"]), path)
        path.chmod(entry["before_mode"])
        return f"restore {path} from its online backup"
    write_private(path, Path(entry["backup_path"]).read_bytes(), entry["before_mode"])
    return f"restore {path} ({entry['change']} by the repair)"


def rollback(state_dir: Path, run_id: str, *, dry_run: bool, force: bool) -> dict[str, Any]:
    """Undo a doctor run, newest change first. Refuses (``Conflict``) when a file changed
    since the repair unless ``force``, and while a runtime holds the state directory when
    the journal or the lock file is involved."""
    manifest = load_manifest(state_dir, run_id)
    if manifest.get("rolled_back_at_unix_ms"):
        raise Conflict(f"doctor run {run_id} was already rolled back")
    entries = list(reversed(manifest["entries"]))
    needs_lock = any((e["kind"] == "sqlite" and e["restorable"]) or Path(e["path"]).name == LOCK_NAME for e in entries)
    lock = StateLock(state_dir)
    if needs_lock and not dry_run:
        lock.acquire()  # Conflict names the runtime's pid
    elif needs_lock and (pid := lock.holder_pid()) is not None:
        raise Conflict(f"a runtime (pid {pid}) holds {state_dir}; stop it before rolling back",
                       details={"holder_pid": pid})
    try:
        scratch = state_dir / RUNS_DIR / run_id
        drifted = [e["path"] for e in entries if _drifted(e, Path(e["path"]), scratch)]
        lost = [e["path"] for e in entries if not e["restorable"]]
        if (drifted or lost) and not force:
            why = ([f"changed since the repair: {', '.join(drifted)}"] if drifted else []) + (
                [f"no backup: {', '.join(lost)}"] if lost else [])
            raise Conflict(f"refusing to roll back {run_id}: {'; '.join(why)} (--force to go on)",
                           details={"changed": drifted, "not_restorable": lost})
        actions = []
        for e in entries:
            if not e["restorable"]:
                actions.append(f"skip {e['path']}: {e['note']}")
            elif dry_run:
                actions.append(f"would restore {e['path']} ({e['change']})")
            else:
                actions.append(_restore(e, Path(e["path"])))
        if not dry_run:
            manifest["rolled_back_at_unix_ms"] = int(time.time() * 1000)
            write_private(state_dir / RUNS_DIR / run_id / MANIFEST,
                          orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    finally:
        lock.release()
    return {"run_id": run_id, "state_dir": str(state_dir),
            "mode": "rollback_preview" if dry_run else "rollback_apply",
            "actions": actions, "changed_since_repair": drifted, "ok": True}

