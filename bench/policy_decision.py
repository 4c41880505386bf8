"""µs per PolicyEngine.evaluate with pre-parsed handles (spec target: about 50 µs)."""

from __future__ import annotations

import statistics
import time

from palyra.policy import PolicyConfig, PolicyEngine, PolicyRequest


def main() -> None:
    engine = PolicyEngine.build(
        PolicyConfig(
            allowed_tools={"palyra.echo", "palyra.sleep", "palyra.http.fetch"},
            allowed_principals={"user:ops"},
            allowed_channels={"cli"},
        )
    )
    requests = [
        PolicyRequest("user:ops", "tool.execute", "tool:palyra.echo", "DEV", "cli", "S", "R"),
        PolicyRequest(
            "user:ops",
            "tool.execute",
            "tool:palyra.http.fetch",
            "DEV",
            "cli",
            "S",
            "R",
            capabilities=("network",),
        ),
        PolicyRequest("user:ops", "memory.purge", "memory:session:S", "DEV", "cli"),
        PolicyRequest("user:eve", "tool.execute", "tool:palyra.echo", "DEV", None),
    ]
    for request in requests:  # warm up
        engine.evaluate(request)
    rounds, per_round = 30, 400
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(per_round):
            engine.evaluate(requests[i % len(requests)])
        samples.append((time.perf_counter() - started) / per_round * 1e6)
    samples.sort()
    print(
        f"policy evaluate: median {statistics.median(samples):.1f} µs/decision, "
        f"best {samples[0]:.1f}, worst round {samples[-1]:.1f}"
    )


if __name__ == "__main__":
    main()
