"""Real IRC clients through the gateway: irssi and weechat, each in tmux (keys sent with
``send-keys``, the screen read with ``capture-pane``), against a real broker and gateway,
with a zchat line client on the other side. Each client gets a HOME of its own in the
test's tmp_path, so nothing touches the real one.

Both go through: connect, join a room zchat users are in (and see its history), room
messages and private messages both ways, then a broker restart they survive (the gateway
keeps their IRC connections and resumes their zchat sessions)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import Broker, Client, Gateway, start_broker, start_gateway
from .test_terminal_pty import Terminal

pytestmark = pytest.mark.timeout(60)


def need(binary: str) -> str:
    """A client these tests drive; missing, the test fails saying what to install."""
    path = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists()
                                    else None)
    if path is None:
        pytest.fail(f"{binary} is not installed: install the Debian package {binary} "
                    "(CI installs it; see .ci)")
    return path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, object]]:
    """A broker, a gateway to it, a zchat user who made a room with some history, and
    the broker's restart (same ports and store) for the tests to call."""
    need("tmux")
    parts: dict[str, object] = {}
    broker = start_broker(str(tmp_path / "zchat.db"))
    gateway = start_gateway(broker, "--log-level", "DEBUG")
    bob = Client(broker.router, "--keys", str(broker.keys_dir), "--name", "bob")
    parts.update(broker=broker, gateway=gateway, bob=bob)

    def restart() -> None:
        old = parts["broker"]
        assert isinstance(old, Broker)
        old.stop(signal.SIGKILL)
        parts["broker"] = start_broker(old.db, router=old.router, pub=old.pub,
                                       control=old.control)

    parts["restart"] = restart
    try:
        bob.event("reply", cmd="login", timeout=10)
        bob.enter("/create lobby")
        bob.send("said before you came")
        bob.event("msg", text="said before you came")
        yield parts
    finally:
        print("\n".join(gateway.log.seen[-5:] + gateway.log.drain(0.5)))
        bob.kill()
        gateway.stop()
        b = parts["broker"]
        assert isinstance(b, Broker)
        b.stop()


def run_in_tmux(command: list[str], home: Path) -> Terminal:
    # The pane's size is the client's screen; the HOME is the test's own.
    return Terminal(["env", f"HOME={home}", *command], width=120, height=40)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for t in started:
        t.kill()


def until_typing_is_read(t: Terminal, echo: str) -> None:
    """Just after it starts, irssi may drop the first keys it is sent (while it talks
    with the terminal): type a harmless command until its output shows."""
    for attempt in range(10):
        t.type(f"{echo} typing-works-{attempt}")
        t.press("Enter")
        try:
            word = f"typing-works-{attempt}"  # printed, not only on the input line
            t.wait_for(lambda lines, w=word: any(w in ln and echo not in ln for ln in lines),
                       timeout=1.0)
            return
        except pytest.fail.Exception:
            continue
    pytest.fail("the client never read what was typed")


def exchange(t: Terminal, bob: Client, me: str, restart: Callable[[], None],
             show_query: Callable[[str], None], back_to_room: Callable[[], None]) -> None:
    """What both clients go through, once connected and welcomed."""
    t.type("/join #lobby")
    t.press("Enter")
    t.wait_for("said before you came", timeout=15)  # the room's history, on join
    bob.event("join", room="lobby", name=me)
    bob.send("hello from zchat")
    t.wait_for("hello from zchat")
    t.type(f"hello from {me}")
    t.press("Enter")
    assert bob.event("msg", text=f"hello from {me}")["from"] == me
    t.type(f"/msg bob a private word from {me}")
    t.press("Enter")
    assert bob.event("dm", text=f"a private word from {me}")["from"] == me
    bob.send(f"/msg {me} a private word back")
    bob.event("reply", cmd="msg")
    show_query("bob")
    t.wait_for("a private word back")
    back_to_room()
    t.wait_for("hello from zchat")
    # The broker dies and comes back: the IRC connection stays, the gateway resumes.
    restart()
    bob.event("resumed", timeout=15)
    bob.send("after the restart")  # reaches the client once the gateway caught up
    t.wait_for("after the restart", timeout=15)
    t.type(f"{me} is still here")
    t.press("Enter")
    assert bob.event("msg", text=f"{me} is still here", timeout=15)["from"] == me


def test_irssi_in_tmux(stack, terminals, tmp_path):
    irssi = need("irssi")
    gateway, bob = stack["gateway"], stack["bob"]
    assert isinstance(gateway, Gateway) and isinstance(bob, Client)
    home = tmp_path / "irssi-home"
    (home / ".irssi").mkdir(parents=True)
    # irssi paces its own commands (one each 2.2 s after a burst of 5): here it need not.
    # And keys sent as fast as tmux sends them would read as a paste, held back.
    (home / ".irssi" / "config").write_text(
        'settings = {\n'
        '  "irc/core" = { cmd_queue_speed = "0msec"; };\n'
        '  "fe-text" = { paste_detect_time = "0msec"; };\n'
        '};\n')
    t = run_in_tmux([irssi, f"--home={home / '.irssi'}", "-c", gateway.host, "-p",
                     str(gateway.port), "-n", "ialice"], home)
    terminals.append(t)
    t.wait_for("End of /MOTD command", timeout=20)
    until_typing_is_read(t, "/echo")

    def show_query(nick: str) -> None:
        t.type(f"/query {nick}")
        t.press("Enter")

    def back_to_room() -> None:
        t.type("/window goto #lobby")
        t.press("Enter")

    exchange(t, bob, "ialice", stack["restart"], show_query, back_to_room)


def test_weechat_in_tmux(stack, terminals, tmp_path):
    weechat = need("weechat")
    gateway, bob = stack["gateway"], stack["bob"]
    assert isinstance(gateway, Gateway) and isinstance(bob, Client)
    home = tmp_path / "weechat-home"
    home.mkdir()
    # TLS is off for a loopback gateway (the option is named ssl before weechat 4, tls
    # from 4 on: one of the two /set lines is refused, harmlessly).
    setup = (f"/server add zgw {gateway.host}/{gateway.port} -nicks=walice;"
             "/set irc.server.zgw.ssl off;/set irc.server.zgw.tls off;"
             # weechat paces its own messages too: here it need not.
             "/set irc.server.zgw.anti_flood_prio_high 0;"
             "/set irc.server.zgw.anti_flood_prio_low 0;/connect zgw")
    t = run_in_tmux([weechat, "--dir", str(home / "weechat"), "-r", setup], home)
    terminals.append(t)
    t.wait_for("End of /MOTD command", timeout=20)
    until_typing_is_read(t, "/print")

    def show_query(nick: str) -> None:
        t.type(f"/query {nick}")
        t.press("Enter")

    def back_to_room() -> None:
        t.type("/buffer #lobby")
        t.press("Enter")

    exchange(t, bob, "walice", stack["restart"], show_query, back_to_room)
