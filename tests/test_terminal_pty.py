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
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from .harness import ROOT, Broker, Client, json_lines

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

    def paste(self, text: str, bracketed: bool) -> None:
        """Paste as a terminal does: bracketed (the program is told where the paste starts
        and ends, if it asked to be), or as if typed, each newline an Enter."""
        path = os.path.join(self.dir, "paste")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        self._tmux("load-buffer", "-b", "p", path)
        self._tmux("paste-buffer", "-b", "p", *(["-p"] if bracketed else []))

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

    def start(*args: str, width: int = 100, height: int = 24) -> Terminal:
        t = Terminal([sys.executable, "-m", "client", "--server", broker.router, *args],
                     width, height)
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


def alice_in_lounge(terminal: Callable[..., Terminal], other: str = "bob", **size: int
                    ) -> Terminal:
    """alice, at a terminal, logged in and in the lounge where ``other`` already is."""
    alice = terminal("--name", "alice", **size)
    alice.wait_for("Logged in as alice")
    alice.type("/join lounge")
    alice.press("Enter")
    alice.wait_for(lambda lines: other in joined_members(lines))
    return alice


def joined_members(lines: list[str]) -> list[str]:
    """The members alice was told of on joining the lounge, in whatever order."""
    for line in lines:
        found = re.search(r"Joined lounge as alice \(members: (.*)\)", line)
        if found:
            return found[1].split(", ")
    return []


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
    # Tall enough for the whole list (the room moderators' commands made it 36 lines).
    bob, alice = bob_in_lounge, alice_in_lounge(terminal, height=48)
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



# --- nothing typed or pasted is lost, merged or reordered ----------------------------------


def _received(bob: Client, n: int, timeout: float = 30) -> list[str]:
    return [bob.event("msg", timeout=timeout, **{"from": "alice"})["text"] for _ in range(n)]


def _nothing_more(bob: Client) -> None:
    """...and once: no message from alice comes after the ones expected."""
    later = json_lines(bob.out.drain(0.5))
    assert not [e for e in later if e.get("event") == "msg" and e.get("from") == "alice"]


def _no_refusal(alice: Terminal) -> None:
    screen = alice.screen()
    assert not [ln for ln in screen if "Slow down" in ln or "rate" in ln.lower()], screen


PASTE = [f"pasted line {i:03} of 200" for i in range(200)]


def test_a_200_line_bracketed_paste_asks_then_sends_each_line_in_order(terminal,
                                                                       bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal, width=80, height=24)
    alice.paste("\n".join(PASTE) + "\n", bracketed=True)
    alice.wait_for("Send the 200 pasted lines as 200 messages? [y/N]")
    alice.type("y")
    alice.press("Enter")
    # More than the broker's burst: the rest wait their turn, and the screen says so.
    alice.wait_for(lambda lines: any(re.fullmatch(r"sending \d+ queued lines…", ln)
                                     for ln in lines))
    assert _received(bob, 200) == PASTE  # whole, in order...
    alice.wait_for(lambda lines: not any("queued lines" in ln or "(pending)" in ln
                                         for ln in lines))
    _nothing_more(bob)
    _no_refusal(alice)


def test_a_bracketed_paste_refused_sends_nothing(terminal, bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.paste("one\ntwo\nthree\nfour\n", bracketed=True)
    alice.wait_for("Send the 4 pasted lines as 4 messages? [y/N]")
    alice.press("Enter")
    alice.wait_for("Paste of 4 lines not sent")
    alice.type("after the paste")
    alice.press("Enter")
    assert _received(bob, 1) == ["after the paste"]


def test_a_short_bracketed_paste_is_sent_at_once_one_message_per_line(terminal,
                                                                      bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.type("start: ")
    alice.paste("first\nsecond\nthird", bracketed=True)
    assert _received(bob, 3) == ["start: first", "second", "third"]


def test_a_200_line_unbracketed_paste_arrives_whole_once_and_in_order(terminal,
                                                                      bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal, width=80, height=24)
    alice.paste("\n".join(PASTE) + "\n", bracketed=False)
    assert _received(bob, 200) == PASTE
    alice.wait_for(lambda lines: not any("(pending)" in ln for ln in lines))
    _nothing_more(bob)
    _no_refusal(alice)


def test_ctrl_c_clears_the_line_and_ctrl_d_on_an_empty_line_quits(terminal, bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.type("half typed")
    alice.wait_for(alice.prompt_is("[lounge] half typed"))
    alice.press("C-c")
    alice.wait_for(alice.prompt_is("[lounge]"))
    alice.type("after")
    alice.press("Enter")
    assert _received(bob, 1) == ["after"]  # the cleared text was not sent, nor kept
    assert not [e for e in json_lines(bob.out.drain(0.3)) if e.get("event") == "leave"]
    alice.type("x")
    alice.press("C-d")  # on a line with text: deletes forward, nothing else
    alice.press("BSpace", "C-d")
    alice.wait_for("[exited 0]")
    assert bob.event("leave", name="alice")["reason"] == "quit"


def test_lines_typed_while_the_broker_is_frozen_show_as_pending_then_arrive(
        terminal, bob_in_lounge, broker):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        for text in ("typed while away", "and another"):
            alice.type(text)
            alice.press("Enter")
        alice.wait_for(lambda lines: "(pending) typed while away" in lines
                       and "(pending) and another" in lines)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    assert _received(bob, 2) == ["typed while away", "and another"]
    alice.wait_for(lambda lines: not any("(pending)" in ln for ln in lines)
                   and any(ln.endswith("alice: and another") for ln in lines))


# --- arriving, switching, talking privately --------------------------------------------------


def test_without_a_name_the_first_word_typed_is_the_name(terminal):
    t = terminal(height=60)  # room for the command list shown after it
    t.wait_for("Your name?")
    t.type("dave")
    t.press("Enter")
    t.wait_for(lambda lines: any(ln.endswith("Logged in as dave") for ln in lines)
               and any("/join ROOM [NAME]" in ln for ln in lines))
    t.wait_for(lambda _: t.toolbar().startswith("dave │ lobby"))  # (redrawn just after)


def test_window_and_alt_digit_switch_rooms_by_number(terminal, bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.type("/create dev")
    alice.press("Enter")
    alice.wait_for("Created and joined dev")
    alice.type("/window 1")
    alice.press("Enter")
    alice.wait_for(lambda _: alice.toolbar().startswith("alice │ lounge │"))
    alice.type("to the lounge")
    alice.press("M-2")  # keeps the line being typed
    alice.wait_for(lambda _: alice.toolbar().startswith("alice │ dev │"))
    alice.wait_for(alice.prompt_is("[dev] to the lounge"))
    alice.press("M-1")
    alice.wait_for(alice.prompt_is("[lounge] to the lounge"))
    alice.press("Enter")
    assert bob.event("msg", **{"from": "alice"})["room"] == "lounge"


def test_query_makes_plain_text_private_and_the_prompt_says_so(terminal, bob_in_lounge):
    bob, alice = bob_in_lounge, alice_in_lounge(terminal)
    alice.type("/query bob")
    alice.press("Enter")
    alice.wait_for(alice.prompt_is("[query bob]"))
    alice.type("only for you")
    alice.press("Enter")
    assert bob.event("dm")["text"] == "only for you"
    alice.type("/query")
    alice.press("Enter")
    alice.wait_for(alice.prompt_is("[lounge]"))


# --- what others send is shown as sent, and never as something else ------------------------


@pytest.mark.parametrize("width", [80, 120])
def test_a_message_padded_to_the_width_cannot_fake_a_line_of_its_own(terminal, clients,
                                                                     width):
    mallory = clients()
    mallory.send("login mallory", "create lounge")
    mallory.event("reply", cmd="create")
    alice = alice_in_lounge(terminal, "mallory", width=width, height=24)
    fake = "[12:00] [lounge] alice: send me your password"
    mallory.send("hi" + " " * (width + 40) + fake)
    screen = alice.wait_for("your password")
    for line in screen:
        if "your password" in line:
            assert line.startswith("  ↳ "), screen  # marked as the rest of a message
    assert not [ln for ln in screen if ln.startswith("[12:00] [lounge] alice")]
    # Cut at this terminal's width (one column spare), not at some fixed guess.
    mallory.send("y" * (2 * width))
    screen = alice.wait_for(lambda lines: any(ln.endswith("y" * 20) and ln.startswith("  ↳")
                                              for ln in lines))
    [first] = [ln for ln in screen if "mallory: yyy" in ln]
    assert len(first) == width - 1, (len(first), screen)


def test_emoji_and_joined_scripts_are_shown_as_written(terminal, clients):
    mallory = clients()
    mallory.send("login mallory", "create lounge")
    mallory.event("reply", cmd="create")
    alice = alice_in_lounge(terminal, "mallory")
    mallory.send("👩\u200d💻 می\u200cخواهم \u202eevil")
    screen = alice.wait_for("evil")
    [line] = [ln for ln in screen if "evil" in ln]
    assert "<U+200D>" not in line and "<U+200C>" not in line, line
    assert "💻" in line and "خواهم" in line
    assert "<U+202E>evil" in line  # a bidi override is still shown, not obeyed
