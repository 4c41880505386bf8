"""Parked threads run short actor loops one at a time each, and reuse themselves."""

from __future__ import annotations

import threading

from supervisors.threads import ParkedThreads
from tests.support.wait import holds_within


def test_a_finished_loop_parks_its_thread_for_the_next_one():
    pool = ParkedThreads(max_idle=4, idle_timeout=5.0)
    seen: list[int] = []
    done = threading.Event()
    pool.start(lambda: (seen.append(threading.get_ident()), done.set()), "a")
    assert done.wait(5)
    assert holds_within(lambda: pool._idle == 1, 5)  # parked
    again = threading.Event()
    pool.start(lambda: (seen.append(threading.get_ident()), again.set()), "b")
    assert again.wait(5)
    assert seen[0] == seen[1]


def test_concurrent_loops_each_get_their_own_thread_and_a_hung_one_holds_only_its_own():
    pool = ParkedThreads(max_idle=8, idle_timeout=5.0)
    release, hung = threading.Event(), threading.Event()
    running: set[int] = set()
    lock = threading.Lock()

    def loop() -> None:
        with lock:
            running.add(threading.get_ident())
        release.wait(5)

    pool.start(lambda: hung.wait(5), "hung")  # holds its thread until the end
    starters = [threading.Thread(target=lambda: [pool.start(loop, "l") for _ in range(10)])
                for _ in range(5)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(5)
    assert holds_within(lambda: len(running) == 50, 5), len(running)  # 50 live loops, 50 threads
    release.set()
    assert holds_within(lambda: pool._idle == 8, 5)  # at most max_idle park; the rest ended
    reused = threading.Event()
    pool.start(reused.set, "after")
    assert reused.wait(5)
    hung.set()


def test_idle_threads_leave_after_the_timeout():
    pool = ParkedThreads(max_idle=4, idle_timeout=0.05)
    done = threading.Event()
    pool.start(done.set, "x")
    assert done.wait(5)
    assert holds_within(lambda: pool._idle == 1, 5)
    assert holds_within(lambda: pool._idle == 0, 5)  # timed out and left
    later = threading.Event()
    pool.start(later.set, "y")  # a fresh thread
    assert later.wait(5)
