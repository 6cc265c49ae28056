"""Markup injection: names, room names, texts and reasons from others are text in every
widget of the full-screen mode, never Textual or Rich markup.

A nickname ``[/]`` used to crash ``--tui`` (MarkupError) when the victim pressed Tab, a
room ``[/]`` crashed it on joining, and a room ``[@click=app.quit]lounge[/]`` was shown as
"lounge" with a click action on it. Here hostile users on a real broker use such names
in rooms, messages, private messages, completions, a paste confirmation and an operator's
reason, and every one must show up literally, brackets and all.
"""

from __future__ import annotations

import asyncio

import pytest

from .harness import admin
from .test_tui import chat_app, on_screen, pane_text, paste, screen_text, side, type_line, until

pytestmark = pytest.mark.timeout(40)

CLOSER = "[/]"  # a closing tag with nothing open: MarkupError
CLICKER = "[@click=app.quit]"  # a nickname that is an action
TRAP = "[@click=app.quit]lounge[/]"  # a room that would read "lounge" and quit on click
STYLED = "[b]x[/b]"


def test_hostile_names_and_texts_show_literally_everywhere(broker, clients):
    mallory, clicker = clients(), clients()
    mallory.send(f"login {CLOSER}", f"/create {CLOSER}", f"/create {TRAP}")
    mallory.event("reply", cmd="create", room=TRAP)
    clicker.send(f"login {CLICKER}", f"/join {CLOSER}")
    clicker.event("reply", cmd="join", room=CLOSER)

    async def scenario() -> None:
        async with chat_app(broker, size=(160, 40)) as (app, pilot):
            await until(pilot, lambda: app.status.name == "alice", "logged in")
            await type_line(pilot, f"/join {CLOSER}")
            await until(pilot, lambda: side(app, "members") == [CLOSER, CLICKER, "alice"],
                        "the hostile members listed as they are")
            await type_line(pilot, f"/join {TRAP}")
            await until(pilot, lambda: side(app, "windows") == ["1 lobby", f"2 {CLOSER}",
                                                                f"3 {TRAP}"],
                        "both rooms in the window list, brackets and all")
            assert on_screen(app, f"3 {TRAP}")  # the pane's title
            assert on_screen(app, f"alice │ 3:{TRAP}")  # the status line

            # Texts in a room not on show: the line, its unread count.
            mallory.send(f"/join {CLOSER}", f"[red]red[/red] {CLICKER}click[/] {STYLED}")
            await until(pilot, lambda: side(app, "windows")[1] == f"2 {CLOSER} (1)",
                        "an unread message in the first room")
            await pilot.press("alt+2")
            await until(pilot, lambda: any(ln.endswith(
                f"] {CLOSER}: [red]red[/red] {CLICKER}click[/] {STYLED}")
                for ln in pane_text(app)), "the message as it was typed")

            # Tab with several candidates lists them in a toast: as text.
            await pilot.press(*"/msg [", "tab")
            await until(pilot, lambda: on_screen(app, f"{CLOSER}  {CLICKER}"),
                        "the candidates in a toast")
            app.query_one("#input").value = ""

            # A private message opens a conversation, and a toast names its sender.
            mallory.send(f"/msg alice {STYLED} {CLOSER}")
            await until(pilot, lambda: side(app, "windows")[-1] == f"4 {CLOSER} (1)",
                        "the conversation's window")
            await until(pilot, lambda: on_screen(app, f"{CLOSER}: {CLOSER}: {STYLED}"),
                        "the toast of the private message")
            await type_line(pilot, "/window 4")
            await until(pilot, lambda: any(ln.endswith(f"] {CLOSER}: {STYLED} {CLOSER}")
                                           for ln in pane_text(app)), "the message")
            assert on_screen(app, f"4 {CLOSER} (private)")

            # The paste confirmation names the window as it is.
            await pilot.press("alt+3")
            paste(app, "\n".join(f"line {i}" for i in range(10)))
            await until(pilot, lambda: on_screen(app, f"Send 10 pasted lines to {TRAP}, "),
                        "the question, with the room's name")
            await pilot.press("n")
            await until(pilot, lambda: any("Paste of 10 lines not sent" in ln
                                           for ln in pane_text(app)), "cancelled")

            # Clicking the trap room's entry and title only switches to it.
            await pilot.click("#windows", offset=(4, 3))
            await pilot.click("#panes", offset=(6, 0))
            await pilot.pause(0.2)
            assert app.is_running and app.windows.current.name == TRAP

            # An operator's reason, in the lobby window, as it was given.
            done = await asyncio.to_thread(admin, broker.control, "kill", TRAP,
                                           "--reason", f"{CLOSER} gone {STYLED}")
            assert done.returncode == 0, done.stderr
            await until(pilot, lambda: side(app, "windows") == [
                "1 lobby", f"2 {CLOSER}", f"3 {CLOSER}"], "the killed room's window gone")
            assert any(ln.endswith(f"You were removed from {TRAP}: {CLOSER} gone {STYLED}")
                       for ln in pane_text(app, app.windows.server))
            assert not any("Traceback" in ln for ln in screen_text(app))

    asyncio.run(scenario())
