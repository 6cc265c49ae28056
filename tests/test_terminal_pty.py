"""The line mode in a real terminal: tmux runs ``python -m client`` in a pseudo-terminal
against a real broker, keys are typed into it and its screen is read back.

What a person sees is the test: the line being typed survives messages arriving above
it, Tab completes, the toolbar tells who and where you are.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from .harness import ROOT, Broker, Client

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
    pytest.mark.timeout(30),
]

class Terminal:
    """One tmux session on a private server, running one command."""

    def __init__(self, command: list[str], width: int = 100, height: int = 24):
        # A server of our own, its socket in a fresh short directory (sockets have a
        # short path limit), removed with it.
        self.dir = tempfile.mkdtemp(prefix="zchat-tmux-")
        self.socket = os.path.join(self.dir, "s")
        env = {"PYTHONPATH": str(ROOT), "ZCHAT_KEYS": os.environ.get("ZCHAT_KEYS", ""),
               "TERM": "xterm-256color", "LANG": "C.UTF-8"}
        # When the program ends, say how and keep the pane (and its screen) around.
        assignments = shlex.join(f"{k}={v}" for k, v in env.items())
        shell = (f"cd {shlex.quote(str(ROOT))} && env {assignments} {shlex.join(command)}; "
                 "echo \"[exited $?]\"; sleep 60")
        self._tmux("new-session", "-d", "-x", str(width), "-y", str(height), shell)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True,
                              capture_output=True, text=True, timeout=5).stdout

    def screen(self) -> list[str]:
        return [line.rstrip() for line in self._tmux("capture-pane", "-p").split("\n")]

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-l", text)

    def press(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def wait_for(self, test: Callable[[list[str]], bool] | str, timeout: float = 8.0
                 ) -> list[str]:
        """Read the screen until it passes ``test`` (or shows the text), or fail."""
        check = test if callable(test) else (lambda lines: any(test in ln for ln in lines))
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen()
            if check(lines):
                return lines
            if time.monotonic() > deadline:
                pytest.fail(f"the screen never showed {test!r}:\n" + "\n".join(lines))
            time.sleep(0.05)

    def prompt_is(self, text: str) -> Callable[[list[str]], bool]:
        return lambda lines: any(ln == text for ln in lines)

    def toolbar(self) -> str:
        return [ln for ln in self.screen() if ln][-1].strip()

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def terminal(broker: Broker) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        t = Terminal([sys.executable, "-m", "client", "--server", broker.router, *args])
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


@pytest.fixture
def bob_in_lounge(clients: Callable[..., Client]) -> Client:
    bob = clients()
    bob.send("login bob", "create lounge")
    bob.event("reply", cmd="create", room="lounge")
    return bob


def alice_in_lounge(terminal: Callable[..., Terminal], other: str = "bob") -> Terminal:
    """alice, at a terminal, logged in and in the lounge where ``other`` already is."""
    alice = terminal("--name", "alice")
    alice.wait_for("Logged in as alice")
    alice.type("/join lounge")
    alice.press("Enter")
    alice.wait_for(f"Joined lounge as alice (members: {other}, alice)")
    return alice


STAMP = r"\[\d\d:\d\d\] "


def test_messages_arriving_while_typing_leave_the_typed_line_intact(terminal, bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.type("hello wo")
    alice.wait_for(alice.prompt_is("[lounge] hello wo"))

    incoming = ["hey alice, incoming!", "and another one", "a third, for good measure"]
    bob.send(*incoming)
    screen = alice.wait_for(lambda lines: all(any(ln.endswith(f"bob: {t}") for ln in lines)
                                              for t in incoming)
                            and "[lounge] hello wo" in lines)
    for text in incoming:  # each arrived whole, on a line of its own, above the prompt
        assert any(re.fullmatch(STAMP + re.escape(f"[lounge] bob: {text}"), ln)
                   for ln in screen), screen
    assert screen.index("[lounge] hello wo") > max(
        i for i, ln in enumerate(screen) if "incoming" in ln or "third" in ln)

    alice.type("rld")
    alice.press("Enter")
    sent = bob.event("msg", text="hello world")
    assert sent["from"] == "alice"
    screen = alice.wait_for(lambda lines: any(re.fullmatch(
        STAMP + re.escape("[lounge] alice: hello world"), ln) for ln in lines))
    assert [ln for ln in screen if "hello wo" in ln] == [
        ln for ln in screen if "hello world" in ln]  # no half line left behind


def test_tab_completes_commands_rooms_and_nicknames(terminal, bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.type("/jo")
    alice.press("Tab")
    alice.wait_for(alice.prompt_is("[lounge] /join"))
    alice.type("lo")
    alice.press("Tab")
    alice.wait_for(alice.prompt_is("[lounge] /join lounge"))
    alice.press("C-u")
    alice.type("/msg b")
    alice.press("Tab")
    alice.wait_for(alice.prompt_is("[lounge] /msg bob"))
    alice.press("C-u")
    alice.type("b")
    alice.press("Tab")
    alice.wait_for(alice.prompt_is("[lounge] bob:"))
    alice.type("tab done")
    alice.press("Enter")
    assert bob.event("msg", **{"from": "alice"})["text"] == "bob: tab done"


def test_the_toolbar_shows_nickname_room_unread_counts_and_connection(terminal,
                                                                       bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.wait_for(lambda _: re.fullmatch(r"alice │ lounge │ rooms: lounge │ connected"
                                          r" · lag \d+ ms", alice.toolbar()) is not None)
    alice.type("/create dev")
    alice.press("Enter")
    alice.wait_for("Created and joined dev")
    bob.send("one", "two")
    alice.wait_for(lambda lines: any(ln.endswith("bob: two") for ln in lines))
    alice.wait_for(lambda _: alice.toolbar().startswith(
        "alice │ dev │ rooms: lounge(2) dev │ connected"))
    alice.type("/join lounge")
    alice.press("Enter")
    alice.wait_for(lambda _: alice.toolbar().startswith(
        "alice │ lounge │ rooms: lounge dev │ connected"))


def test_help_actions_history_and_quit(terminal, bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.type("/help")
    alice.press("Enter")
    screen = alice.wait_for("/quit")
    for usage in ("/join ROOM [NAME]", "/me ACTION", "/whisper NAME TEXT", "/help [COMMAND]"):
        assert any(usage in ln for ln in screen), usage
    alice.type("/help me")
    alice.press("Enter")
    alice.wait_for("/me ACTION  describe what you do, in the current room")

    alice.type("/me waves")
    alice.press("Enter")
    action = bob.event("msg", **{"from": "alice"})
    assert (action["text"], action.get("me")) == ("waves", True)
    alice.wait_for(lambda lines: any(re.fullmatch(STAMP + re.escape("[lounge] * alice waves"),
                                                  ln) for ln in lines))

    alice.press("Up")
    alice.wait_for(alice.prompt_is("[lounge] /me waves"))
    alice.press("Up")
    alice.wait_for(alice.prompt_is("[lounge] /help me"))
    alice.press("Down", "Down")
    alice.wait_for(alice.prompt_is("[lounge]"))

    alice.type("/quit")
    alice.press("Enter")
    alice.wait_for("[exited 0]")
    bob.event("leave", name="alice")


def test_what_others_type_cannot_drive_the_terminal(terminal, clients):
    mallory = clients()
    mallory.send("login mallory", "create lounge")
    mallory.event("reply", cmd="create")
    alice = alice_in_lounge(terminal, "mallory")
    mallory.send("\x1b[2J\x1b[Hgotcha\x07")
    screen = alice.wait_for("gotcha")
    assert any(ln.endswith("[lounge] mallory: ^[[2J^[[Hgotcha^G") for ln in screen), screen
    assert any("Joined lounge as alice" in ln for ln in screen)  # nothing was cleared

