"""Learning storage: candidate upserts, reviews with history, preferences."""

from __future__ import annotations

import dataclasses
import types

import apsw
import pytest

from palyra.errors import Conflict, InvalidTransition, NotFound
from palyra.learning import review as rv
from palyra.learning import store
from palyra.learning.extract import extract_candidates
from palyra.learning.store import LearningQueries
from tests.learning.support import T0, run_input


def _extract(*texts: str, now_ms: int = T0, **kw: object):
    return extract_candidates(run_input(*texts, **kw), now_ms=now_ms)


def test_upsert_inserts_once_per_dedupe_key(txn: types.SimpleNamespace,
                                            conn: apsw.Connection) -> None:
    q = LearningQueries(conn)
    first = _extract("I think my team is platform.", "I prefer tea.")
    ids = store.upsert_candidates(first)(txn)
    assert ids == [x.candidate_id for x in first]
    assert q.candidate(ids[1]) == first[1]
    assert [h.to_status for h in q.history(ids[0])] == ["suppressed"]
    # The same fact from a later run, more confident: same row, raised confidence.
    later = _extract("My team is platform.", now_ms=T0 + 100)
    assert later[0].dedupe_key == first[0].dedupe_key
    assert store.upsert_candidates(later)(txn) == [ids[0]]
    stored = q.candidate(ids[0])
    assert stored is not None and stored.updated_at_unix_ms == T0 + 100
    assert stored.confidence == max(first[0].confidence, later[0].confidence)
    # It had been suppressed for low confidence only: now it is promoted for review.
    assert (stored.status, stored.risk_level) == ("queued", "low")
    assert [(h.from_status, h.to_status) for h in q.history(ids[0])] == [
        (None, "suppressed"), ("suppressed", "queued")]
    # A re-extraction never revives a reviewed candidate.
    store.review_candidate(ids[0], "rejected", reviewer="user:ops", now_ms=T0 + 200)(txn)
    store.upsert_candidates(_extract("My team is platform.", now_ms=T0 + 300))(txn)
    rejected = q.candidate(ids[0])
    assert rejected is not None and rejected.status == "rejected"
    assert len(q.history(ids[0])) == 3
    assert len(q.candidates(owner_principal="user:ada")) == 2


def test_review_op_writes_history_and_preferences(txn: types.SimpleNamespace,
                                                  conn: apsw.Connection) -> None:
    q = LearningQueries(conn)
    (pref,) = _extract("Please always cite sources.")
    store.upsert_candidates([pref])(txn)
    accepted = store.review_candidate(pref.candidate_id, "approved", reviewer="user:ops",
                                      now_ms=T0 + 1)(txn)
    assert accepted.status == "accepted"
    assert [(p.key, p.value, p.status) for p in q.preferences("user:ada")] == [
        ("workflow.rule", "Please always cite sources", "active")]
    store.review_candidate(pref.candidate_id, "rolled-back", reviewer="user:ops",
                           now_ms=T0 + 2)(txn)
    assert q.preferences("user:ada") == []
    assert [p.status for p in q.preferences("user:ada", include_retired=True)] == ["retired"]
    assert [(h.from_status, h.to_status) for h in q.history(pref.candidate_id)] == [
        (None, "queued"), ("queued", "accepted"), ("accepted", "rolled_back")]
    with pytest.raises(InvalidTransition):
        store.review_candidate(pref.candidate_id, "accepted", reviewer="u", now_ms=T0 + 3)(txn)
    with pytest.raises(NotFound):
        store.review_candidate("01ARZ3NDEKTSV4RRFFQ69G5FAV", "accepted", reviewer="u",
                               now_ms=T0)(txn)
    assert q.candidates(status="rolled-back")[0].candidate_id == pref.candidate_id


def test_save_review_is_optimistic(txn: types.SimpleNamespace, conn: apsw.Connection) -> None:
    (fact,) = _extract("Remember that the staging database is db-2.")
    store.upsert_candidates([fact])(txn)
    store.save_review(fact, rv.auto_apply(fact, now_ms=T0 + 1))(txn)
    stale = rv.reject(fact, reviewer="user:ops", now_ms=T0 + 2)  # computed from a stale copy
    with pytest.raises(Conflict) as err:
        store.save_review(fact, stale)(txn)
    assert err.value.details == {"expected": "queued", "status": "auto_applied"}
    stored = LearningQueries(conn).candidate(fact.candidate_id)
    assert stored is not None and stored.auto_applied and stored.status == "auto_applied"


def test_history_is_append_only(txn: types.SimpleNamespace, conn: apsw.Connection) -> None:
    (fact,) = _extract("My name is Ada.")
    store.upsert_candidates([fact])(txn)
    with pytest.raises(apsw.ConstraintError):
        conn.execute("DELETE FROM learning_candidate_history")
    assert dataclasses.asdict(LearningQueries(conn).history(fact.candidate_id)[0])["actor"] == (
        "system:reflection")
