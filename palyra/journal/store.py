"""The SQLite journal: opening, the single writer's transactions, readers, verification.

Exactly one :class:`Writer` (owned by the journal actor) writes; everything else reads
through its own :class:`Reader` connection. The writer applies *batches*: many
callers' writes in one ``BEGIN IMMEDIATE`` transaction (group commit), each caller's
part inside its own savepoint so one bad write fails only its caller.

The chain head is read from the database at the start of every batch rather than
cached across batches: if a replaced (hung) writer incarnation ever commits late, the
chain still links correctly instead of forking.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

from palyra.canonical import chain_hash
from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.errors import (
    AlreadyExists,
    InvalidInput,
    JournalError,
    PayloadTooLarge,
    ResourceExhausted,
    Superseded,
)
from palyra.ids import new_ulid
from palyra.journal.schema import migrate
from palyra.redaction import dumps_payload, sanitize_payload

DB_FILENAME = "journal.sqlite3"
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


@dataclasses.dataclass(frozen=True)
class JournalSettings:
    synchronous: str = "NORMAL"
    busy_timeout_ms: int = 5000
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_events: int = 0  # 0: unbounded (upstream halts at 10 000; we make it opt-in)
    max_batch: int = 512

    def __post_init__(self) -> None:
        if self.synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"journal.synchronous must be one of {SYNCHRONOUS_MODES}")
        if self.max_payload_bytes <= 0:
            raise ValueError("journal.max_payload_bytes must be > 0")
        if self.max_events < 0 or self.max_batch <= 0 or self.busy_timeout_ms < 0:
            raise ValueError("journal limits must be positive")


def db_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / DB_FILENAME


def prepare_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Create the state directory 0700 (tightening an existing one we own)."""
    path = Path(state_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)
    return path


def connect(
    state_dir: str | os.PathLike[str],
    settings: JournalSettings = JournalSettings(),
    *,
    readonly: bool = False,
) -> apsw.Connection:
    path = db_path(prepare_state_dir(state_dir))
    if not path.exists() and not readonly:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = apsw.Connection(str(path), flags=flags)
    conn.set_busy_timeout(settings.busy_timeout_ms)
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={settings.synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


# The single writer touches the tape's and the runs' index pages on every batch; SQLite's
# default 2 MiB page cache makes it re-read them from the OS (readers keep the default).
WRITER_CACHE_KIB = 32 * 1024


def open_writer_connection(
    state_dir: str | os.PathLike[str],
    settings: JournalSettings = JournalSettings(),
    clock: Clock = SYSTEM_CLOCK,
) -> apsw.Connection:
    conn = connect(state_dir, settings)
    conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    migrate(conn, clock)
    for suffix in ("", "-wal", "-shm"):
        side = Path(str(db_path(state_dir)) + suffix)
        if side.exists() and stat.S_IMODE(side.stat().st_mode) != 0o600:
            side.chmod(0o600)
    return conn


# --------------------------------------------------------------------------- events


@dataclasses.dataclass(frozen=True, slots=True)
class EventDraft:
    """A journal event ready to append: validated, redacted and sized by the caller."""

    kind: str
    actor: str
    payload_json: str
    redacted: bool
    event_ulid: str
    timestamp_unix_ms: int
    session_ulid: str | None = None
    run_ulid: str | None = None
    principal: str | None = None
    device_id: str | None = None
    channel: str | None = None

    @classmethod
    def build(
        cls,
        kind: str,
        payload: Any = None,
        *,
        actor: str = "system",
        session_id: str | None = None,
        run_id: str | None = None,
        principal: str | None = None,
        device_id: str | None = None,
        channel: str | None = None,
        event_id: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Clock = SYSTEM_CLOCK,
    ) -> EventDraft:
        if not kind or not isinstance(kind, str):
            raise ValueError("journal event kind must be a non-empty string")
        # A dict or list is dumped once: the size check and redaction read the same bytes.
        serialized = dumps_payload(payload) if isinstance(payload, dict | list) else None
        raw_size = _raw_size(payload) if serialized is None else len(serialized)
        if raw_size > max_payload_bytes:
            raise PayloadTooLarge(
                f"journal payload is {raw_size} bytes; the limit is {max_payload_bytes}",
                details={"payload_kind": "journal", "limit": max_payload_bytes},
            )
        payload_json, redacted = sanitize_payload(payload, serialized=serialized)
        now = clock.now_ms()
        return cls(
            kind=kind,
            actor=actor,
            payload_json=payload_json,
            redacted=redacted,
            event_ulid=event_id or new_ulid(now),
            timestamp_unix_ms=now,
            session_ulid=session_id,
            run_ulid=run_id,
            principal=principal,
            device_id=device_id,
            channel=channel,
        )


def _raw_size(payload: Any) -> int:
    if payload is None:
        return 0
    if isinstance(payload, bytes | bytearray | memoryview):
        return len(payload)
    if isinstance(payload, str):
        return len(payload.encode("utf-8", "surrogatepass"))
    import orjson

    try:
        return len(orjson.dumps(payload))
    except TypeError:
        return 0  # the sanitiser reports non-serialisable payloads itself


@dataclasses.dataclass(frozen=True, slots=True)
class AppendResult:
    seq: int
    event_id: str
    hash: str
    prev_hash: str | None
    redacted: bool


def event_record(seq: int, draft: EventDraft | dict[str, Any]) -> dict[str, Any]:
    """The canonical record hashed for one journal row (see palyra.canonical)."""
    get = draft.get if isinstance(draft, dict) else lambda k: getattr(draft, k)
    return {
        "seq": seq,
        "event_ulid": get("event_ulid"),
        "session_ulid": get("session_ulid"),
        "run_ulid": get("run_ulid"),
        "kind": get("kind"),
        "actor": get("actor"),
        "timestamp_unix_ms": get("timestamp_unix_ms"),
        "principal": get("principal"),
        "device_id": get("device_id"),
        "channel": get("channel"),
        "payload_json": get("payload_json"),
        "redacted": bool(get("redacted")),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class TapeDraft:
    """One step of a run, redacted and sized by the caller (see palyra.redaction)."""

    run_id: str
    seq: int
    event_type: str
    payload_json: str
    created_at_unix_ms: int
    redacted: bool = False

    @classmethod
    def build(
        cls,
        run_id: str,
        seq: int,
        event_type: str,
        payload: Any,
        *,
        now_ms: int,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> TapeDraft:
        # model_token payloads carry streamed text under "token": that is content,
        # not a credential (upstream redacted it, quirk 13.2).
        keep = _MODEL_TOKEN_KEEP if event_type == "model_token" else frozenset()
        payload_json, redacted = sanitize_payload(payload, keep)
        # The limit is in stored (UTF-8) bytes; len() counts characters.
        size = len(payload_json) if payload_json.isascii() else len(payload_json.encode())
        if size > max_payload_bytes:
            raise PayloadTooLarge(
                f"tape payload of {event_type} is {size} bytes; "
                f"the limit is {max_payload_bytes}",
                details={"payload_kind": "tape", "limit": max_payload_bytes},
            )
        return cls(run_id, seq, event_type, payload_json, now_ms, redacted)


_MODEL_TOKEN_KEEP = frozenset({"token"})


def tape_record(entry: TapeDraft | dict[str, Any]) -> dict[str, Any]:
    """The canonical record hashed for one tape row (chained per run)."""
    if isinstance(entry, dict):
        return {
            "run_ulid": entry["run_ulid"], "seq": entry["seq"], "event_type": entry["event_type"],
            "payload_json": entry["payload_json"], "created_at_unix_ms": entry["created_at_unix_ms"],
        }
    return {
        "run_ulid": entry.run_id, "seq": entry.seq, "event_type": entry.event_type,
        "payload_json": entry.payload_json, "created_at_unix_ms": entry.created_at_unix_ms,
    }


_INSERT_EVENT = (
    "INSERT INTO journal_events(seq, event_ulid, session_ulid, run_ulid, kind, actor,"
    " timestamp_unix_ms, payload_json, redacted, hash, prev_hash, principal, device_id,"
    " channel, created_at_unix_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


# --------------------------------------------------------------------------- writing


class Txn:
    """What one batch's operations see: the connection and the chain heads.

    ``observed`` lists what the batch wrote (``("event", EventDraft)``,
    ``("tape", TapeDraft)``) and what operations noted about it (``(name, fields)``
    via :meth:`note`), so counters move only for work that committed: a rolled-back
    savepoint drops its part of the list with its rows.
    """

    def __init__(self, conn: apsw.Connection, settings: JournalSettings, clock: Clock) -> None:
        self.conn = conn
        self.settings = settings
        self.clock = clock
        row = conn.execute(
            "SELECT seq, hash FROM journal_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        self.head_seq, self.head_hash = (row[0], row[1]) if row else (0, None)
        self._count: int | None = None
        self._tape_heads: dict[str, tuple[int, str]] = {}
        self.observed: list[tuple[str, Any]] = []

    def note(self, name: str, **fields: Any) -> None:
        """Record a fact about this write for observers (counted once committed)."""
        self.observed.append((name, fields))

    def append_event(self, draft: EventDraft) -> AppendResult:
        if self.settings.max_events:
            if self._count is None:
                self._count = self.conn.execute("SELECT count(*) FROM journal_events").fetchone()[0]
            if self._count >= self.settings.max_events:
                raise ResourceExhausted(
                    f"journal holds {self._count} events, the configured max_events",
                    details={"max_events": self.settings.max_events},
                )
        seq = self.head_seq + 1
        prev = self.head_hash
        digest = chain_hash(prev, event_record(seq, draft))
        try:
            self.conn.execute(
                _INSERT_EVENT,
                (
                    seq, draft.event_ulid, draft.session_ulid, draft.run_ulid, draft.kind,
                    draft.actor, draft.timestamp_unix_ms, draft.payload_json, int(draft.redacted),
                    digest, prev, draft.principal, draft.device_id, draft.channel,
                    self.clock.now_ms(),
                ),
            )
        except apsw.ConstraintError as exc:
            raise AlreadyExists(
                f"journal event {draft.event_ulid} already exists",
                details={"event_id": draft.event_ulid},
            ) from exc
        self.head_seq, self.head_hash = seq, digest
        if self._count is not None:
            self._count += 1
        self.observed.append(("event", draft))
        return AppendResult(seq, draft.event_ulid, digest, prev, draft.redacted)

    def tape_next_seq(self, run_id: str) -> int:
        head = self._tape_heads.get(run_id)
        if head is not None:
            return head[0] + 1
        row = self.conn.execute(
            "SELECT max(seq) FROM orchestrator_tape WHERE run_ulid = ?", (run_id,)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def append_tape(self, entry: TapeDraft) -> str:
        """Append one tape row; ``seq`` must follow the run's last seq exactly."""
        head = self._tape_heads.get(entry.run_id)
        if head is None:
            row = self.conn.execute(
                "SELECT seq, hash FROM orchestrator_tape WHERE run_ulid = ? ORDER BY seq DESC LIMIT 1",
                (entry.run_id,),
            ).fetchone()
            head = (row[0], row[1]) if row else (-1, None)  # type: ignore[assignment]
        last_seq, prev = head
        if entry.seq <= last_seq:
            raise AlreadyExists(
                f"tape seq {entry.seq} of run {entry.run_id} already exists",
                details={"run_id": entry.run_id, "seq": entry.seq},
            )
        if entry.seq != last_seq + 1:
            raise InvalidInput(
                f"tape seq {entry.seq} of run {entry.run_id} skips {last_seq + 1}",
                details={"run_id": entry.run_id, "seq": entry.seq},
            )
        digest = chain_hash(prev, tape_record(entry))
        self.conn.execute(
            "INSERT INTO orchestrator_tape(run_ulid, seq, event_type, payload_json,"
            " created_at_unix_ms, hash, prev_hash) VALUES (?,?,?,?,?,?,?)",
            (entry.run_id, entry.seq, entry.event_type, entry.payload_json,
             entry.created_at_unix_ms, digest, prev),
        )
        self._tape_heads[entry.run_id] = (entry.seq, digest)
        self.observed.append(("tape", entry))
        return digest

    # savepoint bookkeeping: heads move only when a caller's part commits
    def mark(self) -> tuple[Any, ...]:
        return (self.head_seq, self.head_hash, self._count, len(self.observed))

    def restore(self, mark: tuple[Any, ...]) -> None:
        self.head_seq, self.head_hash, self._count, observed = mark
        del self.observed[observed:]
        self._tape_heads.clear()  # re-read from the database on next use


Operation = Callable[[Txn], Any]


@dataclasses.dataclass(slots=True)
class Outcome:
    ok: bool
    value: Any = None
    error: BaseException | None = None


class Writer:
    """The single writer: applies batches of operation lists as one transaction."""

    def __init__(
        self, conn: apsw.Connection, settings: JournalSettings, clock: Clock = SYSTEM_CLOCK,
        *, still_writer: Callable[[], bool] | None = None,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.clock = clock
        # Asked while holding SQLite's write lock, before anything is written: False means
        # another writer has taken over (this one was abandoned as hung), and the batch is
        # refused whole rather than committed behind its successor's back.
        self.still_writer = still_writer
        self.observed: list[tuple[str, Any]] = []  # what the last committed batch wrote

    def apply(self, batch: Sequence[Sequence[Operation]]) -> list[Outcome]:
        """Apply every caller's operations in one transaction; one outcome per caller.

        The fast path runs the whole batch without savepoints. Only if some caller's
        operation fails is the transaction rolled back and the batch replayed with a
        savepoint per caller, so the failure costs only that caller its write.
        Operations are pure functions of the transaction, so replaying is safe.
        If the commit itself fails, every caller fails with a JournalError.
        """
        self.observed = []
        try:
            outcomes = self._run(batch, isolate=False)
            if outcomes is None:
                outcomes = self._run(batch, isolate=True)
        except Superseded as exc:
            return [Outcome(False, error=exc) for _ in batch]
        except BaseException as exc:
            if not self.conn.getautocommit():
                self.conn.execute("ROLLBACK")
            failure = JournalError(f"journal batch failed to commit: {exc}")
            failure.__cause__ = exc
            return [Outcome(False, error=failure) for _ in batch]
        return outcomes  # type: ignore[return-value]

    def _run(self, batch: Sequence[Sequence[Operation]], *, isolate: bool) -> list[Outcome] | None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        if self.still_writer is not None and not self.still_writer():
            conn.execute("ROLLBACK")
            raise Superseded("this journal writer was replaced; the batch was not written")
        txn = Txn(conn, self.settings, self.clock)
        outcomes: list[Outcome] = []
        for ops in batch:
            if isolate:
                mark = txn.mark()
                conn.execute("SAVEPOINT caller")
            try:
                value = None
                for op in ops:
                    value = op(txn)
            except Exception as exc:
                if not isolate:
                    conn.execute("ROLLBACK")
                    return None
                conn.execute("ROLLBACK TO caller")
                conn.execute("RELEASE caller")
                txn.restore(mark)
                outcomes.append(Outcome(False, error=exc))
                continue
            if isolate:
                conn.execute("RELEASE caller")
            outcomes.append(Outcome(True, value))
        conn.execute("COMMIT")
        self.observed = txn.observed
        return outcomes


def append_op(draft: EventDraft) -> Operation:
    return lambda txn: txn.append_event(draft)


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None
    tapes: int = 0
    tape_rows: int = 0
    first_bad_tape: tuple[str, int] | None = None


_EVENT_COLUMNS = (
    "seq, event_ulid, session_ulid, run_ulid, kind, actor, timestamp_unix_ms, payload_json,"
    " redacted, hash, prev_hash, principal, device_id, channel, created_at_unix_ms"
)
_EVENT_KEYS = [c.strip() for c in _EVENT_COLUMNS.split(",")]


class JournalQueries:
    """Reads of the journal over a connection the caller owns (as the other stores' Queries)."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM journal_events").fetchone()[0])

    def event(self, event_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM journal_events WHERE event_ulid = ?", (event_id,)
        ).fetchone()
        return dict(zip(_EVENT_KEYS, row, strict=True)) if row else None

    def recent(self, limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        """Newest first; ``limit`` clamped to 1..500 as upstream."""
        limit = max(1, min(int(limit), 500))
        where, args = ("WHERE kind = ?", (kind, limit)) if kind else ("", (limit,))
        rows = self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM journal_events {where} ORDER BY seq DESC LIMIT ?", args
        ).fetchall()
        return [dict(zip(_EVENT_KEYS, r, strict=True)) for r in rows]

    def iter_events(self, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        for row in self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM journal_events WHERE seq > ? ORDER BY seq", (after_seq,)
        ):
            yield dict(zip(_EVENT_KEYS, row, strict=True))

    def event_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT event_ulid FROM journal_events")}

    def verify_chain(self) -> ChainReport:
        """Recompute every link of the journal chain; report the first break."""
        prev: str | None = None
        expected_seq = 1
        count = 0
        for row in self.conn.execute(f"SELECT {_EVENT_COLUMNS} FROM journal_events ORDER BY seq"):
            event = dict(zip(_EVENT_KEYS, row, strict=True))
            count += 1
            seq = event["seq"]
            if seq != expected_seq:
                return ChainReport(False, count, seq, f"gap: expected seq {expected_seq}", prev)
            if event["prev_hash"] != prev:
                return ChainReport(False, count, seq, "prev_hash does not link to the previous event", prev)
            digest = chain_hash(prev, event_record(seq, event))
            if digest != event["hash"]:
                return ChainReport(False, count, seq, "hash does not match the event's content", prev)
            prev = digest
            expected_seq += 1
        return self._verify_tapes(ChainReport(True, count, None, None, prev))

    def _verify_tapes(self, journal: ChainReport) -> ChainReport:
        """Every run's tape is its own chain starting at seq 0."""
        tapes = rows = 0
        run: str | None = None
        prev: str | None = None
        expected = 0
        for run_ulid, seq, event_type, payload_json, created, digest, prev_hash in self.conn.execute(
            "SELECT run_ulid, seq, event_type, payload_json, created_at_unix_ms, hash, prev_hash"
            " FROM orchestrator_tape ORDER BY run_ulid, seq"
        ):
            if run_ulid != run:
                run, prev, expected = run_ulid, None, 0
                tapes += 1
            rows += 1
            record = {
                "run_ulid": run_ulid, "seq": seq, "event_type": event_type,
                "payload_json": payload_json, "created_at_unix_ms": created,
            }
            problem = None
            if seq != expected:
                problem = f"tape gap: expected seq {expected}"
            elif prev_hash != prev:
                problem = "tape prev_hash does not link"
            elif chain_hash(prev, record) != digest:
                problem = "tape hash does not match the step's content"
            if problem:
                return dataclasses.replace(
                    journal, ok=False, tapes=tapes, tape_rows=rows,
                    first_bad_tape=(run_ulid, seq), reason=problem,
                )
            prev, expected = digest, expected + 1
        return dataclasses.replace(journal, tapes=tapes, tape_rows=rows)


class Reader(JournalQueries):
    """Journal reads over a connection of its own, closed with the reader (never shared
    across threads): a state directory's journal, or a connection handed over to it."""

    def __init__(self, source: str | os.PathLike[str] | apsw.Connection,
                 settings: JournalSettings = JournalSettings()) -> None:
        super().__init__(source if isinstance(source, apsw.Connection) else connect(source, settings))

    @classmethod
    def inspect(cls, journal_file: str | os.PathLike[str]) -> Reader:
        """Read-only, touching nothing around the file (no chmod, no create): for the doctor."""
        return cls(apsw.Connection(str(journal_file), flags=apsw.SQLITE_OPEN_READONLY))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
