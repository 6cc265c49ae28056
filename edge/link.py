"""How much of what an edge relayed its core has read, with no socket in sight.

libzmq counts a link's queue in messages, and one of an edge's link messages is a turn's
requests: a count tells nothing of the bytes waiting for a core that stopped reading.
So the edge counts the bytes it relays, and each HELLO it sends carries that count (its
mark); the core's ALIVE answering it echoes the mark, and what came before a HELLO the
core answered it has read. The edge relays while no more than LINK_BYTES are unread
(PROTOCOL.md §1.6).
"""

from __future__ import annotations

from schema import edge as E


class Link:
    def __init__(self) -> None:
        self.relayed = 0  # bytes handed to the core so far
        self.marked = 0  # the count at the last HELLO sent: its mark
        self.read = 0  # what the core is known to have read

    def relaying(self, more: int = 0) -> bool:
        """May ``more`` bytes go to the core? While it has read all but LINK_BYTES."""
        return self.relayed + more - self.read < E.LINK_BYTES

    def sent(self, size: int) -> None:
        self.relayed += size

    def hello_due(self) -> bool:
        """An eighth of LINK_BYTES relayed since the last HELLO: ask again, before the
        heartbeat, so that a busy link learns what the core read in time."""
        return self.relayed - self.marked > E.LINK_BYTES // 8

    def hello_sent(self) -> None:
        """A HELLO went out, marked with the bytes relayed before it."""
        self.marked = self.relayed

    def alive(self, echoed: bytes | None) -> None:
        """The core's ALIVE, with the mark of the HELLO it answers, if it echoed one: all
        before that is read. An older core echoes none: read up to the last HELLO, give
        or take one. A mark from before a drop, or garbled, moves nothing back or past
        what was relayed."""
        if echoed is not None and echoed.isdigit():
            self.read = min(self.relayed, max(self.read, int(echoed)))
        else:
            self.read = max(self.read, self.marked)

    def forget(self) -> None:
        """What went to a core that is gone, or before it knew this edge, is not waited
        for: counting starts again from here."""
        self.read = self.relayed
