"""``palyra doctor``: check a state directory, repair it with backups, roll a repair back.

Modes: ``diagnostics`` (checks only), ``repair_preview`` (``--dry-run``: what each
repair would do; nothing is written), ``repair_apply`` (``--repair``: each change is
backed up and recorded in ``<state_dir>/recovery/runs/<run_id>/manifest.json``),
``rollback_preview`` and ``rollback_apply`` (``--rollback RUN_ID``).

The checks are in :mod:`.checks`, the repair steps in :mod:`.repairs`, backups,
manifests and rollback in :mod:`.recovery`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import apsw

from palyra.cli.doctor import recovery, repairs, rollback
from palyra.cli.doctor.checks import WAL_WARN_BYTES, Doctor, Finding, latest_config_backup
from palyra.errors import InvalidInput, PalyraError

__all__ = ["WAL_WARN_BYTES", "Doctor", "Finding", "run_doctor", "run_rollback"]


def _repair(doctor: Doctor, finding: Finding, run: recovery.RecoveryRun | None,
            force: bool) -> dict[str, Any]:
    """Plan the finding's repair step and, unless previewing (``run`` None), apply it."""
    step = repairs.plan(doctor, finding)
    out: dict[str, Any] = {"repair_step": step.id, "requires_force": step.requires_force}
    if step.blocked:
        status, actions = "blocked", [f"skipped: {step.blocked}"]
    elif step.requires_force and not force:
        status, actions = "needs_force", [f"skipped: {step.id} cannot be backed up; pass --force"]
    elif run is None:
        status, actions = "planned", step.actions
    else:
        assert step.apply is not None
        try:
            status, actions = "applied", step.apply(run)
        except (PalyraError, OSError, apsw.Error) as exc:  # e.g. Conflict: a runtime took the lock
            status, actions = "failed", [f"failed: {exc}"]  # what did change is in the manifest
        run.step(step.id, status, actions)
    return {**out, "repair_status": status, "repair_actions": actions}


def run_doctor(state_dir: str | os.PathLike[str], *, config_path: str | None = None,
               only: list[str] | None = None, skip: list[str] | None = None,
               repair: bool = False, dry_run: bool = False, force: bool = False,
               wal_warn_bytes: int = WAL_WARN_BYTES, url: str | None = None) -> dict[str, Any]:
    doctor = Doctor(Path(state_dir), config_path, wal_warn_bytes, url)
    unknown = sorted((set(only or []) | set(skip or [])) - set(doctor.checks()))
    if unknown:
        raise InvalidInput(f"unknown check id(s): {', '.join(unknown)}; known: {', '.join(doctor.checks())}",
                           details={"unknown": unknown})
    selected = {k: v for k, v in doctor.checks().items()
                if (not only or k in only) and k not in (skip or [])}
    run = recovery.RecoveryRun(doctor.state_dir, force=force) if repair and not dry_run else None
    results = []
    for check in selected.values():
        finding = check()
        entry = dataclasses.asdict(finding)
        if repair and not finding.ok and finding.repair:
            entry.update(_repair(doctor, finding, run, force))
            if run is not None and entry["repair_status"] == "applied":
                after = check()
                entry.update(repaired=after.ok, message_after=after.message)
        results.append(entry)
    report: dict[str, Any] = {"state_dir": str(state_dir), "checks": results, "run_id": None,
                              "mode": ("repair_preview" if dry_run else "repair_apply")
                              if repair else "diagnostics"}
    if run is not None:
        _keep_good_config(doctor, results, run)
        if run.used and doctor.state_dir.is_dir():
            run.save()
            report["run_id"] = run.run_id
    unresolved = [r for r in results if not r["ok"] and not r.get("repaired")]
    blocking = [r["id"] for r in unresolved if r["severity"] == "blocking"]
    warnings = [r["id"] for r in unresolved if r["severity"] == "warning"]
    return {**report, "blocking": blocking, "warnings": warnings, "ok": not blocking}


def _keep_good_config(doctor: Doctor, results: list[dict[str, Any]], run: recovery.RecoveryRun) -> None:
    """A repair run keeps a copy of a config that loads, so a later broken edit has a
    ``config.restore_latest_backup`` target."""
    config = next((r for r in results if r["id"] == "config"), None)
    if not doctor.config_path or config is None or not (config["ok"] or config.get("repaired")):
        return
    newest = latest_config_backup(doctor.state_dir, doctor.config_path)
    run.keep(Path(doctor.config_path), recovery.sha256_file(newest) if newest else None)


def run_rollback(state_dir: str | os.PathLike[str], run_id: str, *, dry_run: bool = False,
                 force: bool = False) -> dict[str, Any]:
    """Undo the doctor run ``run_id`` (see :func:`.rollback.rollback`)."""
    return rollback.rollback(Path(state_dir), run_id, dry_run=dry_run, force=force)
