"""``palyra doctor --rollback RUN_ID``: put back what a doctor run changed, newest
change first, after checking that nothing changed since (see :mod:`.recovery`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from palyra.cli.doctor.recovery import (
    RUNS_DIR,
    file_mode,
    load_manifest,
    manifest_path,
    sha256_file,
    sqlite_content_sha256,
    sqlite_restore,
    write_private,
)
from palyra.errors import Conflict
from palyra.statelock import LOCK_NAME, StateLock


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
            write_private(manifest_path(state_dir, run_id), orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    finally:
        lock.release()
    return {"run_id": run_id, "state_dir": str(state_dir),
            "mode": "rollback_preview" if dry_run else "rollback_apply",
            "actions": actions, "changed_since_repair": drifted, "ok": True}

