"""Sizes: text wraps to the message pane and wraps again on resize; the side panes
narrow, then fold away, on small terminals. Through a real broker, at 80×24, 40×12,
60×20 and 120×30."""

from __future__ import annotations

import asyncio

import pytest

from .test_tui import bob_in, chat_app, on_screen, type_line, until

pytestmark = pytest.mark.timeout(40)

TEXT = " ".join(f"word{i}" for i in range(40)) + " " + "y" * 90  # and one very long word


def squeezed(text: str) -> str:
    return text.replace(" ", "")


def check_wrap(app) -> int:
    """Every row fits the pane, nothing scrolls sideways, and the rows hold the whole
    message; returns the pane's text width."""
    log = app.logs[app.windows.current]
    width = log.scrollable_content_region.width
    rows = [strip.text for strip in log.lines]
    start = next(i for i, row in enumerate(rows) if "bob: word0" in row)
    mine = rows[start:]
    assert all(len(row.rstrip()) <= width for row in rows), (width, rows)
    assert log.max_scroll_x == 0 and log.virtual_size.width <= width
    assert squeezed("".join(mine)).endswith(squeezed(f"bob: {TEXT}"))
    assert len(mine) > 1  # it did wrap
    return width


def test_text_wraps_to_the_pane_and_again_on_resize(broker, clients):
    bob = bob_in(clients, "lounge")

    async def scenario() -> None:
        async with chat_app(broker, size=(80, 24)) as (app, pilot):
            await type_line(pilot, "/join lounge")
            await until(pilot, lambda: app.status.current == "lounge", "in lounge")
            bob.send(TEXT)
            log = app.logs[app.windows.current]
            await until(pilot, lambda: any("y" * 10 in s.text for s in log.lines),
                        "the long message")
            width = check_wrap(app)
            assert width >= 40  # most of 80 columns is the message pane
            assert app.query_one("#windows").display and app.query_one("#members").display
            assert on_screen(app, "bob: word0")

            await pilot.resize_terminal(40, 12)
            await until(pilot, lambda: log.scrollable_content_region.width < width,
                        "the pane narrows")
            await pilot.pause()
            narrow = check_wrap(app)
            assert narrow >= 30  # the side panes gave way to the messages
            assert not app.query_one("#windows").display
            assert not app.query_one("#members").display
            assert on_screen(app, "y" * narrow)  # the folded long word, on show
            assert on_screen(app, "2:lounge")  # the status line still says where

            await pilot.resize_terminal(60, 20)
            await until(pilot, lambda: log.scrollable_content_region.width != narrow,
                        "the pane widens")
            await pilot.pause()
            check_wrap(app)
            assert app.query_one("#windows").display
            assert not app.query_one("#members").display

            await pilot.resize_terminal(120, 30)
            await until(pilot, lambda: log.scrollable_content_region.width > width,
                        "wider than at first")
            await pilot.pause()
            check_wrap(app)
            assert app.query_one("#members").display

    asyncio.run(scenario())
