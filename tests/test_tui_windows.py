"""Windows in the full-screen mode, through a real broker: a window per private
conversation, the lobby window, switching by /window N and Alt+digit as terminals send
it, highlights and activity, the "new since you last looked" line, and lines typed while
the broker is away shown as pending until it acknowledges them."""

from __future__ import annotations

import asyncio
import signal

import pytest
from textual._xterm_parser import XTermParser

from client.tui import HIGHLIGHT_LINE
from client.windows import Activity

from .test_tui import (
    bob_in,
    chat_app,
    on_screen,
    pane_text,
    screen_text,
    side,
    type_line,
    until,
    wait_event,
)

pytestmark = pytest.mark.timeout(40)


def test_alt_digit_as_terminals_send_it_switches_windows():
    """tmux and most terminals send Alt+2 as ESC then 2; it used to type ``™``."""
    import client.tui  # noqa: F401  (its import teaches the parser)

    keys = [(e.key, e.character) for e in XTermParser().feed("\x1b2\x1b0x£™")]
    assert keys == [("alt+2", None), ("alt+0", None), ("x", "x"),
                    ("pound_sign", "£"), ("trade_mark_sign", "™")]  # typed as themselves


def test_private_conversations_get_windows_of_their_own(broker, clients):
    bob = bob_in(clients, "lounge")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            bob.send("/msg alice psst, a word")
            await until(pilot, lambda: side(app, "windows") == ["1 lobby", "2 lounge",
                                                                "3 bob (1)"],
                        "bob's conversation in a window of its own")
            assert not any("psst" in ln for ln in pane_text(app))  # not in the room
            assert app.windows.at(3).activity is Activity.HIGHLIGHT
            assert on_screen(app, "act: 3")
            await until(pilot, lambda: on_screen(app, "bob: psst, a word"), "a toast")

            await type_line(pilot, "/window 3")
            assert app.windows.current.name == "bob"
            assert side(app, "members") == ["alice", "bob"]
            assert any(ln.endswith("] bob: psst, a word") for ln in pane_text(app))
            await type_line(pilot, "plain text goes to bob")
            dm = await wait_event(bob, "dm", text="plain text goes to bob")
            assert dm["from"] == "alice"
            await until(pilot, lambda: any(ln.endswith("] alice: plain text goes to bob")
                                           for ln in pane_text(app)), "our side of it")
            await type_line(pilot, "/who")  # a command is still a command here
            await until(pilot, lambda: any("Members of lounge" in ln
                                           for ln in pane_text(app)), "/who answered")

            # /query opens one without a word said; /query alone closes it.
            await type_line(pilot, "/query carol")
            assert side(app, "windows")[-1] == "4 carol"
            assert app.windows.current.name == "carol"
            await type_line(pilot, "/query")
            assert side(app, "windows") == ["1 lobby", "2 lounge", "3 bob"]
            await type_line(pilot, "/window 9")
            assert any("No such window: there are 3" in ln for ln in pane_text(app))

            # The lobby window: commands without a slash, and nobody to talk to.
            await type_line(pilot, "/window 1")
            await type_line(pilot, "rooms")
            await until(pilot, lambda: any("Rooms (1): lounge" in ln
                                           for ln in pane_text(app)), "rooms, in the lobby")
            await type_line(pilot, "//hello?")
            assert any("Nothing is said in the lobby window" in ln for ln in pane_text(app))
            await type_line(pilot, "/window 2")
            await type_line(pilot, "back in the room")
            said = await wait_event(bob, "msg", text="back in the room")
            assert said["room"] == "lounge"

    asyncio.run(scenario())


def test_mentions_highlight_and_the_new_line_marks_where_you_left(broker, clients):
    bob = bob_in(clients, "lounge", "dev")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await type_line(pilot, "/join dev")
            await until(pilot, lambda: app.status.current == "dev", "in dev")
            lounge, dev = app.windows.at(2), app.windows.at(3)

            bob.send("/join dev", "hey alice, look at this")  # dev is on show
            await until(pilot, lambda: any("hey alice" in ln for ln in pane_text(app)),
                        "the mention")
            assert app.logs[dev].items[-1].style == HIGHLIGHT_LINE
            bob.send("no mention of malice here")
            await until(pilot, lambda: any("malice" in ln for ln in pane_text(app)), "next")
            assert app.logs[dev].items[-1].style == ""

            bob.send("/join lounge", "one in lounge", "Alice: two in lounge")
            await until(pilot, lambda: lounge.activity is Activity.HIGHLIGHT,
                        "a mention in lounge, not on show")
            assert side(app, "windows")[1] == "2 lounge (2)"
            assert on_screen(app, "act: 2")
            await until(pilot, lambda: on_screen(app, "lounge: bob: Alice: two in lounge"),
                        "the toast")
            await pilot.press("alt+2")
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            rows = pane_text(app)
            rule = next(i for i, ln in enumerate(rows) if "new since you last looked" in ln)
            assert rows[rule + 1].endswith("] bob: one in lounge")
            assert not any("Joined lounge" in ln for ln in rows[rule:])

            await pilot.press("alt+3")
            await pilot.press("alt+2")  # nothing new since: no rule
            assert not any("new since you last looked" in ln for ln in pane_text(app))

    asyncio.run(scenario())


# On PostgreSQL a core stopped past the lock's timeout is fenced (test_failover_e2e).
@pytest.mark.sqlite_only
def test_lines_typed_while_the_broker_is_away_show_as_pending(broker, clients):
    bob = bob_in(clients, "lounge")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                await until(pilot, lambda: app.status.link == "lost", "contact lost")
                await type_line(pilot, "said while away")
                await type_line(pilot, "and [b]another[/b]")
                pending = app.query_one("#pending")
                await until(pilot, lambda: pending.display and on_screen(
                    app, "alice: and [b]another[/b]"), "both shown as pending")
                assert on_screen(app, "alice: said while away")
                assert not any("alice: said while away" in ln for ln in pane_text(app))
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            for text in ("said while away", "and [b]another[/b]"):
                said = await wait_event(bob, "msg", text=text)
                assert said["from"] == "alice"
            await until(pilot, lambda: not pending.display and not app.outbox.waiting,
                        "acknowledged: no longer pending", timeout=15)
            await until(pilot, lambda: any(ln.endswith("] alice: and [b]another[/b]")
                                           for ln in pane_text(app)), "in the pane now")

    asyncio.run(scenario())


def test_a_rooms_topic_is_in_its_window_title_and_follows_changes(broker, clients):
    bob = bob_in(clients, "lounge")
    bob.send("/topic [b]release[/b] on friday")
    bob.event("subject", room="lounge")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            await until(pilot, lambda: on_screen(app, "2 lounge ─ [b]release[/b] on friday"),
                        "the topic, shown as typed (no markup), in the title")
            bob.send("/topic " + "x" * 200)
            await until(pilot, lambda: on_screen(app, "2 lounge ─ xxxxxxxxxx")
                        and any("x… ─╮" in ln for ln in screen_text(app)),
                        "the new topic, cut to fit the border")
            await type_line(pilot, "/window 1")
            await until(pilot, lambda: not on_screen(app, "─ xxx"), "the lobby has none")
            bob.send("/topic --clear")
            await type_line(pilot, "/window 2")
            await until(pilot, lambda: on_screen(app, "╭─ 2 lounge ──"), "cleared")

    asyncio.run(scenario())
