"""An actor inbox that can jump the queue and hand out batches.

pykka's inbox is a plain FIFO ``queue.Queue``. Supervision needs two more things:
liveness probes and chaos ``kill``/``hang`` must reach the actor at the next message
boundary (not behind a backlog), and the journal writer drains runs of writes into
one transaction. Both work on the queue's own deque under its own lock.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from pykka._envelope import Envelope


class Mailbox(queue.Queue):  # type: ignore[type-arg]
    def put_front(self, envelope: Envelope[Any]) -> None:
        """Deliver ``envelope`` before everything already queued."""
        with self.not_empty:
            self.queue.appendleft(envelope)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def take_while(
        self, accept: Callable[[Envelope[Any]], bool], limit: int
    ) -> list[Envelope[Any]]:
        """Pop queued envelopes from the front while ``accept`` holds, up to ``limit``.

        Stops at the first envelope that is not accepted, so per-sender order between
        accepted and other messages is preserved.
        """
        taken: list[Envelope[Any]] = []
        with self.mutex:
            while self.queue and len(taken) < limit and accept(self.queue[0]):
                taken.append(self.queue.popleft())
            if taken:
                self.not_full.notify()
        return taken

    def drain(self) -> list[Envelope[Any]]:
        """Pop everything queued (used when an incarnation is abandoned)."""
        with self.mutex:
            taken = list(self.queue)
            self.queue.clear()
            self.not_full.notify()
        return taken
