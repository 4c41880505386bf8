"""Kill, crash and hang actors while runs are in flight; nothing accepted is lost.

    python examples/chaos_demo.py
"""

from __future__ import annotations

import tempfile

import palyra


def main() -> None:
    config = {"supervision": {"probe_interval": 0.1, "max_restarts": 100}}
    with palyra.Runtime.start(tempfile.mkdtemp(prefix="palyra-chaos-"), config) as rt:
        runs = [rt.send(f"message {i}", session_key=f"s{i % 4}") for i in range(20)]
        rt.chaos.kill("gateway")
        rt.chaos.crash("journal")
        rt.chaos.hang("budget", 0.5)
        runs += [rt.send(f"after chaos {i}", session_key="s0") for i in range(5)]
        states = [run.wait(timeout=15).state for run in runs]
        print("states:", {s: states.count(s) for s in set(states)})
        for row in rt.actors():
            if row["restarts"] or row["hung"]:
                print(f"{row['path']}: restarts={row['restarts']} hung={row['hung']} "
                      f"last={row['last_restart_reason']}")
        print("journal:", rt.verify_journal())


if __name__ == "__main__":
    main()
