"""The gateway's pure parts, without sockets: IRC lines (parse, format, tags, limits,
neutralising), the names' mapping, and the per-client Session as a state machine fed
IRC lines and zchat events, with a fake ``request`` standing in for the Connection."""

from __future__ import annotations

from typing import Any

import pytest

from client.connection import Event
from gateway import irc
from gateway.core import CREATIONS_MAX, CREATIONS_WINDOW
from gateway.irc import LineError, LineReader, Message, format_line, neutralise, parse
from gateway.names import from_channel, from_nick, to_channel, to_nick
from gateway.session import (
    HELD_MAX,
    PENDING_MAX,
    RESYNC_AFTER,
    SPLIT_MAX,
    Session,
    msgid,
    seq_of,
)

pytestmark = pytest.mark.timeout(20)


# -- lines --------------------------------------------------------------------------------


def test_parse_reads_tags_source_command_and_parameters():
    msg = parse(b"@label=a\\sb\\:c;+draft/x :nick!u@h privmsg #room :hello : world")
    assert msg == Message("PRIVMSG", ["#room", "hello : world"],
                          {"label": "a b;c", "+draft/x": ""}, "nick!u@h")
    assert parse(b"NICK   alice") == Message("NICK", ["alice"])
    assert parse(b"   ") is None
    fifteen = parse(b"CMD " + b" ".join(b"p%d" % i for i in range(20)))
    assert fifteen is not None and len(fifteen.params) == 14  # the last takes the rest
    assert fifteen.params[-1] == " ".join(f"p{i}" for i in range(13, 20))


def test_tags_escape_and_unescape_as_the_spec_says():
    for value in ["plain", "a b", "semi;colon", "back\\slash", "cr\rlf\n", ""]:
        assert irc.unescape_tag(irc.escape_tag(value)) == value
    assert irc.unescape_tag("trailing\\") == "trailing"
    assert irc.unescape_tag("\\x") == "x"


def test_format_puts_a_colon_only_where_needed_and_escapes_tags():
    assert format_line(Message("JOIN", ["#a"], source="n!u@h")) == b":n!u@h JOIN #a\r\n"
    assert format_line(Message("PRIVMSG", ["#a", "two words"])) == b"PRIVMSG #a :two words\r\n"
    assert format_line(Message("PRIVMSG", ["#a", ""])) == b"PRIVMSG #a :\r\n"
    assert format_line(Message("PRIVMSG", ["#a", ":)"])) == b"PRIVMSG #a ::)\r\n"
    line = format_line(Message("PRIVMSG", ["#a", "x"], {"time": "t", "msgid": "a b"}))
    assert line == b"@time=t;msgid=a\\sb PRIVMSG #a x\r\n"
    # A target a client sent as a trailing parameter, echoed in a numeric: one field.
    assert format_line(Message("403", ["me", "#a b", "No"])) == b"403 me #a_b No\r\n"
    assert format_line(Message("403", ["me", ":x", "No"])) == b"403 me *:x No\r\n"
    assert format_line(Message("403", ["me", "", "No"])) == b"403 me * No\r\n"


def test_nothing_formatted_can_end_the_line_or_carry_a_nul():
    hostile = "hi\r\nQUIT :bye\0\nPRIVMSG #x :injected"
    line = format_line(Message("PRIVMSG", ["#a", hostile], {"t": "v\r\n"}, "n\r!u@h"))
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")
    assert b"\0" not in line and b"\n" not in line[:-2] and b"\r" not in line[:-2]
    assert b"^M^JQUIT" in line


def test_format_cuts_a_line_to_512_bytes_at_a_character_boundary():
    line = format_line(Message("PRIVMSG", ["#a", "é" * 600], source="n!u@h"))
    assert len(line) <= 512 and line.endswith(b"\r\n")
    line[:-2].decode()  # still UTF-8: no half character at the cut
    assert len(format_line(Message("PRIVMSG", ["#a", "x"], {"big": "y" * 9000}))) < 512


def test_neutralise_shows_controls_as_the_client_does_and_keeps_irc_formatting():
    assert neutralise("plain") == "plain"
    assert neutralise("a\r\nb\0c") == "a^M^Jb^@c"
    assert neutralise("\x01VERSION\x01") == "^AVERSION^A"  # no CTCP through a room
    assert neutralise("\x1b[2J") == "^[[2J"
    assert neutralise("\x02bold\x02 \x034red\x03 \x1ditalic\x1d \x0f") == \
        "\x02bold\x02 \x034red\x03 \x1ditalic\x1d \x0f"
    assert neutralise("abc\u202edef") == "abc<U+202E>def"  # a bidi override, shown
    assert neutralise("👩\u200d💻 می\u200cخواهم") == "👩\u200d💻 می\u200cخواهم"


def test_split_text_keeps_every_byte_and_each_piece_within_budget():
    text = "word " * 300 + "ü" * 300
    pieces = irc.split_text(text, 100)
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= 100 for p in pieces)
    assert irc.split_text("", 100) == [""]


def test_line_reader_splits_on_cr_lf_and_refuses_hostile_input():
    reader = LineReader()
    assert reader.feed(b"NICK a\r\nUSER a 0 * :A\nPI") == [b"NICK a", b"USER a 0 * :A"]
    assert reader.feed(b"NG x\r") == [b"PING x"]
    assert reader.feed(b"@" + b"t" * 4000 + b" PING x\r\n") == [b"@" + b"t" * 4000 + b" PING x"]
    for bad in [b"PRIVMSG #a :" + b"x" * 600 + b"\r\n", b"PING \0x\r\n",
                b"@" + b"t" * 5000 + b" PING\r\n", b"x" * 9000]:
        with pytest.raises(LineError):
            LineReader().feed(bad)
    assert len(parse(b"PRIVMSG #a :" + b"x" * 497).params[1]) == 497  # 510 bytes: fine
    with pytest.raises(LineError):
        LineReader().feed(b"PRIVMSG #a :" + b"x" * 499 + b"\n")


def test_names_map_to_irc_and_back_without_collisions():
    for name in ["alice", "a!b", "x@y", "#hash", ":colon", "~tilde", "@op", "+v", "ok*?",
                 "Дмитрий", "taro太郎", "a.b-c_d[e]{f}"]:
        nick = to_nick(name)
        assert from_nick(nick) == name
        assert not any(ch in nick for ch in "!@*? ") and nick[0] not in "#&:$~%+@"
    assert to_nick("a!b") == "a！b"
    assert to_channel("lounge") == "#lounge" and from_channel("#lounge") == "lounge"
    assert from_channel("##x") == "#x" and from_channel("&x") is None
    assert from_channel("#") is None


def test_msgid_carries_the_seq_back():
    assert seq_of("msgid=" + msgid("lounge", 42)) == 42
    assert msgid("lounge", 1) != msgid("other", 1)
    assert msgid("Lounge", 1) == msgid("lounge", 1)
    assert seq_of("timestamp=2020-01-01T00:00:00Z") is None


# -- the session ---------------------------------------------------------------------------


class Broker:
    """Stands in for the Connection: records requests, numbers them."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, dict[str, Any]]] = []

    def __call__(self, cmd: str, **fields: Any) -> int:
        rid = len(self.sent) + 1
        self.sent.append((rid, cmd, fields))
        return rid

    def last(self, cmd: str) -> tuple[int, dict[str, Any]]:
        for rid, c, fields in reversed(self.sent):
            if c == cmd:
                return rid, fields
        raise AssertionError(f"no {cmd} among {self.sent}")


def lines(session: Session) -> list[str]:
    return [line.decode().removesuffix("\r\n") for line in session.take()]


def feed(session: Session, *text: str) -> list[str]:
    for line in text:
        session.receive(line.encode())
    return lines(session)


def reply(session: Session, rid: int, cmd: str, **data: Any) -> list[str]:
    session.event(Event("reply", {"cmd": cmd, **data}, rid))
    return lines(session)


def error(session: Session, rid: int, cmd: str, code: str, text: str) -> list[str]:
    session.event(Event("error", {"cmd": cmd, "code": code, "text": text}, rid))
    return lines(session)


def events(session: Session, *evs: tuple[str, dict[str, Any]]) -> list[str]:
    for kind, data in evs:
        session.event(Event(kind, data))
    session.settle()
    return lines(session)


def registered(nick: str = "alice", *caps: str) -> tuple[Session, Broker]:
    s, b = Session(wall=lambda: 1_700_000_000.0), Broker()
    if caps:
        feed(s, "CAP LS 302", f"NICK {nick}", "USER u 0 * :Real",
             f"CAP REQ :{' '.join(caps)}", "CAP END")
    else:
        feed(s, f"NICK {nick}", "USER u 0 * :Real")
    assert s.wants_broker
    s.attach(b)
    rid, fields = b.last("login")
    assert fields["name"] == nick
    out = reply(s, rid, "login", name=nick)
    assert any(f" 001 {nick} " in ln for ln in out)
    return s, b


def in_room(s: Session, b: Broker, room: str = "lounge", members=("bob", "alice"),
            history=()) -> list[str]:
    feed(s, f"JOIN #{room}")
    rid, fields = b.last("join")
    assert fields["room"] == room
    s.event(Event("reply", {"cmd": "join", "room": room, "name": s.name,
                            "members": list(members), "count": len(members), "seq": 9}, rid))
    for e in history:
        s.event(Event(e["ev"], {k: v for k, v in e.items() if k != "ev"} | {"replay": True}))
    s.settle()
    return lines(s)


def test_registration_waits_for_cap_end_then_logs_in_and_welcomes_honestly():
    s, b = Session(), Broker()
    out = feed(s, "CAP LS 302", "NICK alice", "USER u 0 * :Alice")
    assert out == [":zchat.gateway CAP * LS :batch draft/chathistory echo-message "
                   "message-tags sasl=PLAIN server-time"]
    assert not s.wants_broker  # CAP negotiation holds registration
    assert feed(s, "CAP REQ :server-time bogus") == [
        ":zchat.gateway CAP alice NAK :server-time bogus"]
    assert feed(s, "CAP REQ :server-time echo-message") == [
        ":zchat.gateway CAP alice ACK :server-time echo-message"]
    feed(s, "CAP END")
    assert s.wants_broker
    s.attach(b)
    rid, fields = b.last("login")
    assert fields == {"name": "alice"}
    out = reply(s, rid, "login", name="alice")
    numerics = [ln.split()[1] for ln in out]
    assert numerics[:4] == ["001", "002", "003", "004"] and "005" in numerics
    assert numerics[-1] == "376"
    isupport = " ".join(ln for ln in out if " 005 " in ln)
    for token in ["CASEMAPPING=ascii", "CHANTYPES=#", "NICKLEN=20", "CHANNELLEN=33",
                  "TOPICLEN=300", "NETWORK=zchat", "CHATHISTORY=200"]:
        assert token in isupport
    assert all(len(ln.encode()) <= 510 for ln in out)
    assert feed(s, "CAP LIST") == [":zchat.gateway CAP alice LIST :echo-message server-time"]


def test_commands_before_registration_are_refused_and_pings_answered():
    s = Session()
    assert feed(s, "JOIN #x") == [":zchat.gateway 451 * :You have not registered"]
    assert feed(s, "PING :abc") == [":zchat.gateway PONG zchat.gateway abc"]
    assert feed(s, "QUIT :gone") == ["ERROR :Closing Link: * (Quit: gone)"]
    assert s.closed == "Quit: gone"


def test_a_taken_or_registered_nickname_is_433_and_another_may_be_tried():
    s, b = Session(), Broker()
    feed(s, "NICK alice", "USER u 0 * :A")
    s.attach(b)
    rid, _ = b.last("login")
    assert error(s, rid, "login", "name_taken", "Nickname alice is taken") == [
        ":zchat.gateway 433 * alice :Nickname is already in use"]
    feed(s, "NICK alice_")
    rid, fields = b.last("login")
    assert fields["name"] == "alice_"
    out = error(s, rid, "login", "name_reserved", "Nickname alice_ is registered")
    assert out[0].startswith(":zchat.gateway 433 * alice_ :Nickname is registered")
    assert feed(s, "NICK no,comma") == [
        ":zchat.gateway 432 * no,comma :Erroneous nickname: not a zchat nickname"]


def test_pass_is_the_password_of_the_nickname():
    s, b = Session(), Broker()
    feed(s, "PASS sekrit-password", "NICK carol", "USER u 0 * :C")
    s.attach(b)
    rid, fields = b.last("login")
    assert fields == {"name": "carol", "password": "sekrit-password"}
    assert error(s, rid, "login", "bad_password", "Wrong password for carol") == [
        ":zchat.gateway 464 * :Password incorrect: Wrong password for carol"]


def test_sasl_plain_logs_in_before_registration_ends():
    s, b = Session(), Broker()
    feed(s, "CAP LS 302", "NICK carol", "USER u 0 * :C", "CAP REQ :sasl")
    assert feed(s, "AUTHENTICATE PLAIN") == ["AUTHENTICATE +"]
    import base64
    blob = base64.b64encode(b"\0carol\0sekrit-password").decode()
    feed(s, f"AUTHENTICATE {blob}")
    assert s.wants_broker
    s.attach(b)
    rid, fields = b.last("login")
    assert fields == {"name": "carol", "password": "sekrit-password"}
    out = reply(s, rid, "login", name="carol")
    assert out == [":zchat.gateway 900 carol carol!u@zchat carol :You are now logged in as "
                   "carol", ":zchat.gateway 903 carol :SASL authentication successful"]
    out = feed(s, "CAP END")
    assert any(" 001 carol " in ln for ln in out)
    assert len(b.sent) == 1  # no second login: SASL's was the one


def test_sasl_failure_and_garbage_are_904():
    s, b = Session(), Broker()
    feed(s, "CAP LS 302", "NICK carol", "USER u 0 * :C", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
    assert feed(s, "AUTHENTICATE !!notbase64") == [
        ":zchat.gateway 904 carol :SASL authentication failed: send PLAIN as "
        "\\0NICKNAME\\0PASSWORD"]
    import base64
    feed(s, "AUTHENTICATE PLAIN", "AUTHENTICATE " + base64.b64encode(b"\0carol\0wrong-pass")
         .decode())
    s.attach(b)
    rid, _ = b.last("login")
    out = error(s, rid, "login", "bad_password", "Wrong password for carol")
    assert out == [":zchat.gateway 904 carol :SASL authentication failed: Wrong password "
                   "for carol"]
    assert feed(s, "AUTHENTICATE SCRAM-SHA-256") == [  # only PLAIN is offered
        ":zchat.gateway 908 carol PLAIN :are available SASL mechanisms",
        ":zchat.gateway 904 carol :SASL authentication failed"]
    assert feed(s, "AUTHENTICATE PLAIN", *["AUTHENTICATE " + "A" * 400] * 4)[-1].endswith(
        " 905 carol :SASL message too long")


def test_join_creates_a_missing_room_then_shows_names_topic_and_history_as_a_batch():
    s, b = registered("alice", "batch", "server-time", "message-tags")
    feed(s, "JOIN #lounge")
    rid, fields = b.last("join")
    assert fields == {"room": "lounge"}
    assert error(s, rid, "join", "no_such_room", "No such room: lounge") == []
    rid, fields = b.last("create")
    assert fields == {"room": "lounge"}
    s.event(Event("reply", {"cmd": "create", "room": "lounge", "name": "alice",
                            "members": ["bob", "alice"], "seq": 3, "subject": "tea time",
                            "role": "owner"}, rid))
    s.event(Event("msg", {"room": "lounge", "seq": 2, "ts": 1_700_000_000.25, "from": "bob",
                          "text": "earlier", "replay": True}))
    s.event(Event("join", {"room": "lounge", "seq": 3, "ts": 1.0, "name": "alice",
                           "replay": True}))
    s.settle()
    out = lines(s)
    mid = msgid("lounge", 2)
    assert out == [
        ":alice!u@zchat JOIN #lounge",
        ":zchat.gateway 332 alice #lounge :tea time",
        ":zchat.gateway 353 alice = #lounge :bob ~alice",
        ":zchat.gateway 366 alice #lounge :End of /NAMES list",
        ":zchat.gateway BATCH +z1 chathistory #lounge",
        f"@time=2023-11-14T22:13:20.250Z;batch=z1;msgid={mid} :bob!zchat@zchat PRIVMSG "
        "#lounge earlier",
        ":zchat.gateway BATCH -z1",
    ]


def test_history_without_server_time_says_when_in_the_text():
    s, b = registered()
    out = in_room(s, b, history=[{"ev": "msg", "room": "lounge", "seq": 2, "ts": 0.0,
                                  "from": "bob", "text": "old news"}])
    said = [ln for ln in out if "PRIVMSG" in ln]
    assert len(said) == 1 and said[0].startswith(":bob!zchat@zchat PRIVMSG #lounge :[")
    assert said[0].endswith("] old news") and "BATCH" not in " ".join(out)


def test_lines_after_a_join_wait_for_it():
    s, b = registered()
    feed(s, "JOIN #lounge", "PRIVMSG #lounge :first", "PRIVMSG #lounge :second")
    assert [c for _, c, _ in b.sent][-1] == "join"  # the messages wait for the welcome
    assert feed(s, "PING x") == [":zchat.gateway PONG zchat.gateway x"]  # liveness never waits
    rid, _ = b.last("join")
    reply(s, rid, "join", room="lounge", name="alice", members=["alice"], seq=1)
    assert [(c, f.get("text")) for _, c, f in b.sent[-2:]] == [("say", "first"),
                                                               ("say", "second")]


def test_room_messages_actions_and_echo():
    s, b = registered("alice", "echo-message", "server-time", "message-tags")
    in_room(s, b)
    feed(s, "PRIVMSG #lounge :hello", "PRIVMSG #lounge :\x01ACTION waves\x01")
    (r1, c1, f1), (r2, c2, f2) = b.sent[-2:]
    assert (c1, f1) == ("say", {"room": "lounge", "text": "hello"})
    assert (c2, f2) == ("say", {"room": "lounge", "text": "waves", "me": True})
    out = reply(s, r1, "say", room="lounge", seq=10)
    assert out == [f"@time=2023-11-14T22:13:20.000Z;msgid={msgid('lounge', 10)} "
                   ":alice!u@zchat PRIVMSG #lounge hello"]
    # The room's copy of our own message is not shown again; others' are.
    out = events(s, ("msg", {"room": "lounge", "seq": 10, "ts": 5.0, "from": "alice",
                             "text": "hello"}),
                 ("msg", {"room": "lounge", "seq": 11, "ts": 6.0, "from": "bob",
                          "text": "dances", "me": True}))
    assert out == [f"@time=1970-01-01T00:00:06.000Z;msgid={msgid('lounge', 11)} "
                   ":bob!zchat@zchat PRIVMSG #lounge :\x01ACTION dances\x01"]
    out = error(s, r2, "say", "rate_limited", "Slow down")
    assert out == [":zchat.gateway 404 alice #lounge :Cannot send to channel: Slow down"]


def test_private_messages_whispers_and_broadcasts():
    s, b = registered("alice", "message-tags")
    in_room(s, b)
    feed(s, "PRIVMSG bob :psst", "PRIVMSG bob :\x01ACTION nods\x01",
         "@+draft/channel-context=#lounge PRIVMSG bob :in the room")
    assert [(c, f) for _, c, f in b.sent[-3:]] == [
        ("msg", {"to": ["bob"], "text": "psst"}),
        ("msg", {"to": ["bob"], "text": "* alice nods"}),
        ("whisper", {"room": "lounge", "to": "bob", "text": "in the room"})]
    out = events(s, ("dm", {"from": "bob", "to": ["alice"], "text": "hi\r\nQUIT :x"}),
                 ("dm", {"from": "bob", "to": ["alice", "carol"], "text": "both"}),
                 ("whisper", {"from": "bob", "room": "lounge", "text": "secret"}),
                 ("broadcast", {"from": "op", "text": "maintenance"}))
    assert out == [
        ":bob!zchat@zchat PRIVMSG alice :hi^M^JQUIT :x",
        ":bob!zchat@zchat PRIVMSG alice :(to alice, carol) both",
        "@+draft/channel-context=#lounge :bob!zchat@zchat NOTICE alice :(whisper in "
        "#lounge) secret",
        ":op!zchat@zchat NOTICE alice :(broadcast) maintenance"]
    rid, _ = b.last("msg")
    assert error(s, rid, "msg", "no_such_user", "No such user: bob") == [
        ":zchat.gateway 401 alice bob :No such user: bob"]


def test_a_long_zchat_message_is_split_and_cut_within_bounds():
    s, b = registered()
    in_room(s, b)
    out = events(s, ("msg", {"room": "lounge", "seq": 10, "from": "bob", "text": "z" * 3000}))
    assert len(out) == 7 and all(len(ln.encode()) <= 510 for ln in out)
    assert "".join(parse(ln.encode()).params[1] for ln in out) == "z" * 3000
    out = events(s, ("msg", {"room": "lounge", "seq": 11, "from": "bob", "text": "y" * 65535}))
    assert len(out) == SPLIT_MAX and "more characters" in out[-1]


def test_members_join_part_quit_kick_and_rename_once_across_rooms():
    s, b = registered()
    in_room(s, b, "a", members=["alice", "bob", "carol"])
    in_room(s, b, "b", members=["alice", "bob", "carol"])
    out = events(s, ("join", {"room": "a", "seq": 10, "name": "dave"}),
                 ("join", {"room": "a", "seq": 11, "name": "dave"}),  # back after a restart
                 ("leave", {"room": "a", "seq": 12, "name": "dave", "reason": "left"}),
                 ("nick", {"room": "a", "seq": 13, "old": "bob", "name": "robert"}),
                 ("nick", {"room": "b", "seq": 10, "old": "bob", "name": "robert"}),
                 ("leave", {"room": "a", "seq": 14, "name": "robert", "reason": "quit"}),
                 ("leave", {"room": "b", "seq": 11, "name": "robert", "reason": "quit"}),
                 ("leave", {"room": "a", "seq": 15, "name": "carol",
                            "reason": "kicked by alice: spam"}))
    assert out == [":dave!zchat@zchat JOIN #a", ":dave!zchat@zchat PART #a",
                   ":bob!zchat@zchat NICK robert", ":robert!zchat@zchat QUIT quit",
                   ":alice!zchat@zchat KICK #a carol spam"]
    assert s.channels["a"].members == ["alice"] and s.channels["b"].members == ["alice",
                                                                                "carol"]


def test_a_killed_room_or_a_kick_removes_us_with_the_reason():
    s, b = registered()
    in_room(s, b, "a")
    in_room(s, b, "b")
    out = events(s, ("ejected", {"room": "a", "reason": "closing for maintenance"}),
                 ("ejected", {"room": "a", "reason": "again"}))
    assert out == [":zchat.gateway KICK #a alice :closing for maintenance"]
    out = events(s, ("leave", {"room": "b", "seq": 20, "name": "alice",
                               "reason": "banned by bob: rude"}),
                 ("ejected", {"room": "b", "reason": "banned by bob: rude"}))
    assert out == [":bob!zchat@zchat KICK #b alice rude"]
    assert s.channels == {}
    assert events(s, ("kicked", {"reason": "bye"})) == [
        "ERROR :Closing Link: alice (Disconnected by the zchat operator: bye)"]


def test_part_topic_list_names_who_whois_and_modes():
    s, b = registered()
    in_room(s, b)
    feed(s, "TOPIC #lounge")
    rid, fields = b.last("subject")
    assert fields == {"room": "lounge"}
    assert reply(s, rid, "subject", room="lounge", text="tea", by="bob") == [
        ":zchat.gateway 332 alice #lounge tea", ":zchat.gateway 333 alice #lounge bob 0"]
    feed(s, "TOPIC #lounge :coffee")
    rid, fields = b.last("subject")
    assert fields == {"room": "lounge", "text": "coffee"}
    assert feed(s, "NAMES #lounge") == []  # waits: it may depend on what TOPIC did
    assert reply(s, rid, "subject", room="lounge", text="coffee", seq=10)[0] == \
        ":zchat.gateway 353 alice = #lounge :bob alice"
    assert events(s, ("subject", {"room": "lounge", "seq": 10, "name": "bob",
                                  "text": "coffee"})) == [
        ":bob!zchat@zchat TOPIC #lounge coffee"]
    assert feed(s, "NAMES #lounge") == [":zchat.gateway 353 alice = #lounge :bob alice",
                                        ":zchat.gateway 366 alice #lounge :End of /NAMES list"]
    assert feed(s, "WHO #lounge")[-1] == ":zchat.gateway 315 alice #lounge :End of /WHO list"
    out = feed(s, "WHOIS bob")
    assert out[0] == ":zchat.gateway 311 alice bob zchat zchat * bob"
    assert out[1] == ":zchat.gateway 319 alice bob #lounge"
    feed(s, "WHOIS zed")
    rid, fields = b.last("users")
    assert fields["limit"] == 1 and fields["after"] < "zed"
    assert reply(s, rid, "users", users=["zed"], more=False)[0] == \
        ":zchat.gateway 311 alice zed zchat zchat * zed"
    feed(s, "LIST")
    rid, _ = b.last("rooms")
    out = reply(s, rid, "rooms", rooms=[{"room": "lounge", "count": 2, "subject": "coffee"},
                                        {"room": "vault", "closed": True}], more=False)
    assert out == [":zchat.gateway 322 alice #lounge 2 coffee",
                   ":zchat.gateway 322 alice #vault 0 :[closed: invite-only or keyed]",
                   ":zchat.gateway 323 alice :End of /LIST"]
    feed(s, "MODE #lounge +ik-t sesame")
    rid, fields = b.last("mode")
    assert fields == {"room": "lounge", "invite": True, "key": "sesame",
                      "subject_by": "anyone"}
    reply(s, rid, "mode", room="lounge", seq=12)
    feed(s, "MODE #lounge +o bob")
    rid, fields = b.last("role")
    assert fields == {"room": "lounge", "name": "bob", "role": "moderator"}
    reply(s, rid, "role", room="lounge", name="bob", role="moderator", seq=13)
    assert events(s, ("role", {"room": "lounge", "seq": 11, "name": "bob", "role": "moderator",
                               "by": "alice"})) == [":alice!zchat@zchat MODE #lounge +o bob"]
    feed(s, "PART #lounge :see you")
    rid, _ = b.last("leave")
    assert reply(s, rid, "leave", room="lounge") == [":alice!u@zchat PART #lounge :see you"]


def test_a_flood_of_requests_or_of_waiting_lines_is_an_excess_flood():
    s, b = registered()
    in_room(s, b)
    feed(s, *[f"PRIVMSG #lounge :{i}" for i in range(PENDING_MAX)])
    assert s.closed is None
    out = feed(s, "PRIVMSG #lounge :one too many")
    assert out == ["ERROR :Closing Link: alice (Excess Flood)"] and s.closed
    s, b = registered()
    feed(s, "JOIN #never-answered", *["PRIVMSG #x :y"] * HELD_MAX)
    assert s.closed is None
    assert feed(s, "PRIVMSG #x :y") == ["ERROR :Closing Link: alice (Excess Flood)"]


def test_a_lost_nickname_on_resuming_closes_and_state_changes_are_notices():
    s, b = registered()
    assert events(s, ("lost", {"server": "tcp://x", "silent": 4.2})) == [
        ":zchat.gateway NOTICE alice :Lost contact with zchat (silent for 4.2 s); what you "
        "send waits for it"]
    assert events(s, ("resumed", {"server": "x", "name": "alice", "rooms": []})) == [
        ":zchat.gateway NOTICE alice :Reconnected to zchat; your rooms are caught up"]
    out = events(s, ("error", {"cmd": "login", "code": "name_taken",
                               "text": "Could not take back the nickname alice: taken"}))
    assert out == ["ERROR :Closing Link: alice (Could not take back the nickname alice: "
                   "taken)"]


def test_chathistory_before_a_msgid_asks_zchat_for_older_events():
    s, b = registered("alice", "batch", "message-tags", "draft/chathistory")
    in_room(s, b)
    feed(s, f"CHATHISTORY BEFORE #lounge msgid={msgid('lounge', 7)} 3")
    rid, fields = b.last("history")
    assert fields == {"room": "lounge", "before": 7, "limit": 3}
    out = reply(s, rid, "history", room="lounge", events=[
        {"ev": "join", "room": "lounge", "seq": 5, "name": "bob"},
        {"ev": "msg", "room": "lounge", "seq": 6, "from": "bob", "text": "six"}])
    assert out == [":zchat.gateway BATCH +z1 chathistory #lounge",
                   f"@batch=z1;msgid={msgid('lounge', 6)} :bob!zchat@zchat PRIVMSG #lounge six",
                   ":zchat.gateway BATCH -z1"]
    refused = feed(s, "CHATHISTORY AROUND #lounge * 3")
    assert " FAIL CHATHISTORY INVALID_PARAMS AROUND " in refused[0]


def test_after_a_broker_restart_members_who_never_came_back_are_shown_leaving():
    s, b = registered()
    in_room(s, b, members=["alice", "bob", "carol"])
    events(s, ("resumed", {"server": "x", "name": "alice", "rooms": ["lounge"]}))
    # Back in the same room after the restart: bob's join is no news.
    assert events(s, ("join", {"room": "lounge", "seq": 20, "name": "bob"})) == []
    sent = len(b.sent)
    s.tick(100.0)
    s.tick(100.0 + RESYNC_AFTER - 0.1)
    assert len(b.sent) == sent  # members get the time a restart takes to come back
    s.tick(100.0 + RESYNC_AFTER)
    rid, fields = b.last("who")
    assert fields == {"room": "lounge", "limit": 200}
    feed(s, "PING x")  # the resync holds no line back
    assert reply(s, rid, "who", room="lounge", members=["alice", "bob", "dave"],
                 more=False) == [
        ":carol!zchat@zchat PART #lounge :did not come back after zchat restarted",
        ":dave!zchat@zchat JOIN #lounge"]
    assert s.channels["lounge"].members == ["alice", "bob", "dave"]


def test_chathistory_latest_after_a_reference_gives_the_newest_only():
    s, b = registered("alice", "batch", "message-tags")
    in_room(s, b)
    feed(s, f"CHATHISTORY LATEST #lounge msgid={msgid('lounge', 5)} 10")
    rid, fields = b.last("history")
    assert fields == {"room": "lounge", "limit": 10}
    out = reply(s, rid, "history", room="lounge", events=[
        {"ev": "msg", "room": "lounge", "seq": seq, "from": "bob", "text": f"m{seq}"}
        for seq in (4, 5, 6)])
    assert [ln.rsplit(" ", 1)[-1] for ln in out if "PRIVMSG" in ln] == ["m6"]


def test_a_nick_change_is_one_nick_line_and_our_messages_stay_ours():
    s, b = registered("alice", "echo-message")
    in_room(s, b)
    feed(s, "PRIVMSG #lounge :x")
    said, _ = b.last("say")
    feed(s, "NICK alicia")
    rid, fields = b.last("login")
    assert fields == {"name": "alicia"}
    assert reply(s, rid, "login", name="alicia") == [":alice!u@zchat NICK alicia"]
    assert s.channels["lounge"].members == ["bob", "alicia"]
    # The room tells of it too, and a message of ours sent before it lands after it.
    assert events(s, ("nick", {"room": "lounge", "seq": 10, "old": "alice", "name": "alicia"}),
                  ("msg", {"room": "lounge", "seq": 11, "from": "alice", "text": "x"})) == []
    assert reply(s, said, "say", room="lounge", seq=11) == [
        ":alicia!u@zchat PRIVMSG #lounge x"]
    feed(s, "NICK bob")
    rid, _ = b.last("login")
    assert error(s, rid, "login", "name_taken", "Nickname bob is taken") == [
        ":zchat.gateway 433 alicia bob :Nickname is already in use"]


def test_away_and_the_away_of_those_we_message():
    s, b = registered()
    feed(s, "AWAY :lunch")
    rid, fields = b.last("away")
    assert fields == {"text": "lunch"}
    assert reply(s, rid, "away", away="lunch") == [
        ":zchat.gateway 306 alice :You have been marked as being away"]
    feed(s, "PRIVMSG bob :there?")
    rid, _ = b.last("msg")
    assert reply(s, rid, "msg", to=["bob"], away={"bob": "in a meeting"}) == [
        ":zchat.gateway 301 alice bob :in a meeting"]


def test_whoever_takes_a_nickname_we_gave_up_is_not_us():
    s, b = registered("alice", "echo-message", "message-tags")
    in_room(s, b)
    feed(s, "NICK alicia")
    rid, _ = b.last("login")
    reply(s, rid, "login", name="alicia")
    # mallory takes "alice": her join, messages and kick are hers, shown as hers.
    assert events(s, ("join", {"room": "lounge", "seq": 12, "name": "alice"})) == [
        ":alice!zchat@zchat JOIN #lounge"]
    out = events(s, ("msg", {"room": "lounge", "seq": 13, "from": "alice", "text": "hi"}))
    assert [ln.split(" ", 1)[1] for ln in out] == [":alice!zchat@zchat PRIVMSG #lounge hi"]
    out = events(s, ("leave", {"room": "lounge", "seq": 14, "name": "alice",
                               "reason": "kicked by bob: go"}))
    assert out == [":bob!zchat@zchat KICK #lounge alice go"]
    assert "lounge" in s.channels  # we are still in it
    # A private message to "alice" goes to her, not back to us.
    feed(s, "PRIVMSG alice :psst")
    assert b.last("msg")[1] == {"to": ["alice"], "text": "psst"}
    # History: what "alice" said is hers, and what "alicia" said before we took the
    # name cannot be told ours, so it is shown as the other person's.
    feed(s, "CHATHISTORY LATEST #lounge * 10")
    rid, _ = b.last("history")
    out = reply(s, rid, "history", events=[
        {"ev": "msg", "room": "lounge", "seq": 5, "from": "alicia", "text": "old",
         "ts": 1_600_000_000.0},
        {"ev": "msg", "room": "lounge", "seq": 13, "from": "alice", "text": "hi",
         "ts": 1_700_000_000.0},
        {"ev": "msg", "room": "lounge", "seq": 15, "from": "alicia", "text": "me",
         "ts": 1_700_000_000.0}])
    sources = [ln.split(" ")[1] for ln in out]
    assert sources == [":alicia!zchat@zchat", ":alice!zchat@zchat", ":alicia!u@zchat"]


def test_a_long_text_of_invisible_characters_costs_what_a_short_one_does():
    import time as _time
    s, b = registered()
    in_room(s, b)
    start = _time.process_time()
    for seq in range(10, 15):
        out = events(s, ("msg", {"room": "lounge", "seq": seq, "from": "bob",
                                 "text": "\u202e" * 65535}))
        assert len(out) == SPLIT_MAX and "more characters" in out[-1]
        assert all(len(ln.encode()) <= 510 for ln in out)
    assert _time.process_time() - start < 0.25  # was about 0.13 s each, quadratic
    pieces = irc.split_text("x" * 1_000_000, 100, 3)
    assert pieces == ["x" * 100] * 3
    assert irc.split_text("ab", 100, 3) == ["ab"]


def test_the_line_reader_gives_lines_a_few_at_a_time_and_keeps_the_rest():
    reader = LineReader()
    reader.push(b"PING a\nPING b\r\nPING c\nPART")
    assert reader.has_line() and reader.take(2) == [b"PING a", b"PING b"]
    assert reader.has_line() and reader.take(2) == [b"PING c"]
    assert not reader.has_line()
    reader.push(b" #x\n")
    assert reader.take() == [b"PART #x"]
    # Many short LF-only lines: linear (a search for CR no longer scans the rest each).
    many = LineReader()
    many.push(b"PING x\n" * 100_000)
    import time as _time
    start = _time.process_time()
    while many.has_line():
        many.take(20)
    assert _time.process_time() - start < 2.0


def test_the_flood_budget_charges_costly_commands_more_and_refills():
    pen = irc.Penalty(rate=10.0, burst=40.0)
    assert irc.command_of(b"@a=b :x!y@z who #room") == b"WHO"
    assert irc.command_of(b"PING x") == b"PING"
    n = 0
    while pen.ready(0.0):
        pen.charge(b"WHO #amp", 0.0)
        n += 1
    assert n == 10  # 4 apiece: ten, where forty PINGs would pass
    assert 0 < pen.wait(0.0) <= 0.1 and pen.ready(0.2)
    pen.charge(b"LIST", 0.2)  # 8: the next line waits most of a second
    assert not pen.ready(0.5) and 0.5 < pen.wait(0.2) < 1.0 and pen.ready(1.2)
    cheap = irc.Penalty(rate=10.0, burst=40.0)
    for _ in range(40):
        assert cheap.ready(0.0)
        cheap.charge(b"PING x", 0.0)
    assert not cheap.ready(0.0) and cheap.ready(1.0)


def test_a_room_created_by_another_between_our_join_and_create_is_joined():
    s, b = registered()
    feed(s, "JOIN #race")
    rid, _ = b.last("join")
    error(s, rid, "join", "no_such_room", "No such room: race")
    rid, _ = b.last("create")
    assert error(s, rid, "create", "room_exists", "Room race already exists") == []
    rid, fields = b.last("join")
    assert rid > 2 and fields == {"room": "race"}
    out = reply(s, rid, "join", room="race", name="alice", members=["bob", "alice"])
    assert ":alice!u@zchat JOIN #race" in out
    # Once only: a join refused again is told, not retried forever.
    feed(s, "JOIN #race2")
    rid, _ = b.last("join")
    error(s, rid, "join", "no_such_room", "No such room")
    rid, _ = b.last("create")
    error(s, rid, "create", "room_exists", "exists")
    rid, _ = b.last("join")
    count = len(b.sent)
    assert error(s, rid, "join", "room_exists", "exists") != [] and len(b.sent) == count


def test_nickserv_and_chanserv_are_answered_here_never_by_a_zchat_user():
    s, b = registered("victim")
    before = len(b.sent)
    out = feed(s, "PRIVMSG NickServ :IDENTIFY owner hunter2")
    rid, fields = b.last("login")
    assert fields == {"name": "owner", "password": "hunter2"} and out == []
    assert reply(s, rid, "login", name="owner") == [":victim!u@zchat NICK owner"]
    out = feed(s, "PRIVMSG chanserv :hello", "NOTICE NICKSERV :IDENTIFY x y",
               "PRIVMSG NickServ :IDENTIFY owner")
    assert [ln.split(" ", 2)[1] for ln in out] == ["NOTICE", "NOTICE"]
    assert out[0].startswith(":chanserv!service@zchat.gateway NOTICE owner :")
    assert all(cmd != "msg" for _, cmd, _ in b.sent[before:])
    assert len(b.sent) == before + 1  # the IDENTIFY's login, and nothing else


def test_a_wrong_password_is_464_and_one_connection_has_few_tries():
    s, b = Session(wall=lambda: 1.0), Broker()
    feed(s, "PASS nope", "NICK owner", "USER u 0 * :R")
    s.attach(b)
    rid, fields = b.last("login")
    assert fields == {"name": "owner", "password": "nope"}
    assert error(s, rid, "login", "bad_password", "Wrong password for owner") == [
        ":zchat.gateway 464 * :Password incorrect: Wrong password for owner"]
    feed(s, "NICK owner2")
    rid, _ = b.last("login")
    assert error(s, rid, "login", "rate_limited", "Too many password attempts")[0] \
        .split(" ")[1] == "464"
    feed(s, "NICK owner3")
    rid, _ = b.last("login")
    error(s, rid, "login", "bad_password", "Wrong")
    count = len(b.sent)
    out = feed(s, "NICK owner4")  # a fourth password: not sent to zchat at all
    assert len(b.sent) == count and " 464 " in out[0] and "too many" in out[0]


def test_one_connection_may_create_only_a_few_rooms_a_minute():
    now = [1_700_000_000.0]
    s, b = Session(wall=lambda: now[0]), Broker()
    feed(s, "NICK alice", "USER u 0 * :R")
    s.attach(b)
    reply(s, b.last("login")[0], "login", name="alice")
    for i in range(CREATIONS_MAX + 1):
        feed(s, f"JOIN #new{i}")
        out = error(s, b.last("join")[0], "join", "no_such_room", "No such room")
        if i < CREATIONS_MAX:
            assert b.last("create")[1] == {"room": f"new{i}"} and out == []
            error(s, b.last("create")[0], "create", "too_many_rooms", "Enough")
        else:
            assert b.last("create")[1] == {"room": f"new{i - 1}"}
            assert f" 403 alice #new{i} " in out[0]
    now[0] += CREATIONS_WINDOW + 1
    feed(s, "JOIN #again")
    error(s, b.last("join")[0], "join", "no_such_room", "No such room")
    assert b.last("create")[1] == {"room": "again"}


def test_edges_unicode_digits_many_channels_and_whois_of_another_spelling():
    assert seq_of("msgid=\u0661\u0662-ab") is None and seq_of("msgid=12-ab") == 12
    s, b = registered()
    in_room(s, b)
    out = feed(s, "CHATHISTORY LATEST #lounge * \u0661\u0660", "CAP LS \u0663\u0660\u0662")
    assert " FAIL CHATHISTORY INVALID_PARAMS " in out[0] and s.closed is None
    assert "sasl=PLAIN" not in out[1]
    out = feed(s, "JOIN " + ",".join(f"#c{i}" for i in range(12)))
    assert out == [":zchat.gateway 407 alice #c10 :Too many targets: at most 10 channels "
                   "in one JOIN"]
    s, b = registered()
    feed(s, "WHOIS zed")
    rid, fields = b.last("users")
    assert fields["after"] < "zed"
    assert reply(s, rid, "users", users=["zoe"], more=True) == []  # not it: next spelling
    rid, fields = b.last("users")
    assert fields["after"] < "Zed" and fields["after"] > "Zec"
    assert reply(s, rid, "users", users=["Zed"], more=True)[0] == \
        ":zchat.gateway 311 alice Zed zchat zchat * Zed"
