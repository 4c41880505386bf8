from __future__ import annotations

import time

import pykka
import pytest

from palyra.errors import ActorUnavailable, NotFound
from supervisors import (
    Address,
    Chaos,
    ChildSpec,
    LaunchChild,
    StartChild,
    Supervisor,
    start_root,
    supervisor_spec,
)
from supervisors.supervised import actor_of
from tests.supervisors.conftest import Counter, Recorder
from tests.support.wait import holds_within, until


def spec(name: str, **kw) -> ChildSpec:
    kw.setdefault("probe_interval", None)
    return ChildSpec(name=name, actor=Counter, **kw)


def start(services, children, **kw):
    return start_root(supervisor_spec("root", children, **kw), services)


def incarnations(services, *names):
    return [services.table.get(n).incarnation for n in names]


def crash_and_wait(services, recorder: Recorder, name: str, count: int) -> None:
    services.names.get(name).tell(pykka.messages.ProxyCall(("boom",), (), {}))
    recorder.wait_for("actor.restarted", count)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("one_for_one", [1, 2, 1]),
        ("one_for_all", [2, 2, 2]),
        ("rest_for_one", [1, 2, 2]),
    ],
)
def test_strategy_restarts_exactly_the_expected_children(services, recorder, strategy, expected):
    start(services, [spec("a"), spec("b"), spec("c")], strategy=strategy)
    crash_and_wait(services, recorder, "b", 1)
    assert incarnations(services, "a", "b", "c") == expected
    assert all(Address(services.names, n).call("bump") == 1 for n in "abc" if n == "b")


def test_children_start_in_order_and_stop_in_reverse(services):
    Counter.started.clear()
    Counter.stopped.clear()
    root = start(services, [spec("a"), spec("b"), spec("c")])
    assert Counter.started == ["a", "b", "c"]
    root.ref.stop(timeout=5)
    assert Counter.stopped == ["c", "b", "a"]
    assert all(services.names.get(n) is None for n in "abc")


def test_address_survives_restart_and_sees_fresh_state(services, recorder):
    start(services, [spec("a")])
    addr = Address(services.names, "a")
    assert addr.call("bump") == 1
    assert addr.call("bump") == 2
    Chaos(services.names).kill("a")
    assert addr.call("bump") == 1  # new incarnation, state rebuilt from scratch
    assert services.table.get("a").restarts == 1
    assert services.table.get("a").last_restart_reason.startswith("killed")


def test_exception_in_ask_does_not_restart(services):
    start(services, [spec("a")])
    addr = Address(services.names, "a")
    with pytest.raises(ValueError, match="ask failure"):
        addr.call("boom")
    assert services.table.get("a").restarts == 0
    assert addr.call("bump") == 1


def test_exception_in_tell_restarts_permanent_child(services, recorder):
    start(services, [spec("a")])
    crash_and_wait(services, recorder, "a", 1)
    assert services.table.get("a").incarnation == 2


def test_base_exception_in_handler_kills_only_that_actor(services, recorder):
    start(services, [spec("a"), spec("b")])
    b_ref = services.names.get("b")
    services.names.get("a").tell("exit")
    recorder.wait_for("actor.restarted", 1)
    assert b_ref.is_alive()
    assert Address(services.names, "a").call("bump") == 1


def test_transient_child_not_restarted_after_normal_exit(services, recorder):
    start(services, [spec("t", restart="transient")])
    ref = services.names.get("t")
    ref.tell("stop-normally")
    ref.actor_stopped.wait(2)
    until(lambda: services.names.get("t") is None, timeout=2, what="t unregistered")
    # a (wrong) restart would show within 50 ms
    assert not holds_within(lambda: services.names.get("t") is not None, 0.05)
    assert not [e for e in recorder.events if e.kind == "actor.restarted"]


def test_transient_child_restarted_after_crash(services, recorder):
    start(services, [spec("t", restart="transient")])
    crash_and_wait(services, recorder, "t", 1)
    assert services.names.get("t").is_alive()


def test_temporary_child_never_restarted(services, recorder):
    start(services, [spec("t", restart="temporary")])
    ref = services.names.get("t")
    Chaos(services.names).kill("t")
    assert ref.actor_stopped.is_set()
    with pytest.raises(ActorUnavailable):
        Address(services.names, "t", retry_for=0.1).call("bump")


def test_intensity_exceeded_escalates_to_root_link_and_stops_children(services, recorder):
    exits = []
    root = start_root(
        supervisor_spec("root", [spec("a"), spec("b")], max_restarts=2, max_seconds=10),
        services,
        on_exit=exits.append,
    )
    b_ref = services.names.get("b")
    chaos = Chaos(services.names)
    for n in range(1, 3):
        chaos.kill("a")
        recorder.wait_for("actor.restarted", n)
    chaos.kill("a")  # the third restart in the window exceeds max_restarts=2
    assert root.exited.wait(5)
    assert root.exit.reason == "crash"
    assert "restart intensity exceeded" in str(root.exit.error)
    assert b_ref.actor_stopped.is_set()
    recorder.wait_for("actor.escalated")


def test_nested_supervisor_restarted_without_touching_siblings(services, recorder):
    inner = supervisor_spec("inner", [spec("x")], max_restarts=0)
    start(services, [spec("a"), inner])
    a_ref = services.names.get("a")
    Chaos(services.names).kill("x")  # inner exceeds 0 restarts -> escalates -> root restarts inner
    recorder.wait_for("actor.escalated")
    recorder.wait_for("actor.restarted", 1)
    Address(services.names, "x").call("bump")
    assert services.names.get("a") is a_ref
    assert services.table.get("inner").restarts == 1


def test_init_failure_at_start_fails_fast_without_leaking_siblings(services):
    with pytest.raises(RuntimeError):
        start(services, [spec("a"), spec("b", kwargs={"fail_init": lambda: True})])
    a = services.table.get("a")
    assert a is None or a.ref is None
    assert services.names.get("a") is None


def test_init_failure_during_restart_counts_as_another_restart(services, recorder):
    calls = {"n": 0}

    def fail_second_time() -> bool:
        calls["n"] += 1
        return calls["n"] == 2

    start(services, [spec("a", kwargs={"fail_init": fail_second_time})], max_restarts=5)
    Chaos(services.names).kill("a")
    [event] = recorder.wait_for("actor.restarted", 1)
    assert "init failed on purpose" in event.reason
    assert services.table.get("a").restarts == 2
    assert Address(services.names, "a").call("bump") == 1


def test_hung_child_is_abandoned_and_replaced(services, recorder):
    start(services, [spec("h", probe_interval=0.1)])
    old = services.names.get("h")
    Chaos(services.names).hang("h", 2.0)
    t0 = time.monotonic()
    recorder.wait_for("actor.hung")
    detected = time.monotonic() - t0
    assert detected < 0.2 + 0.1  # within two probe intervals (+ scheduling slack)
    assert services.names.get("h") is not old
    assert Address(services.names, "h").call("bump") == 1
    assert services.table.get("h").hung == 1


def test_work_queued_behind_a_hang_is_handed_to_the_successor(services, recorder):
    start(services, [spec("h", probe_interval=0.1)])
    old = services.names.get("h")
    Chaos(services.names).hang("h", 1.0)
    future = old.ask(pykka.messages.ProxyCall(("bump",), (), {}), block=False)
    recorder.wait_for("actor.hung")
    assert future.get(timeout=2) == 1  # answered by the new incarnation


def test_dynamic_children_start_and_transient_exit_is_forgotten(services):
    start(services, [])
    root = services.names.get("root")
    root.ask(StartChild(spec("run:1", restart="transient")))
    assert Address(services.names, "run:1").call("bump") == 1
    services.names.get("run:1").tell("stop-normally")
    until(lambda: services.table.get("run:1") is None, timeout=2, what="run:1 forgotten")


def test_a_dynamic_child_that_cannot_even_be_constructed_frees_its_name(services):
    start(services, [])
    root = services.names.get("root")
    with pytest.raises(TypeError):
        root.ask(StartChild(spec("run:1", kwargs={"no_such_argument": 1})))
    root.ask(StartChild(spec("run:1")))
    assert Address(services.names, "run:1").call("bump") == 1


def test_an_abandoned_incarnation_acts_no_more(services):
    start(services, [spec("a")])
    actor = actor_of(services.names.get("a"))
    acted: list[str] = []
    assert actor.while_current(lambda: acted.append("before"))
    actor.abandon()
    assert not actor.while_current(lambda: acted.append("after"))
    assert acted == ["before"]


class FailureNotingSupervisor(Supervisor):
    failed: list[tuple[str, str]] = []

    def child_failed(self, spec: ChildSpec, reason: str) -> None:
        FailureNotingSupervisor.failed.append((spec.name, reason))


def test_launch_starts_a_child_hands_it_its_first_message_and_drops_a_duplicate(services):
    start(services, [])
    root = services.names.get("root")
    root.tell(LaunchChild(spec("run:1", restart="temporary"), "stop-normally"))  # stops on its first message
    root.tell(LaunchChild(spec("run:2"), None))
    root.tell(LaunchChild(spec("run:2"), "stop-normally"))  # a duplicate: dropped, run:2 keeps going
    assert Address(services.names, "run:2").call("bump") == 1  # run:2 is up, and first of its name
    # it got "stop-normally" and was forgotten
    until(lambda: services.table.get("run:1") is None, what="run:1 forgotten")
    assert Address(services.names, "run:2").call("bump") == 2


def test_a_launch_whose_start_fails_goes_to_child_failed_and_frees_the_name(services):
    FailureNotingSupervisor.failed.clear()
    start(services, [], actor=FailureNotingSupervisor)
    root = services.names.get("root")
    root.tell(LaunchChild(spec("run:1", kwargs={"fail_init": lambda: True}), "stop-normally"))
    root.tell(LaunchChild(spec("run:1"), None))  # the name is free again
    assert Address(services.names, "run:1").call("bump") == 1
    assert [name for name, _ in FailureNotingSupervisor.failed] == ["run:1"]
    assert "init failed on purpose" in FailureNotingSupervisor.failed[0][1]


def test_chaos_on_unknown_actor_raises_not_found(services):
    start(services, [])
    with pytest.raises(NotFound):
        Chaos(services.names).kill("nobody")


def test_address_gives_up_with_actor_unavailable(services):
    with pytest.raises(ActorUnavailable, match="not available"):
        Address(services.names, "ghost", retry_for=0.05).call("bump")
