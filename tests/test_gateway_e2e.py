"""The IRC gateway end to end: a real broker, a real ``python -m gateway`` process, IRC
users driven through the PyPI ``irc`` library (or a raw socket where the library cannot
say it: CAP and tags, raw bytes, a peer that never reads) and zchat users through the
line client. Every wait has a deadline; nothing sleeps blindly."""

from __future__ import annotations

import datetime
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import irc.client
import pytest
import zmq

from client.connection import Connection
from schema import keys

from .harness import (
    ROOT,
    Broker,
    Client,
    Gateway,
    RawIrc,
    _env,
    admin,
    start_broker,
    start_gateway,
)

pytestmark = pytest.mark.timeout(45)


class IrcUser:
    """An IRC client of the ``irc`` library, its reactor run by a thread of its own; the
    events it sees are queued for ``wait``."""

    def __init__(self, gateway: Gateway, nick: str, **connect: Any):
        self.reactor = irc.client.Reactor()
        self.events: queue.Queue[irc.client.Event] = queue.Queue()
        self.seen: list[irc.client.Event] = []
        self.reactor.add_global_handler("all_events", self._on, -20)
        self.conn = self.reactor.server().connect(gateway.host, gateway.port, nick, **connect)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on(self, _conn: Any, event: irc.client.Event) -> None:
        if event.type != "all_raw_messages":
            self.events.put(event)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.reactor.process_once(0.05)

    def wait(self, kind: str, test: Callable[[irc.client.Event], bool] | None = None,
             timeout: float = 10.0) -> irc.client.Event:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"no {kind} event within {timeout} s; seen: "
                                     f"{[(e.type, e.arguments) for e in self.seen[-12:]]}"
                                     ) from None
            self.seen.append(event)
            if event.type == kind and (test is None or test(event)):
                return event

    def drain(self, quiet: float = 0.5) -> list[irc.client.Event]:
        out = []
        while True:
            try:
                event = self.events.get(timeout=quiet)
            except queue.Empty:
                return out
            self.seen.append(event)
            out.append(event)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self.conn.disconnect("bye")
        except Exception:  # noqa: BLE001 - already gone
            pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Gateway]]:
    """One broker and one gateway for the tests that need no restart (each its own
    nicknames and rooms); a small sendq so that a peer that never reads is dropped soon."""
    db = str(tmp_path_factory.mktemp("gateway") / "zchat.db")
    broker = start_broker(db)
    gateway = start_gateway(broker, "--sendq", "65536")
    yield broker, gateway
    gateway.stop()
    broker.stop()


@pytest.fixture
def people(stack: tuple[Broker, Gateway]) -> Iterator[dict[str, Callable[..., Any]]]:
    """Start IRC users, raw IRC connections and zchat line clients; all ended after."""
    broker, gateway = stack
    started: list[Any] = []

    def irc_user(nick: str, **connect: Any) -> IrcUser:
        user = IrcUser(gateway, nick, **connect)
        started.append(user)
        return user

    def raw(**options: Any) -> RawIrc:
        conn = RawIrc(gateway, **options)
        started.append(conn)
        return conn

    def zchat(name: str, *extra: str, json_mode: bool = True) -> Client:
        c = Client(broker.router, "--keys", str(broker.keys_dir), "--name", name, *extra,
                   json_mode=json_mode)
        started.append(c)
        if json_mode:
            c.event("reply", cmd="login", timeout=10)
        return c

    yield {"irc": irc_user, "raw": raw, "zchat": zchat}
    for thing in started:
        (thing.kill if isinstance(thing, Client) else thing.close)()


def joined(user: IrcUser, channel: str) -> list[str]:
    """JOIN and wait for its end of NAMES; the names listed."""
    mark = len(user.seen)
    user.conn.join(channel)
    user.wait("endofnames", lambda e: e.arguments[0] == channel)
    return [name for e in user.seen[mark:] if e.type == "namreply"
            and e.arguments[1] == channel for name in e.arguments[2].split()]


def irc_text(events: list[irc.client.Event], kind: str = "pubmsg") -> list[str]:
    return [e.arguments[0] for e in events if e.type == kind]


# -- registration and rooms -----------------------------------------------------------------


def test_registration_numerics_isupport_ping_and_quit(people, stack):
    alice = people["irc"]("reg-alice")
    welcome = alice.wait("welcome")
    assert welcome.target == "reg-alice" and "reg-alice" in welcome.arguments[0]
    for kind in ("yourhost", "created", "myinfo"):
        alice.wait(kind)
    alice.wait("endofmotd")
    features = alice.conn.features
    assert features.casemapping == "ascii" and features.chantypes == "#"
    assert features.nicklen == 20 and features.channellen == 33
    assert features.network == "zchat" and features.prefix == {"~": "q", "@": "o"}
    raw = people["raw"]()
    raw.register("reg-raw")
    raw.send("PING :are you there")
    assert raw.wait(" PONG ").endswith("PONG zchat.gateway :are you there")
    watcher = people["zchat"]("reg-bob")
    watcher.enter("/create reg-room")
    raw.send("JOIN #reg-room")
    watcher.event("join", name="reg-raw")
    raw.send("QUIT :off now")
    assert raw.wait_closed()[-1] == "ERROR :Closing Link: reg-raw (Quit: off now)"
    watcher.event("leave", name="reg-raw", reason="quit")


def test_rooms_are_channels_join_creates_part_names_topic_list_who_whois(people, stack):
    bob = people["zchat"]("rbob")
    bob.enter("/create roomy")
    bob.send("/topic tea and cake")
    bob.event("subject", text="tea and cake")
    alice = people["irc"]("ralice")
    alice.wait("endofmotd")
    assert sorted(joined(alice, "#roomy")) == ["ralice", "rbob"]
    assert [e.arguments for e in alice.seen if e.type == "currenttopic"] == [
        ["#roomy", "tea and cake"]]
    assert alice.seen[0].type != "join" and [e.source.nick for e in alice.seen
                                              if e.type == "join"] == ["ralice"]
    bob.event("join", room="roomy", name="ralice")
    # A room nobody made yet is created, as /create does: its creator owns it.
    assert joined(alice, "#fresh-room") == ["~ralice"]
    broker = stack[0]
    assert "fresh-room" in admin(broker.control, "--keys", str(broker.keys_dir), "ls").stdout
    alice.conn.list(["#roomy"])
    listed = alice.wait("list")
    assert listed.arguments == ["#roomy", "2", "tea and cake"]
    alice.wait("listend")
    alice.conn.who("#roomy")
    who = [alice.wait("whoreply").arguments[4] for _ in range(2)]
    assert sorted(who) == ["ralice", "rbob"]
    alice.wait("endofwho")
    alice.conn.whois(["rbob"])
    assert alice.wait("whoisuser").arguments[0] == "rbob"
    assert alice.wait("whoischannels").arguments == ["rbob", "#roomy"]
    alice.wait("endofwhois")
    alice.conn.topic("#roomy")
    assert alice.wait("currenttopic").arguments == ["#roomy", "tea and cake"]
    bob.send("/topic scones now")
    topic = alice.wait("topic")
    assert topic.source.nick == "rbob" and topic.arguments == ["scones now"]
    # Members' joins, parts and quits reach IRC as such.
    carol = people["zchat"]("rcarol")
    carol.enter("/join roomy")
    assert alice.wait("join", lambda e: e.target == "#roomy").source.nick == "rcarol"
    carol.send("/leave roomy")
    assert alice.wait("part").source.nick == "rcarol"
    alice.conn.part(["#roomy"], "see you")
    alice.wait("part", lambda e: e.source.nick == "ralice")
    bob.event("leave", name="ralice", reason="left")
    joined(alice, "#roomy")
    bob.send("/quit")
    quit_ = alice.wait("quit")
    assert quit_.source.nick == "rbob" and quit_.arguments == ["quit"]


# -- messages -----------------------------------------------------------------------------


def test_room_messages_dms_actions_and_whispers_both_ways(people):
    bob = people["zchat"]("mbob")
    bob.enter("/create chat")
    alice = people["irc"]("malice")
    alice.wait("endofmotd")
    joined(alice, "#chat")
    bob.event("join", name="malice")
    bob.send("hello from zchat")
    said = alice.wait("pubmsg")
    assert (said.source.nick, said.target, said.arguments) == ("mbob", "#chat",
                                                               ["hello from zchat"])
    alice.conn.privmsg("#chat", "hello from IRC")
    assert bob.event("msg", room="chat", **{"from": "malice"})["text"] == "hello from IRC"
    alice.conn.action("#chat", "waves")
    waved = bob.event("msg", room="chat", text="waves")
    assert waved["me"] is True and waved["from"] == "malice"
    bob.send("/me bows")
    action = alice.wait("action")
    assert (action.source.nick, action.target, action.arguments) == ("mbob", "#chat", ["bows"])
    bob.send("/msg malice a private word")
    dm = alice.wait("privmsg")
    assert (dm.source.nick, dm.target, dm.arguments) == ("mbob", "malice",
                                                         ["a private word"])
    alice.conn.privmsg("mbob", "and one back")
    assert bob.event("dm", **{"from": "malice"})["text"] == "and one back"
    alice.conn.notice("mbob", "a notice")
    assert bob.event("dm", **{"from": "malice"})["text"] == "a notice"
    # A whisper has no IRC verb: a NOTICE from the sender, naming the room.
    bob.send("/whisper malice only for you")
    notice = alice.wait("privnotice")
    assert notice.source.nick == "mbob"
    assert notice.arguments == ["(whisper in #chat) only for you"]
    # Our own lines are not sent back to a client that did not ask for echo-message.
    assert not [e for e in alice.drain(0.3) if e.type == "pubmsg"]


def test_history_on_join_is_a_chathistory_batch_with_server_time_and_echo(people):
    bob = people["zchat"]("hbob")
    bob.enter("/create hist")
    bob.send("one", "two", "/me three")
    bob.event("msg", text="three")
    raw = people["raw"]()
    raw.register("hraw", "batch", "server-time", "message-tags", "echo-message")
    raw.send("JOIN #hist")
    raw.wait(" 366 hraw #hist ")
    opened = raw.wait(" BATCH +")
    ref = opened.split("BATCH +")[1].split()[0]
    assert opened.endswith(f"BATCH +{ref} chathistory #hist")
    replayed = [raw.wait(" PRIVMSG #hist ") for _ in range(3)]
    assert raw.wait(" BATCH -").endswith(f"BATCH -{ref}")
    now = datetime.datetime.now(datetime.UTC)
    for line, text in zip(replayed, ["one", "two", "\x01ACTION three\x01"], strict=True):
        tags = dict(t.split("=", 1) for t in line[1:].split(" ", 1)[0].split(";"))
        assert tags["batch"] == ref and "msgid" in tags
        when = datetime.datetime.fromisoformat(tags["time"].replace("Z", "+00:00"))
        assert abs((now - when).total_seconds()) < 60
        assert line.endswith(f":hbob!zchat@zchat PRIVMSG #hist {text}") or \
            line.endswith(f":hbob!zchat@zchat PRIVMSG #hist :{text}")
    bob.send("four, live")
    live = raw.wait("four, live")
    assert "time=" in live and "batch=" not in live and "msgid=" in live
    raw.send("PRIVMSG #hist :five, from IRC")
    echo = raw.wait("five, from IRC")  # echoed once zchat took it, with its id
    assert echo.split(" ", 1)[1].startswith(":hraw!hraw@zchat PRIVMSG #hist")
    assert "msgid=" in echo and "time=" in echo
    assert bob.event("msg", text="five, from IRC")["from"] == "hraw"
    # CHATHISTORY reads further back, by msgid.
    first = dict(t.split("=", 1) for t in replayed[0][1:].split(" ", 1)[0].split(";"))
    raw.send(f"CHATHISTORY AFTER #hist msgid={first['msgid']} 2")
    raw.wait(" BATCH +")
    assert [raw.wait(" PRIVMSG ").rsplit(" ", 1)[-1] for _ in range(2)] == ["two",
                                                                            "three\x01"]
    # Without server-time, replayed lines say when in their text.
    plain = people["raw"]()
    plain.register("hplain")
    plain.send("JOIN #hist")
    line = plain.wait(" PRIVMSG #hist ")
    assert line.startswith(":hbob!zchat@zchat PRIVMSG #hist :[") and line.endswith("] one")


def test_sasl_or_pass_claims_a_registered_nickname(people):
    carol = people["zchat"]("scarol")
    carol.send("/register s3cret-pass")
    carol.event("reply", cmd="register")
    carol.send("/quit")
    carol.wait(10)
    watcher = people["zchat"]("swatch")
    watcher.enter("/create sasl-room")
    nopass = people["raw"]()
    nopass.send("NICK scarol", "USER s 0 * :s")
    assert " 433 * scarol :Nickname is registered" in nopass.wait(" 433 ")
    wrong = people["raw"]()
    wrong.send("PASS not-the-password", "NICK scarol", "USER s 0 * :s")
    assert "Wrong password for scarol" in wrong.wait(" 464 ")
    # SASL PLAIN through the library: welcomed as the registered nickname.
    user = people["irc"]("scarol", password="s3cret-pass", sasl_login="scarol")
    user.wait("saslsuccess")
    assert user.wait("welcome").target == "scarol"
    joined(user, "#sasl-room")
    watcher.event("join", name="scarol")
    user.conn.quit("done")
    watcher.event("leave", name="scarol", reason="quit")  # the nickname is free again
    # PASS: the password of the nickname.
    again = people["irc"]("scarol", password="s3cret-pass")
    assert again.wait("welcome").target == "scarol"


def test_a_room_killed_by_the_operator_is_a_kick_with_the_reason(people, stack):
    alice = people["irc"]("kalice")
    alice.wait("endofmotd")
    joined(alice, "#doomed")
    done = admin(stack[0].control, "--keys", str(stack[0].keys_dir), "kill", "doomed",
                 "--reason", "closing for maintenance")
    assert done.returncode == 0, done.stderr
    kick = alice.wait("kick")
    assert kick.target == "#doomed"
    assert kick.arguments == ["kalice", "closing for maintenance"]


# -- what crosses from one side to the other ---------------------------------------------------


def _say_raw(broker: Broker, room: str, text: str) -> None:
    """A zchat user who writes its own client: any text, CR, LF and NUL included."""
    ctx = zmq.Context()
    conn = Connection(broker.router, ctx=ctx, server_key=keys.load(
        Path(str(broker.keys_dir)) / "broker.key").public)
    try:
        conn.hello()
        rids = [conn.request("login", name="evil"), conn.request("join", room=room),
                conn.request("say", room=room, text=text)]
        deadline = time.monotonic() + 10
        while not all(conn.answered(r) for r in rids):
            assert time.monotonic() < deadline, "the broker did not answer"
            conn.dealer.poll(100)
            conn.pump()
    finally:
        conn.close()
        ctx.destroy(linger=0)


def test_cr_lf_and_nul_from_a_zchat_user_cannot_inject_an_irc_command(people, stack):
    raw = people["raw"]()
    raw.register("iraw")
    raw.send("JOIN #inject")
    raw.wait(" 366 iraw #inject ")
    _say_raw(stack[0], "inject", "hi\r\nQUIT :pwned\r\nPRIVMSG #inject :fake\0\nNICK x")
    line = raw.wait(" PRIVMSG #inject ")
    assert line == (":evil!zchat@zchat PRIVMSG #inject :hi^M^JQUIT :pwned^M^JPRIVMSG "
                    "#inject :fake^@^JNICK x")
    raw.send("PING :still")
    after = raw.wait(" PONG ")
    between = raw.seen[raw.seen.index(line) + 1:raw.seen.index(after)]
    assert not [ln for ln in between if " QUIT " in ln or " NICK " in ln
                or " PRIVMSG " in ln], between


def test_colours_ctcp_and_unicode_from_irc_reach_zchat_as_the_client_shows_them(people):
    bob = people["zchat"]("cbob", json_mode=False)
    bob.send("/create colours")
    bob.line("Created and joined colours")
    stored = people["zchat"]("cjson")
    stored.enter("/join colours")
    alice = people["irc"]("calice")
    alice.wait("endofmotd")
    joined(alice, "#colours")
    text = "\x034red\x03 \x02bold\x02 \x01VERSION\x01 日本語 👩\u200d💻 \x1b[2J end"
    alice.conn.privmsg("#colours", text)
    assert stored.event("msg", room="colours")["text"] == text  # stored as typed
    shown = bob.line("calice:")
    assert shown == ("[colours] calice: ^C4red^C ^Bbold^B ^AVERSION^A 日本語 👩\u200d💻 "
                     "^[[2J end")


# -- hostile IRC connections -----------------------------------------------------------------


@pytest.mark.timeout(75)
def test_hostile_connections_get_error_and_are_closed_without_hurting_others(people, stack):
    gateway = stack[1]
    bob = people["zchat"]("xbob")
    bob.enter("/create calm")
    alice = people["irc"]("xalice")
    alice.wait("endofmotd")
    joined(alice, "#calm")

    def still_fine(word: str) -> None:
        bob.send(f"still here {word}")
        assert alice.wait("pubmsg").arguments == [f"still here {word}"]
        alice.conn.privmsg("#calm", f"me too {word}")
        bob.event("msg", text=f"me too {word}")

    long_line = people["raw"]()
    long_line.register("xlong")
    long_line.send(b"PRIVMSG #calm :" + b"x" * 600)
    assert long_line.wait_closed()[-1] == "ERROR :Closing Link: xlong (Line too long)"
    nul = people["raw"]()
    nul.send(b"NICK x\0y")
    assert nul.wait_closed()[-1] == "ERROR :Closing Link: * (NUL in a line)"
    endless = people["raw"]()
    endless.send(b"PRIVMSG #calm :" + b"y" * 20000)  # no line end, ever
    assert endless.wait_closed()[-1] == "ERROR :Closing Link: * (Line too long)"
    still_fine("after the bad lines")
    flood = people["raw"]()
    flood.register("xflood")
    flood.send(*[f"PRIVMSG nobody-{i} :flood {i}" for i in range(400)])
    assert flood.wait_closed(20)[-1] == "ERROR :Closing Link: xflood (Excess Flood)"
    still_fine("after the flood")
    deaf = people["raw"](read=False, rcvbuf=4096)
    deaf.send("NICK xdeaf", "USER d 0 * :d")
    try:
        for _ in range(10):  # it asks for much and reads nothing
            deaf.send(*["PING :are you reading this"] * 2000)
    except OSError:
        pass  # dropped before it had sent it all
    # Dropped for what it does not read, or held back by its flood budget (it sends
    # far more than its share) until that is a flood: either way it is gone.
    gateway.log.wait_for(lambda ln: "(xdeaf): SendQ exceeded" in ln
                         or "(xdeaf): closed: 'Excess Flood'" in ln, timeout=20)
    deaf.sock.settimeout(10)  # what was in flight, then the end: it was closed (reset,
    try:  # as what it sent was still unread)
        while deaf.sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    still_fine("after the deaf one")


# -- the gateway's own side ----------------------------------------------------------------------


def test_listening_beyond_loopback_needs_tls(stack):
    done = subprocess.run([sys.executable, "-m", "gateway", "--server", stack[0].router,
                           "--listen", "0.0.0.0:0"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert "is not loopback: give --tls-cert and --tls-key" in done.stderr


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return str(cert_path), str(key_path)


def test_tls_for_irc_clients(stack, tmp_path):
    cert, key = _self_signed(tmp_path)
    gateway = start_gateway(stack[0], "--tls-cert", cert, "--tls-key", key)
    try:
        plain = RawIrc(gateway)  # a client speaking plain IRC to the TLS port: dropped
        plain.send("NICK tplain", "USER t 0 * :t")
        plain.wait_closed(10)
        tls = ssl.create_default_context(cafile=cert)
        secure = RawIrc(gateway, tls=tls)
        secure.register("tsecure", "server-time")
        secure.send("JOIN #tls-room", "PRIVMSG #tls-room :over TLS")
        secure.wait(" 366 tsecure #tls-room ")
        # More lines in one write than a turn carries out and the flood budget allows at
        # once: the rest wait, read from TLS already, and are all answered in order.
        secure.send(*[f"PING :p{i}" for i in range(60)])
        for i in range(60):
            secure.wait(f" PONG zchat.gateway p{i}")
        secure.close()
    finally:
        gateway.stop()


def test_broker_restart_then_gap_free_catch_up_without_duplicates(tmp_path):
    broker = start_broker(str(tmp_path / "zchat.db"))
    keys_dir = str(broker.keys_dir)
    gateway = start_gateway(broker)
    bob = Client(broker.router, "--keys", keys_dir, "--name", "bob")
    carol = Client(broker.router, "--keys", keys_dir, "--name", "carol")
    alice = IrcUser(gateway, "alice")
    restarted: Broker | None = None
    try:
        bob.event("reply", cmd="login", timeout=10)
        bob.enter("/create survive")
        carol.event("reply", cmd="login", timeout=10)
        carol.enter("/join survive")
        alice.wait("endofmotd")
        assert sorted(joined(alice, "#survive")) == ["alice", "bob", "carol"]
        bob.event("join", name="alice")
        bob.send("m1", "m2", "m3")
        for i in (1, 2, 3):
            alice.wait("pubmsg", lambda e, i=i: e.arguments == [f"m{i}"])
        # The gateway is frozen while the broker dies and comes back, and bob (resumed
        # first) says more: the gateway must catch those up by itself when it thaws.
        # Carol's client dies with the broker: she never comes back, and no leave of
        # hers was ever stored.
        carol.kill()
        gateway.proc.send_signal(signal.SIGSTOP)
        broker.stop(signal.SIGKILL)
        restarted = start_broker(broker.db, router=broker.router, pub=broker.pub,
                                 control=broker.control)
        bob.event("resumed", timeout=15)
        bob.send("m4", "m5", "m6")
        bob.event("msg", text="m6", timeout=15)
        gateway.proc.send_signal(signal.SIGCONT)
        alice.wait("privnotice", lambda e: "Reconnected to zchat" in e.arguments[0],
                   timeout=20)
        bob.send("m7")
        alice.wait("pubmsg", lambda e: e.arguments == ["m7"], timeout=15)
        bob.send("m8")
        alice.wait("pubmsg", lambda e: e.arguments == ["m8"], timeout=15)
        # Once members had the time to come back, those who did not are shown leaving.
        gone = alice.wait("part", lambda e: e.source.nick == "carol", timeout=15)
        assert gone.arguments == ["did not come back after zchat restarted"]
        seen = irc_text(alice.seen + alice.drain(0.5))
        assert seen == [f"m{i}" for i in range(1, 9)]  # each once, in order
        joins = [e for e in alice.seen if e.type in ("join", "part", "quit")
                 and e.source.nick == "bob"]
        assert joins == []  # bob never left, as far as IRC could tell
    finally:
        if gateway.proc.poll() is None:
            gateway.proc.send_signal(signal.SIGCONT)
        alice.close()
        bob.kill()
        carol.kill()
        gateway.stop()
        (restarted or broker).stop()


def test_an_honest_ping_is_answered_promptly_while_many_peers_flood(people):
    honest = people["raw"]()
    honest.register("xhonest")
    blob = b"PING x\r\n" * 8192  # 64 KiB of the cheapest line there is
    stop = threading.Event()
    flooders = [people["raw"]() for _ in range(40)]

    def flood(conn: RawIrc) -> None:
        while not stop.is_set():
            try:
                conn.sock.sendall(blob)
            except OSError:  # closed (by the gateway, or at the test's end)
                return

    threads = [threading.Thread(target=flood, args=(c,), daemon=True) for c in flooders]
    for t in threads:
        t.start()
    try:
        flooders[-1].wait("PONG", timeout=20)  # the flood is under way
        worst = 0.0
        for i in range(5):
            start = time.monotonic()
            honest.send(f"PING :honest-{i}")
            honest.wait(f"honest-{i}", timeout=10)
            worst = max(worst, time.monotonic() - start)
        assert worst < 2.0, worst
    finally:
        stop.set()
        for c in flooders:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)  # which ends a send under way
            except OSError:
                pass
        for t in threads:
            t.join(5)


def test_idle_connections_that_never_register_cannot_keep_everyone_out(stack):
    gateway = start_gateway(stack[0], "--max-clients", "8")
    idle: list[socket.socket] = []
    honest = None
    try:
        for _ in range(12):  # more than there are places, none of them registering
            idle.append(socket.create_connection((gateway.host, gateway.port), timeout=10))
        # An idle one makes room once it has had its moment to begin registering (1 s),
        # long before the register timeout: a client trying again soon gets in.
        deadline = time.monotonic() + 10
        while True:
            honest = RawIrc(gateway)
            honest.send("NICK xpatient", "USER p 0 * :p")
            first = honest.wait(lambda ln: " 001 " in ln or ln.startswith("ERROR"))
            if " 001 " in first:
                break
            assert "Server full" in first and time.monotonic() < deadline
            honest.close()
            time.sleep(0.25)  # a client's pause before it tries again
        gateway.log.wait_for("too many connections not registered", timeout=5)
    finally:
        for s in idle:
            s.close()
        if honest is not None:
            honest.close()
        gateway.stop()


def test_out_of_descriptors_the_listener_rests_instead_of_spinning(stack):
    import errno

    from gateway.server import Gateway as Loop

    loop = Loop(("127.0.0.1", 0), [stack[0].router], server_key=None)
    real = loop.listener
    calls = []

    class Exhausted:
        def fileno(self) -> int:
            return real.fileno()

        def accept(self) -> Any:
            calls.append(time.monotonic())
            raise OSError(errno.EMFILE, "Too many open files")

        def close(self) -> None:
            real.close()

    loop.poller.unregister(real)
    loop.listener = Exhausted()  # type: ignore[assignment]
    loop.poller.register(loop.listener, zmq.POLLIN)
    waiting = socket.create_connection(("127.0.0.1", real.getsockname()[1]))
    try:
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            loop.turn()
        assert 2 <= len(calls) <= 4, len(calls)  # about one try each half second
    finally:
        waiting.close()
        loop._shutdown()


def test_max_clients_is_lowered_to_what_the_descriptors_allow(stack):
    import resource

    from .harness import Lines

    broker = stack[0]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    args = ["--server", broker.router, "--listen", "127.0.0.1:0"]
    args += ["--insecure"] if broker.keys_dir is None else ["--keys", broker.keys_dir]
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=limit)
    try:
        Lines(proc.stderr).wait_for("--max-clients 256 lowered to 32", timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_client_that_reads_is_not_dropped_for_a_burst_bigger_than_its_sendq(stack):
    broker = stack[0]
    gateway = start_gateway(broker, "--sendq", "20000")
    ctx = zmq.Context()
    conn = Connection(broker.router, ctx=ctx, server_key=keys.load(
        Path(str(broker.keys_dir)) / "broker.key").public)
    reader = None
    try:
        conn.hello()
        rids = [conn.request("login", name="xbig"), conn.request("create", room="bursty")]
        rids += [conn.request("say", room="bursty", text=f"{i} " + "w" * 9000)
                 for i in range(6)]
        deadline = time.monotonic() + 20
        while not all(conn.answered(r) for r in rids):
            assert time.monotonic() < deadline, "the broker did not answer"
            conn.dealer.poll(100)
            conn.pump()
        # Its welcome replays six messages of 16 lines each: about 48 KB in one turn,
        # more than its sendq, all of which the socket takes at once.
        reader = RawIrc(gateway)
        reader.register("xreader")
        reader.send("JOIN #bursty")
        for i in range(6):
            reader.wait(lambda ln, i=i: f"] {i} www" in ln, timeout=15)
        reader.send("PING :still")
        reader.wait("still", timeout=10)
        assert not reader.closed
    finally:
        if reader is not None:
            reader.close()
        conn.close()
        ctx.destroy(linger=0)
        gateway.stop()


def test_a_quit_reason_reaches_the_log_escaped(people, stack):
    raw = people["raw"]()
    raw.register("xescape")
    raw.send(b"QUIT :\x1b[2J\x1b]0;owned\x07 bye")
    raw.wait_closed()
    line = stack[1].log.wait_for("(xescape): closed:", timeout=10)
    assert "\x1b" not in line and "\\x1b[2J" in line


@pytest.mark.timeout(60)
def test_what_a_client_sends_while_zchat_is_lost_waits_unread_not_a_flood(tmp_path):
    broker = start_broker(str(tmp_path / "zchat.db"))
    gateway = start_gateway(broker)
    talker = RawIrc(gateway)
    try:
        talker.register("xtalker")
        talker.send("JOIN #frozen")
        talker.wait(" 366 ")
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            talker.wait("Lost contact with zchat", timeout=20)
            # More than PENDING_MAX requests: they would all wait for zchat, a flood.
            talker.send(*[f"PRIVMSG #frozen :line {i}" for i in range(120)])
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        talker.wait("Contact with zchat restored", timeout=20)
        talker.send("PING :after")
        talker.wait("after", timeout=20)  # carried out after the 120 lines, in order
        assert not talker.closed
        assert not any("Excess Flood" in ln for ln in talker.seen)
    finally:
        talker.close()
        gateway.stop()
        broker.stop()
