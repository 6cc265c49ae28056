"""The full-screen mode's windows as a model: numbering, routing, activity, the "new
since you last looked" marker, what a typed line means in each window, pending lines.
Pure logic, no sockets: the TUI tests show the same through a real broker."""

from __future__ import annotations

from client.connection import Event
from client.windows import (
    QUERY,
    ROOM,
    SERVER,
    Activity,
    Outbox,
    Windows,
    activity_list,
    conversation,
    mentions,
    outgoing,
    ui_command,
    window_label,
)


def msg(room: str, who: str, text: str, **extra) -> Event:
    return Event("msg", {"room": room, "from": who, "text": text, "seq": 1, **extra})


def names(windows: Windows) -> list[str]:
    return [w.title for w in windows.all]


def test_windows_are_numbered_from_the_lobby_in_the_order_they_open():
    ws = Windows()
    lounge, bob, dev = ws.open(ROOM, "lounge"), ws.open(QUERY, "bob"), ws.open(ROOM, "dev")
    assert ws.open(ROOM, "lounge") is lounge  # opened once
    assert names(ws) == ["lobby", "lounge", "bob", "dev"]
    assert [ws.number(w) for w in (ws.server, lounge, bob, dev)] == [1, 2, 3, 4]
    assert ws.at(3) is bob and ws.at(0) is None and ws.at(5) is None
    assert ws.current is ws.server and ws.step(-1) is dev and ws.step(1) is lounge
    ws.show(dev)
    assert ws.step(1) is ws.server  # wraps around
    ws.close(dev)  # on show: the one before it takes its place
    assert ws.current is bob and names(ws) == ["lobby", "lounge", "bob"]
    ws.close(ws.server)  # the lobby stays
    assert names(ws) == ["lobby", "lounge", "bob"]


def test_rooms_follow_the_library_and_a_closed_window_gives_way_to_its_current_room():
    ws = Windows()
    ws.sync_rooms(["lounge", "dev", "ops"], "ops")
    assert names(ws) == ["lobby", "lounge", "dev", "ops"]
    ws.show(ws.find(ROOM, "dev"))
    gone = ws.sync_rooms(["lounge", "ops"], "lounge")
    assert [w.name for w in gone] == ["dev"]
    assert ws.current is ws.find(ROOM, "lounge")
    ws.sync_rooms([], None)
    assert ws.current is ws.server


def test_events_are_routed_to_their_room_their_conversation_or_where_you_are():
    ws = Windows()
    lounge = ws.open(ROOM, "lounge")
    assert ws.route(msg("lounge", "bob", "hi"), "alice", "lounge") == [
        (lounge, msg("lounge", "bob", "hi"))]
    [(bob, shown)] = ws.route(Event("dm", {"from": "bob", "to": ["alice"], "text": "psst"}),
                              "alice", "lounge")
    assert (bob.kind, bob.name, shown.kind) == (QUERY, "bob", "dm")
    # Our own private message goes to the same conversation, drawn as a line from us.
    [(again, mine)] = ws.route(Event("reply", {"cmd": "msg", "to": ["bob"], "text": "yo"}),
                               "alice", "lounge")
    assert again is bob and mine == Event("dm", {"cmd": "msg", "to": ["bob"], "text": "yo",
                                                 "from": "alice"})
    [(group, _)] = ws.route(Event("dm", {"from": "carol", "to": ["bob", "alice"],
                                         "text": "all of us"}), "alice", None)
    assert group.name == "bob,carol" and group is not bob
    # Entering a room opens its window; a reply or an error goes where you are.
    [(dev, _)] = ws.route(Event("reply", {"cmd": "join", "room": "dev"}), "alice", "dev")
    assert (dev.kind, dev.name) == (ROOM, "dev")
    ws.show(bob)
    assert ws.route(Event("error", {"cmd": "join", "text": "No such room"}), "alice",
                    "dev")[0][0] is bob
    # Notices about the link: in the lobby and where you are, once each.
    assert [w for w, _ in ws.route(Event("lost", {}), "alice", "dev")] == [ws.server, bob]
    ws.show(ws.server)
    assert [w for w, _ in ws.route(Event("lost", {}), "alice", "dev")] == [ws.server]
    # Leaving the room on show: said in the lobby and in the room you go on with.
    ws.show(dev)
    assert [w for w, _ in ws.route(Event("ejected", {"room": "dev", "reason": "bye"}),
                                   "alice", "lounge")] == [ws.server, lounge]


def test_conversation_names_leave_me_out_and_do_not_depend_on_order():
    assert conversation(["bob", "alice"], "alice") == "bob"
    assert conversation(["carol", "Bob", "alice", None], "alice") == "Bob,carol"
    assert conversation(["alice"], "alice") == "alice"  # a note to oneself


def test_activity_and_unread_while_a_window_is_not_on_show():
    ws = Windows()
    lounge, dev = ws.open(ROOM, "lounge"), ws.open(ROOM, "dev")
    ws.show(lounge)
    ws.added(dev, 1, Event("join", {"room": "dev", "name": "bob"}), "alice")
    assert (dev.activity, dev.unread) == (Activity.EVENTS, 0)
    ws.added(dev, 1, msg("dev", "bob", "hello"), "alice")
    ws.added(dev, 1, msg("dev", "alice", "my own"), "alice")
    ws.added(dev, 1, msg("dev", "bob", "old", replay=True), "alice")
    assert (dev.activity, dev.unread) == (Activity.MESSAGES, 1)
    ws.added(dev, 1, msg("dev", "bob", "ALICE: look"), "alice")
    assert (dev.activity, dev.unread) == (Activity.HIGHLIGHT, 2)
    ws.added(lounge, 1, msg("lounge", "bob", "alice!"), "alice")  # on show: nothing new
    assert (lounge.activity, lounge.unread) == (Activity.NONE, 0)
    assert activity_list(ws) == [("", "act: "), ("highlight", "3")]
    assert window_label(3, dev) == [("dim", "3 "), ("highlight", "dev"),
                                    ("highlight", " (2)")]
    ws.show(dev)
    assert (dev.activity, dev.unread, activity_list(ws)) == (Activity.NONE, 0, [])
    bob = ws.open(QUERY, "bob")
    ws.added(bob, 1, Event("dm", {"from": "bob", "to": ["alice"], "text": "hi"}), "alice")
    assert bob.activity is Activity.HIGHLIGHT  # a private message calls for you


def test_the_marker_sits_where_you_left_a_window_while_something_new_follows_it():
    ws = Windows()
    lounge = ws.open(ROOM, "lounge")
    ws.show(lounge)
    ws.added(lounge, 3, msg("lounge", "bob", "x"), "alice")
    assert lounge.marker is None  # never left
    ws.show(ws.server)
    assert (lounge.seen, lounge.marker) == (3, None)  # nothing new yet
    ws.added(lounge, 2, msg("lounge", "bob", "y"), "alice")
    assert lounge.marker == 3
    ws.show(lounge)
    assert lounge.marker == 3  # still there while you read
    ws.added(lounge, 1, msg("lounge", "bob", "z"), "alice")
    ws.show(ws.server)
    assert (lounge.seen, lounge.marker) == (6, None)  # read up to the end


def test_mentions_are_whole_words_in_any_case_with_punctuation_in_nicknames():
    assert mentions("hi Alice!", "alice") and mentions("alice: look", "alice")
    assert not mentions("malice aforethought", "alice")
    assert not mentions("alice_2 is here", "alice") and not mentions("alices", "alice")
    assert mentions("ping [/] now", "[/]") and mentions("x.y?", "x.y")
    assert not mentions("anything", None) and not mentions(None, "alice")


def test_what_a_line_means_in_each_window():
    ws = Windows()
    lounge, bob, server = ws.open(ROOM, "lounge"), ws.open(QUERY, "bob"), ws.server
    assert outgoing("hello", lounge) == "hello"
    assert outgoing("/who", lounge) == "/who"
    assert outgoing("/quit", lounge, pasted=True) == "//quit"  # a pasted line is text
    assert outgoing("  hi there ", bob) == "/msg bob hi there"
    assert outgoing("//slash", bob) == "/msg bob /slash"
    assert outgoing("/who", bob) == "/who"  # a command is still a command
    assert outgoing("/quit", bob, pasted=True) == "/msg bob /quit"
    assert outgoing("login carol", server) == "/login carol"  # the slash is optional
    assert outgoing("/rooms", server) == "/rooms"
    assert outgoing("//text", server) is None  # nobody to say it to
    assert outgoing("   ", lounge) is None
    assert server.kind == SERVER


def test_window_and_query_commands_are_the_ui_own():
    assert ui_command("/window 3", "lounge") == ("window", 3)
    assert ui_command("/query bob", None) == ("query", "bob")
    assert ui_command("/query", "lounge") == ("query", None)
    for other in ("hello", "/join dev", "/msg bob hi", "/windows", ""):
        assert ui_command(other, "lounge") is None


def test_lines_with_text_are_pending_until_the_broker_answers_them():
    ws = Windows()
    lounge, bob = ws.open(ROOM, "lounge"), ws.open(QUERY, "bob")
    box = Outbox()
    first = box.sent(lounge, "hello", "lounge")
    again = box.sent(lounge, "hello", "lounge")
    dm = box.sent(bob, "/msg bob psst", "lounge")
    assert box.sent(lounge, "/who", "lounge") is None  # nothing to wait for
    assert box.sent(lounge, "x" * 70_000, "lounge") is None  # refused before it goes
    assert box.of(lounge) == [first, again] and box.of(bob) == [dm]
    assert box.settle(Event("reply", {"cmd": "say", "room": "lounge", "text": "hello"})) \
        is first
    assert box.settle(Event("reply", {"cmd": "who", "room": "lounge"})) is None
    assert box.settle(Event("error", {"cmd": "msg", "code": "no_such_user"})) is dm
    assert box.settle(Event("reply", {"cmd": "say", "text": "other"})) is None
    assert box.of(lounge) == [again] and box.of(bob) == []
