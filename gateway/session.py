"""One IRC client's conversation with zchat: IRC messages and zchat events in, IRC lines
and zchat requests out. Pure: no sockets, no clock of its own (times come in with the
events, and ``wall`` is given), so every rule here is tested with plain values.

The server loop (gateway/server.py) feeds it the client's lines (``receive``) and the
events of its ``client.connection.Connection`` (``event``), calls ``settle`` after each
batch of events, and sends what ``take`` returns. It opens the zchat session when
``wants_broker`` says so and hands over its ``request`` function with ``attach``.

How zchat reads in IRC (docs/irc.md has the whole table):

* a room is a channel (``#`` + its name); ``JOIN`` enters it, or creates it if missing,
  as the zchat client's ``/create``; its recent history follows the JOIN as a
  ``chathistory`` batch (or as plain lines, with the time in front when the client has
  no ``server-time``);
* a room message is a ``PRIVMSG`` to the channel (``/me`` a CTCP ACTION), a private
  message a ``PRIVMSG`` to the nick; a whisper (a message to one member inside a room)
  has no IRC verb, so it arrives as a ``NOTICE`` from the sender that names the room
  (and carries the ``+draft/channel-context`` tag); a ``PRIVMSG`` to a nick with that
  tag is sent as a whisper;
* our own messages are echoed (``echo-message``) when zchat acknowledged them, so what
  the client shows as sent is stored; the room's copy of them is not shown again.
"""

from __future__ import annotations

from collections.abc import Callable

from client.connection import Event
from schema import protocol as P

from . import irc
from .commands import BEFORE_REGISTRATION, COMMANDS, Commands
from .core import (  # noqa: F401 - the session's limits and ids, for callers and tests
    HELD_MAX,
    IMMEDIATE,
    PENDING_MAX,
    RESYNC_AFTER,
    SERVER,
    SPLIT_MAX,
    Channel,
    irc_time,
    msgid,
    seq_of,
)
from .events import EVENTS, Events
from .irc import Message
from .names import key
from .replies import REPLIES, Replies


class Session(Commands, Replies, Events):
    """One IRC client: ``receive`` its lines, ``event`` its Connection's events,
    ``settle`` after each batch of them, ``tick`` each turn; ``take`` what to send."""

    def take(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def attach(self, request: Callable[..., int]) -> None:
        """The zchat session is open: ``request(cmd, **fields)`` sends, returns its id."""
        self._request = request
        self.wants_broker = False
        if self._sasl == "checking" and self._sasl_login:
            name, password = self._sasl_login
            if self._may_try_password():
                self._ask("login", ("sasl",), name=name, password=password)
            else:
                self._sasl = None
                self._num("904", "SASL authentication failed: too many attempts")
                self._try_register()
        else:
            self._try_register()
        self._drain()

    def broker_failed(self, text: str) -> None:
        self.fatal(f"Cannot reach zchat: {text}")

    def receive(self, line: bytes) -> None:
        """One line from the IRC client (already within the limits, see irc.LineReader)."""
        if self.closed is not None:
            return
        msg = irc.parse(line)
        if msg is None:
            return
        if msg.command in IMMEDIATE or not (self._barrier or self._held or
                                            self.wants_broker):
            self._handle(msg)
        elif len(self._held) >= HELD_MAX:
            self.fatal("Excess Flood")
        else:
            self._held.append(msg)  # carried out once what it may depend on is answered

    def _drain(self) -> None:
        while self._held and not self._barrier and not self.wants_broker \
                and self.closed is None:
            self._handle(self._held.popleft())

    def _handle(self, msg: Message) -> None:
        handler = COMMANDS.get(msg.command)
        if handler is None:
            if self.registered:
                self._num("421", msg.command[:32], "Unknown command")
            return
        needs_registration = msg.command not in BEFORE_REGISTRATION
        if needs_registration and not self.registered:
            self._num("451", "You have not registered")
            return
        handler(self, msg)

    def event(self, ev: Event) -> None:
        """One event of our zchat Connection, in the order it gave them."""
        if self.closed is not None:
            return
        d = ev.data
        room = d.get("room")
        if isinstance(room, str) and not d.get("replay") and key(room) in self._replaying:
            self._end_replay(key(room))  # the welcome's history is over
        if ev.re is not None and ev.re in self._waiting and ev.kind in ("reply", "error"):
            why = self._waiting.pop(ev.re)
            REPLIES[why[0]](self, why, ev.kind == "reply", d)
            self._barrier.discard(ev.re)  # after its follow-ups (next pages) were asked
            self._drain()
            return
        handler = EVENTS.get(ev.kind)
        if handler is not None:
            handler(self, d)

    def tick(self, now: float) -> None:
        """The loop's clock, each turn: what is due by time."""
        if self._resync is True:
            self._resync = now + RESYNC_AFTER
        elif self._resync and now >= self._resync:
            self._resync = False
            for k, ch in self.channels.items():
                self._ask("who", ("resync", k, 1, ()), wait=False, room=ch.room,
                          limit=P.LIST_PAGE_MAX)

    def settle(self) -> None:
        """A batch of events is over: close the history batches the welcomes opened."""
        for k in list(self._replaying):
            self._end_replay(k)

    @property
    def pending(self) -> int:
        return len(self._waiting)
