"""The full-screen mode, driven by Textual's own pilot against a real broker.

The app runs headless in the test's event loop with a real ``Connection`` and ``Runner``
(on their thread, as in ``python -m client --tui``); other people are harness clients.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from rich.console import Console
from textual import events
from textual.keys import _character_to_key

from client.connection import Connection
from client.tui import ChatApp, ChatInput, SideList
from schema import keys

from .harness import Broker, Client

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def chat_app(broker: Broker, name: str = "alice", size: tuple[int, int] = (120, 30)
                   ) -> AsyncIterator[tuple[ChatApp, object]]:
    key = keys.load(Path(broker.keys_dir or "") / "broker.key").public
    conn = Connection(broker.router, server_key=key)
    conn.hello(timeout=5)
    conn.request("login", name=name)
    app = ChatApp(conn, broker.router)
    try:
        async with app.run_test(size=size, notifications=True) as pilot:  # toasts drawn
            yield app, pilot
    finally:
        app.stop_network()
        conn.close()


async def until(pilot, check: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    """Let the app run until ``check()`` holds, or fail saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"never: {what}")
        await pilot.pause(0.05)


async def type_line(pilot, text: str) -> None:
    await pilot.press(*text, "enter")


def pane_text(app: ChatApp, window=None) -> list[str]:
    """The lines of the message pane on show (or of ``window``'s), as wrapped."""
    log = app.logs[window or app.windows.current]
    return [strip.text.rstrip() for strip in log.lines]


def screen_text(app: ChatApp) -> list[str]:
    """The screen as a person sees it, line by line (what ``export_screenshot`` draws,
    modal screens and toasts included, as plain text)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True,
                      force_terminal=True, color_system="truecolor", legacy_windows=False,
                      safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    return console.export_text().splitlines()


def on_screen(app: ChatApp, text: str) -> bool:
    return any(text in line for line in screen_text(app))


def burst(app: ChatApp, text: str) -> None:
    """Keys as a terminal delivers a fast typist or an unbracketed paste: all at once,
    each posted by the driver without waiting for the app to handle the one before."""
    for ch in text:
        key = "enter" if ch == "\n" else ch if ch.isalnum() else _character_to_key(ch)
        app._driver.send_message(events.Key(key, "\r" if ch == "\n" else ch))


def paste(app: ChatApp, text: str) -> None:
    """A bracketed paste, as the driver posts it."""
    app._driver.send_message(events.Paste(text))


def side(app: ChatApp, which: str) -> list[str]:
    box = app.query_one(f"#{which}", SideList)
    return [str(box.get_option_at_index(i).prompt) for i in range(box.option_count)]


async def wait_event(client: Client, kind: str, **match) -> dict:
    return await asyncio.to_thread(client.event, kind, **match)


def bob_in(clients: Callable[..., Client], *rooms: str) -> Client:
    bob = clients()
    bob.send("login bob", *(f"/create {r}" for r in rooms))
    for room in rooms:
        bob.event("reply", cmd="create", room=room)
    return bob


def test_messages_and_members_of_a_room_show_live(broker, clients):
    bob = bob_in(clients, "lounge")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await until(pilot, lambda: app.status.name == "alice", "logged in")
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: side(app, "members") == ["alice", "bob"],
                        "the members list shows alice and bob")
            assert side(app, "windows") == ["1 lobby", "2 lounge"]

            bob.send("hi alice")
            await until(pilot, lambda: any(ln.endswith("] bob: hi alice")
                                           for ln in pane_text(app)),
                        "bob's message in the pane")
            await type_line(pilot, "hello bob")
            said = await wait_event(bob, "msg", text="hello bob")
            assert said["from"] == "alice"
            await until(pilot, lambda: any(ln.endswith("] alice: hello bob")
                                           for ln in pane_text(app)), "our echo")

            carol = clients()
            carol.send("login carol", "join lounge")
            await until(pilot, lambda: side(app, "members") == ["alice", "bob", "carol"],
                        "carol joins the list")
            carol.close_input()  # she says bye: leaves the room
            await until(pilot, lambda: side(app, "members") == ["alice", "bob"],
                        "carol leaves the list")

    asyncio.run(scenario())


def test_rooms_switch_by_keyboard_and_count_unread(broker, clients):
    bob = bob_in(clients, "lounge", "dev")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            await type_line(pilot, "/join dev")
            await until(pilot, lambda: app.status.current == "dev", "in dev")
            bob.send("/join lounge", "psst", "over here")
            await until(pilot, lambda: side(app, "windows") == ["1 lobby", "2 lounge (2)",
                                                                "3 dev"],
                        "two unread in lounge")
            assert not any("psst" in ln for ln in pane_text(app))  # dev on show

            await pilot.press("ctrl+p")
            await until(pilot, lambda: app.status.current == "lounge", "switched to lounge")
            await until(pilot, lambda: side(app, "windows") == ["1 lobby", "2 lounge",
                                                                "3 dev"], "read now")
            assert any(ln.endswith("] bob: over here") for ln in pane_text(app))
            assert not any("Joined lounge" in ln for ln in pane_text(app)[-3:])  # quietly
            assert side(app, "members") == ["alice", "bob"]

            await pilot.press("alt+3")
            await until(pilot, lambda: app.status.current == "dev", "Alt+3: dev")
            await pilot.press("ctrl+n")  # wraps around to the lobby
            assert app.windows.current is app.windows.server
            assert side(app, "members") == []
            await pilot.press("ctrl+n")
            await until(pilot, lambda: app.status.current == "lounge", "Ctrl+N: lounge")
            await pilot.click("#windows", offset=(4, 3))  # the third row: dev
            await until(pilot, lambda: app.status.current == "dev", "a click on dev")
            await pilot.press("ctrl+p")
            await until(pilot, lambda: app.status.current == "lounge", "back to lounge")

            await type_line(pilot, "same commands here")
            said = await wait_event(bob, "msg", text="same commands here")
            assert said["room"] == "lounge"

    asyncio.run(scenario())


def test_tab_completes_up_recalls_and_page_up_scrolls_back(broker, clients):
    bob_in(clients, "lounge")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            box = app.query_one(ChatInput)
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: side(app, "members") == ["alice", "bob"], "joined")
            await pilot.press(*"/wh", "tab")
            assert box.value == "/who "
            await pilot.press("tab")  # the next candidate
            assert box.value == "/whisper "
            await pilot.press(*"b", "tab")
            assert box.value == "/whisper bob"
            box.value = ""
            await pilot.press("up")
            assert box.value == "/join lounge"
            await pilot.press("down")
            assert box.value == ""

            await type_line(pilot, "/help")
            await type_line(pilot, "/help")
            log = app.logs[app.windows.current]
            await until(pilot, lambda: sum("/quit" in ln for ln in pane_text(app)) == 2
                        and log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y,
                        "two pages of help, the last on show")
            await pilot.press("pageup")
            assert log.scroll_y < log.max_scroll_y
            await pilot.press("pagedown", "pagedown")
            assert log.scroll_y == log.max_scroll_y

    asyncio.run(scenario())


def test_escape_sequences_from_others_are_shown_not_obeyed(broker, clients):
    bob = bob_in(clients, "lounge")

    async def scenario() -> None:
        async with chat_app(broker) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: side(app, "members") == ["alice", "bob"], "joined")
            bob.send("\x1b[2Jboo\x07")
            await until(pilot, lambda: any(ln.endswith("] bob: ^[[2Jboo^G")
                                           for ln in pane_text(app)), "shown in carets")

    asyncio.run(scenario())
