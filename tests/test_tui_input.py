"""Typing and pasting fast in the full-screen mode: every line sent once, whole, in order.

Keys come as a terminal delivers them to a fast typist or a paste, all at once, without
waiting for the app (``burst``); bracketed pastes come as the driver posts them
(``paste``). The broker runs its default rate limits: a 200-line paste is more than its
burst, so the library's pacing must carry it, with no ``rate_limited`` answer.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from textual import events

from .harness import Client
from .test_tui import bob_in, burst, chat_app, on_screen, pane_text, paste, side, type_line, until

pytestmark = pytest.mark.timeout(60)


async def texts_from(bob: Client, count: int, timeout: float = 30.0) -> list[str]:
    """The next ``count`` messages bob is sent, then anything more within a short while
    (there must be nothing more: each line once)."""
    got = [(await asyncio.to_thread(bob.event, "msg", timeout=timeout))["text"]
           for _ in range(count)]
    extra = await asyncio.to_thread(bob.out.drain, 0.5)
    return got + [e["text"] for e in map(json.loads, extra) if e.get("event") == "msg"]


def refused(app) -> list[str]:
    """Lines in any window that tell of a refusal (an error line)."""
    return [ln for w in app.windows.all for ln in pane_text(app, w)
            if "Slow down" in ln or "rate" in ln.lower()]


def test_lines_typed_at_paste_speed_go_once_whole_and_in_order(broker, clients):
    bob = bob_in(clients, "lounge", "dev")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await type_line(pilot, "/join dev")
            await until(pilot, lambda: app.status.current == "dev", "in dev")
            await pilot.press("ctrl+p")  # back to lounge
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            lines = [f"zero {i}" for i in range(10)]
            burst(app, "".join(f"{line}\n" for line in lines))
            assert await texts_from(bob, 10) == lines
            await until(pilot, lambda: [ln.split("] ", 1)[-1] for ln in pane_text(app)
                                        if "alice: zero" in ln]
                        == [f"alice: {line}" for line in lines], "each once in the pane")

            # A switch typed between two lines applies between them: the first line
            # goes to lounge, the second to dev (a binding used to jump ahead).
            burst(app, "before the switch\n")
            app._driver.send_message(events.Key("ctrl+n", None))
            burst(app, "after the switch\n")
            first = await asyncio.to_thread(bob.event, "msg", text="before the switch")
            second = await asyncio.to_thread(bob.event, "msg", text="after the switch")
            assert (first["room"], second["room"]) == ("lounge", "dev")

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
def test_a_200_line_paste_is_asked_about_then_sent_whole_once_in_order(broker, clients,
                                                                       size):
    bob = bob_in(clients, "lounge")
    lines = [f"line {i:03} of the paste, with a few words to it" for i in range(200)]

    async def scenario() -> None:
        async with chat_app(broker, size=size) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            paste(app, "\n".join(lines) + "\n")
            await until(pilot, lambda: on_screen(app, "Send 200 pasted lines"),
                        "asked first")
            assert app.query_one("#input").value == ""
            await pilot.press("y")
            await until(pilot, lambda: app.query_one("#pending").display,
                        "lines shown as waiting to be sent")
            assert await texts_from(bob, 200) == lines
            await until(pilot, lambda: not app.outbox.waiting
                        and not app.query_one("#pending").display, "none left pending")
            mine = [ln for ln in pane_text(app) if ln.startswith("line ")
                    or "alice: line " in ln]
            assert len([ln for ln in mine if "alice: line " in ln]) == 200, mine[-5:]
            assert refused(app) == []

    asyncio.run(scenario())


def test_a_short_paste_goes_at_once_as_text_joined_to_what_was_typed(broker, clients):
    bob = bob_in(clients, "lounge")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            await pilot.press(*"look: ")
            paste(app, "first\n/quit is a line of text here\n\nlast")
            assert await texts_from(bob, 3) == ["look: first",
                                                "/quit is a line of text here", "last"]
            assert app.is_running  # the pasted /quit was said, not obeyed
            # One line with its newline is put in the box, to be edited or sent.
            paste(app, "just one\n")
            await until(pilot, lambda: app.query_one("#input").value == "just one",
                        "one line pasted into the box")
            await pilot.press("enter")
            assert await texts_from(bob, 1) == ["just one"]
            # Pasted in a conversation, lines go to that person.
            await type_line(pilot, "/query bob")
            await until(pilot, lambda: side(app, "windows")[-1] == "3 bob", "bob's window")
            paste(app, "one\ntwo")
            for text in ("one", "two"):
                dm = await asyncio.to_thread(bob.event, "dm", text=text)
                assert dm["from"] == "alice"

    asyncio.run(scenario())
