from __future__ import annotations

import pykka
import pytest

import palyra
from actors.journal import Write
from actors.writing import Committed
from supervisors.request import Request


def test_a_commit_from_a_gone_incarnation_fails_its_caller_without_crashing_a_fresh_actor(tmp_path):
    """A restarted gateway that has written nothing yet may still be handed a commit its
    predecessor started: the waiting caller is told to retry, and the actor keeps running."""
    rt = palyra.Runtime.start(tmp_path / "state")
    try:
        write = Write(())
        write.caller = Request()
        restarts = rt.actor("gateway")["restarts"]
        rt.services.names.get("gateway").tell(Committed(write))
        with pytest.raises(pykka.ActorDeadError, match="incarnation that wrote this is gone"):
            write.caller.wait(5)
        rt.send("still here", session_key="k").wait(10)
        assert rt.actor("gateway")["restarts"] == restarts
    finally:
        rt.stop()
