"""``--tui`` in a real terminal: tmux runs ``python -m client --tui`` in a pseudo-terminal
against a real broker, keys and pastes go in as tmux sends them, the screen is read back.

tmux sends Alt+digit as ESC then the digit (Textual used to read that as ``¡™£``), a
bracketed paste with the markers the app asked for, and typed keys as fast as it can.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator

import pytest

from .harness import Broker, Client
from .test_terminal_pty import Terminal

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
    pytest.mark.timeout(60),
]


@pytest.fixture
def tui(broker: Broker) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(width: int = 80, height: int = 24) -> Terminal:
        # COLUMNS and LINES may be set in the test process (to 80×24), and Textual takes
        # them over the terminal's real size: unset, it asks the pseudo-terminal.
        t = Terminal(["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-m", "client",
                      "--server", broker.router, "--tui", "--name", "alice"],
                     width=width, height=height)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


def status(t: Terminal) -> str:
    return t.screen()[0]


def alice_in_lounge(tui: Callable[..., Terminal], clients: Callable[..., Client],
                    **size: int) -> tuple[Terminal, Client]:
    bob = clients()
    bob.send("login bob", "/create lounge")
    bob.event("reply", cmd="create", room="lounge")
    alice = tui(**size)
    alice.wait_for(lambda _: status(alice).startswith(" alice │ 1:lobby"), timeout=15)
    alice.type("/join lounge")
    alice.press("Enter")
    alice.wait_for(lambda _: status(alice).startswith(" alice │ 2:lounge"))
    return alice, bob


def texts(bob: Client, count: int) -> list[str]:
    got = [bob.event("msg", timeout=30)["text"] for _ in range(count)]
    assert not [ln for ln in bob.out.drain(0.5) if '"event": "msg"' in ln]  # once each
    return got


def test_alt_digits_and_ctrl_n_switch_windows_under_tmux(tui, clients):
    alice, bob = alice_in_lounge(tui, clients)
    alice.press("M-1")
    alice.wait_for(lambda _: status(alice).startswith(" alice │ 1:lobby"))
    alice.press("M-2")
    alice.wait_for(lambda _: status(alice).startswith(" alice │ 2:lounge"))
    alice.press("C-n")
    alice.wait_for(lambda _: status(alice).startswith(" alice │ 1:lobby"))
    alice.press("C-p")
    alice.wait_for(lambda _: status(alice).startswith(" alice │ 2:lounge"))
    alice.type("after the switches")
    alice.press("Enter")
    said = bob.event("msg", text="after the switches")  # nothing like ¡™ typed before it
    assert said["room"] == "lounge"


def test_keys_typed_at_speed_are_sent_once_whole_in_order(tui, clients):
    alice, bob = alice_in_lounge(tui, clients)
    lines = [f"zero {i}" for i in range(10)]
    alice.press(*[k for line in lines for k in (line, "Enter")])  # one burst
    assert texts(bob, 10) == lines


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
def test_a_bracketed_200_line_paste_arrives_whole_once_in_order(tui, clients, size):
    alice, bob = alice_in_lounge(tui, clients, width=size[0], height=size[1])
    lines = [f"pasted line {i:03} with some words" for i in range(200)]
    alice.paste("\n".join(lines) + "\n", bracketed=True)
    alice.wait_for("Send 200 pasted lines")
    alice.press("y")
    assert texts(bob, 200) == lines
    screen = alice.wait_for(lambda s: any("alice: pasted line 199" in ln for ln in s))
    assert not any("Slow down" in ln for ln in screen)
