"""Starting a run's actor: the gateway hands the start to the runs supervisor and never
waits for it, so a start that fails must still end the run, with the reason on the tape."""

from __future__ import annotations

from actors.run import RunActor


def test_a_run_whose_actor_cannot_start_is_failed_and_the_gateway_goes_on(runtime, monkeypatch):
    failed: list[str] = []
    real_init = RunActor.init

    def init_failing_once(self: RunActor) -> None:
        if not failed:
            failed.append(self.spec.run_id)
            raise RuntimeError("no room for this run")
        real_init(self)

    monkeypatch.setattr(RunActor, "init", init_failing_once)
    handle = runtime.send("hello", session_key="start")  # accepted before any actor starts
    result = handle.wait(10)
    assert failed == [handle.id]
    assert result.state == "failed"
    assert "no room for this run" in (result.last_error or "")
    assert runtime.tape(handle.id)[-1].payload["kind"] == "failed"
    assert runtime.send("again", session_key="start").wait(10).state == "done"
    assert runtime.verify_journal().ok
