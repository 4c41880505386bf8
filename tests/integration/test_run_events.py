"""``RunHandle.events()`` must yield every tape step exactly once, whenever it joins."""

from __future__ import annotations

import time

import pytest

import palyra
from palyra.journal.store import Writer

# probe_timeout 1 s: a slow commit must not look like a hung journal
CONFIG = {"supervision": {"probe_interval": 2.0, "shutdown_timeout": 1.0}}
COMMIT_S = 0.2


@pytest.fixture
def slow_commits(monkeypatch):
    """Every journal transaction takes >= COMMIT_S, as on a loaded disk."""
    apply = Writer.apply

    def slow_apply(self, *args, **kwargs):
        time.sleep(COMMIT_S)
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(Writer, "apply", slow_apply)


def test_events_of_a_finished_run_replay_the_whole_tape(tmp_path):
    with palyra.Runtime.start(tmp_path, CONFIG) as rt:
        run = rt.send("hello there", session_key="k")
        run.wait(10)
        seqs = [e.seq for e in run.events(timeout=5)]
        assert seqs == [e.seq for e in rt.tape(run.id)] == list(range(len(seqs)))


def test_events_joined_right_after_send_see_every_step(tmp_path, slow_commits):
    # Regression: steps were published before their commit, so a subscriber joining in
    # between replayed a tape without them and never saw them live either.
    with palyra.Runtime.start(tmp_path, CONFIG) as rt:
        run = rt.send("@sleep 0.5\nhello there", session_key="k")
        # Join a moment later: the actor has begun and taped its first steps,
        # whose commit is still under way.
        time.sleep(COMMIT_S / 4)
        seqs = [e.seq for e in run.events(timeout=5) if e.seq is not None]
        tape = [e.seq for e in rt.tape(run.id)]
        assert tape == list(range(len(tape)))
        assert seqs == tape, f"events() skipped seqs {sorted(set(tape) - set(seqs))}"
