"""Embed Palyra in a program: start a runtime, run an agent turn with a tool, stream it.

    python examples/embed.py [STATE_DIR]
"""

from __future__ import annotations

import sys
import tempfile

import palyra


def main() -> None:
    state_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="palyra-")
    config = {"tools": {"allowed": ["palyra.echo"]}}  # tools are denied unless allowed
    with palyra.Runtime.start(state_dir, config) as rt:
        # The deterministic provider scripts a tool call from this directive line.
        run = rt.send('Say hi through a tool.\n@tool palyra.echo {"text": "hi"}', session_key="demo")
        for event in run.events(timeout=10):
            print(f"{event.seq!s:>4} {event.event_type}")
        result = run.wait(timeout=10)
        print(result.state, "->", result.reply_text)
        print("journal:", rt.verify_journal())


if __name__ == "__main__":
    main()
