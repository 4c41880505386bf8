"""Healing storage: heartbeats, incidents with history, remediation attempts persist."""

from __future__ import annotations

import dataclasses

import apsw
import pytest

from palyra.clock import ManualClock
from palyra.errors import Conflict, NotFound
from palyra.healing import heartbeats as hb
from palyra.healing import incidents as inc
from palyra.healing import remediation as rm
from palyra.healing import store
from palyra.healing.schema import SCHEMA_SQL
from palyra.healing.store import HealingQueries
from tests.support.txn import OpTxn

T0 = 1_700_000_000_000


def test_heartbeats_upsert_and_clear(txn: OpTxn, conn: apsw.Connection) -> None:
    q = HealingQueries(conn)
    first = hb.beat("run", "R1", now_ms=T0, summary="accepted", session_id="S1")
    store.upsert_heartbeat(first)(txn)
    store.upsert_heartbeat(hb.beat("run", "R1", now_ms=T0 + 5, summary="message"))(txn)
    store.upsert_heartbeat(hb.beat("approval", "A1", now_ms=T0))(txn)
    (run_beat,) = q.heartbeats("run")
    assert (run_beat.first_beat_ms, run_beat.last_beat_ms) == (T0, T0 + 5)
    assert (run_beat.summary, run_beat.session_id) == ("message", "S1")
    store.upsert_heartbeat(hb.beat("run", "R1", now_ms=T0 + 1))(txn)  # late write: no rewind
    assert q.heartbeats("run")[0].last_beat_ms == T0 + 5
    assert len(q.heartbeats()) == 2
    assert store.clear_heartbeat("run", "R1")(txn) is True
    assert store.clear_heartbeat("run", "R1")(txn) is False
    assert [b.heartbeat_key for b in q.heartbeats()] == ["approval:A1"]


def test_incidents_survive_a_restart(tmp_path) -> None:
    """Quirk 13.9: upstream lost every incident on restart."""
    path = str(tmp_path / "healing.sqlite3")
    conn = apsw.Connection(path)
    conn.execute(SCHEMA_SQL)
    observation = rm.stale_observation(hb.beat("run", "R1", now_ms=T0), now_ms=T0 + 121_000)
    incident = inc.open_or_update(None, observation, now_ms=T0 + 121_000)
    store.save_incident(incident)(OpTxn(conn))
    conn.close()
    reopened = apsw.Connection(path)
    assert HealingQueries(reopened).incident(incident.incident_id) == incident
    reopened.close()


def test_incident_history_records_state_changes_only(txn: OpTxn,
                                                     conn: apsw.Connection) -> None:
    q = HealingQueries(conn)
    clock = ManualClock(T0)
    signal = rm.circuit_signal("p1", "open", consecutive_failures=3)
    opened = inc.apply_signal(None, signal, now_ms=clock.now_ms())
    assert opened is not None
    store.save_incident(opened, expected_state="absent")(txn)
    clock.advance(15)
    refreshed = inc.apply_signal(opened, signal, now_ms=clock.now_ms())
    assert refreshed is not None
    store.save_incident(refreshed, expected_state="open")(txn)
    clock.advance(15)
    resolved = inc.apply_signal(refreshed, rm.circuit_signal("p1", "closed"),
                                now_ms=clock.now_ms())
    assert resolved is not None
    store.save_incident(resolved)(txn)
    stored = q.incident(opened.incident_id)
    assert stored == resolved and stored.created_at_unix_ms == T0
    assert stored.remediation == rm.DESCRIPTORS["report_circuit_open"]
    assert [(h.state, h.recorded_at_unix_ms) for h in q.history(opened.incident_id)] == [
        ("open", T0), ("resolved", T0 + 30_000)]
    with pytest.raises(Conflict):
        store.save_incident(opened, expected_state="open")(txn)
    assert q.incidents(active_only=True) == []
    assert q.incidents() == [resolved]


def test_remediation_attempts_and_summary(txn: OpTxn,
                                          conn: apsw.Connection) -> None:
    q = HealingQueries(conn)
    beat = hb.beat("run", "R1", now_ms=T0)
    incident = inc.open_or_update(None, rm.stale_observation(beat, now_ms=T0 + 121_000),
                                  now_ms=T0 + 121_000)
    attempt = rm.plan(incident, "auto", now_ms=T0 + 121_000)
    assert attempt is not None
    fixing = rm.start(incident, attempt, now_ms=T0 + 121_000)
    store.save_incident(fixing)(txn)
    store.insert_attempt(attempt)(txn)
    assert q.attempts(incident.incident_id) == [attempt]
    summary = q.summary()
    assert (summary["active"], summary["remediating"], summary["by_domain"]) == (
        1, 1, {"watchdog": 1})
    done_incident, done = rm.complete(fixing, attempt, ok=True, now_ms=T0 + 122_000)
    store.finish_attempt(done)(txn)
    store.save_incident(done_incident)(txn)
    assert q.attempts()[0] == done
    with pytest.raises(NotFound):
        store.finish_attempt(done)(txn)
    assert [h.state for h in q.history(incident.incident_id)] == [
        "remediating", "resolved"]
    assert q.summary()["resolved"] == 1


def test_history_is_a_ring_of_128(txn: OpTxn, conn: apsw.Connection) -> None:
    observation = rm.circuit_signal("p", "open").observation
    assert observation is not None
    incident = inc.open_or_update(None, observation, now_ms=T0)
    for i in range(140):
        state = "open" if i % 2 == 0 else "resolved"
        store.save_incident(dataclasses.replace(incident, state=state,
                                                updated_at_unix_ms=T0 + i))(txn)
    history = HealingQueries(conn).history()
    assert len(history) == 128 and history[-1].recorded_at_unix_ms == T0 + 139
    assert len(HealingQueries(conn).history(limit=5)) == 5
