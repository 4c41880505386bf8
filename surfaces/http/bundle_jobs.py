"""Support-bundle jobs of the HTTP surface (``/console/v1/support-bundle/jobs``).

Jobs live in memory only (as upstream), the oldest finished ones trimmed past
``retain_jobs`` together with their files under ``<state_dir>/support-bundles/`` (0700
directory, 0600 files).
A job is built on the surface's blocking pool, never on the trio loop, and one at a
time: a bundle holds a pool thread for the diagnostics deadline plus the journal reads,
and a burst of requests must not take every thread the other routes need.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import trio

from palyra.errors import NotFound, PalyraError
from palyra.ids import new_ulid
from palyra.journal.store import prepare_state_dir
from palyra.redaction import redact_message
from palyra.support_bundle import export_bundle
from surfaces.http.streams import BlockingPool

DEFAULT_RETAIN_JOBS = 10
MAX_RETAIN_JOBS = 100
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
BUNDLE_DIR = "support-bundles"
STATES = ("queued", "running", "succeeded", "failed")


@dataclasses.dataclass
class BundleJob:
    job_id: str
    requested_at_unix_ms: int
    max_bytes: int
    state: str = "queued"
    started_at_unix_ms: int | None = None
    completed_at_unix_ms: int | None = None
    output_path: str | None = None
    size_bytes: int | None = None
    error: str | None = None
    truncated: list[str] = dataclasses.field(default_factory=list)
    done: trio.Event = dataclasses.field(default_factory=trio.Event, repr=False)

    def to_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("done", "max_bytes")}


def _describe(exc: Exception) -> str:
    # A PalyraError's message is written for operators (a SecretLeak names the member,
    # never the secret); anything else is reduced to its type and redacted text.
    if isinstance(exc, PalyraError):
        return exc.message
    return redact_message(f"{type(exc).__name__}: {exc}")


def _build(rt: Any, job: BundleJob, token: str) -> tuple[Path, Any]:
    folder = prepare_state_dir(Path(rt.state_dir) / BUNDLE_DIR)  # 0700, tightened if loose
    path = folder / f"support-bundle-{job.job_id}.tar.gz"
    bundle = export_bundle(rt.state_dir, path, config=rt.config, diagnostics=rt.diagnostics(),
                           max_bytes=job.max_bytes, known_secrets=(token,), clock=rt.clock)
    return path, bundle


class BundleJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, BundleJob] = {}  # insertion order: oldest first
        self._turn = trio.Lock()

    def create(self, now_ms: int, max_bytes: int, retain: int = DEFAULT_RETAIN_JOBS) -> BundleJob:
        job = BundleJob(new_ulid(now_ms), now_ms, max_bytes)
        self._jobs[job.job_id] = job
        self._trim(retain)
        return job

    def _trim(self, retain: int) -> None:
        """Forget the oldest finished jobs past ``retain`` and delete their files, so
        repeated exports do not fill the state directory (a job still queued or running
        is kept until it ends: its file would be written after the trim)."""
        finished = [j for j in self._jobs.values() if j.done.is_set()]
        for job in finished[:max(0, len(self._jobs) - retain)]:
            del self._jobs[job.job_id]
            if job.output_path:
                Path(job.output_path).unlink(missing_ok=True)

    def get(self, job_id: str) -> BundleJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"support bundle job {job_id} not found", details={"job_id": job_id})
        return job

    def list(self) -> list[BundleJob]:
        return list(reversed(self._jobs.values()))

    async def run(self, job: BundleJob, pool: BlockingPool, rt: Any, token: str) -> None:
        """Build ``job``'s bundle on ``pool``; the job records the outcome, never raises
        (a trio cancellation at shutdown marks it failed and propagates)."""
        try:
            async with self._turn:
                job.state, job.started_at_unix_ms = "running", rt.clock.now_ms()
                path, bundle = await pool.run(_build, rt, job, token)
        except Exception as exc:  # noqa: BLE001 - the job's outcome, read through the API
            job.state, job.error = "failed", _describe(exc)
        except BaseException:
            job.state, job.error = "failed", "interrupted: the HTTP surface stopped"
            raise
        else:
            job.state, job.output_path, job.size_bytes = "succeeded", str(path), bundle.size_bytes
            job.truncated = list(bundle.manifest["truncated"])
        finally:
            job.completed_at_unix_ms = rt.clock.now_ms()
            job.done.set()
