"""Every client command of issue 2, through real ``python -m client`` processes.

Each test drives real client processes against a real broker on loopback, once in
``--json`` mode (asserting on event fields) and, where the spec names a text, in plain
line mode (asserting on the exact rendered line).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .harness import Client, admin_json, json_lines

COMMAND_NAMES = ("login", "logout", "users", "rooms", "list", "create", "join", "leave", "who",
                 "whisper", "msg", "broadcast", "history", "help", "quit")


def exact(text: str) -> Callable[[str], bool]:
    return lambda line: line == text


def exact_suffix(text: str) -> Callable[[str], bool]:
    """A log line ending with exactly this text (after the timestamp)."""
    return lambda line: line.endswith(" " + text)


def lines_until(client: Client, match: Callable[[str], bool] | str) -> list[str]:
    """The output lines read from now up to and including the first that matches,
    without the client's 'Connected to ...' greeting."""
    start = len(client.out.seen)
    client.line(match)
    return [line for line in client.out.seen[start:] if not line.startswith("Connected to ")]


def next_lines(client: Client, n: int) -> list[str]:
    """The next ``n`` output lines, without the client's 'Connected to ...' greeting."""
    out: list[str] = []
    while len(out) < n:
        line = client.line(lambda _: True)
        if not line.startswith("Connected to "):
            out.append(line)
    return out


def events_until(client: Client, kind: str, **match: Any) -> list[dict[str, Any]]:
    """The JSON events read from now up to and including the first matching one."""
    start = len(client.out.seen)
    client.event(kind, **match)
    return json_lines(client.out.seen[start:])


def logged_in(client: Client, name: str) -> Client:
    client.send(f"login {name}")
    if client.json_mode:
        client.event("reply", cmd="login", name=name)
    else:
        client.line(exact(f"Logged in as {name}"))
    return client


def in_room(client: Client, command: str) -> dict[str, Any]:
    """Send a /create or /join line; return its reply once the replayed history (which
    ends with our own join) has been read too."""
    client.send("/" + command.lstrip("/"))
    reply = client.event("reply", cmd=command.lstrip("/").split()[0])
    client.event("join", replay=True, room=reply["room"], seq=reply["seq"])
    return reply


# --- /login ------------------------------------------------------------------------------


def test_login_with_missing_too_long_spaced_or_extra_words_prints_exactly_bad_username(
        broker, clients):
    c = clients(json_mode=False)
    c.send("login", "/login", "login " + "x" * 21, "login two words", "/login a\tb", "users")
    assert lines_until(c, exact("No users logged in")) == ["Bad username"] * 5 + [
        "No users logged in"]
    c.send("login " + "x" * 20)  # exactly the limit is fine
    c.line(exact("Logged in as " + "x" * 20))
    # In JSON mode: the same refusal, with its code.
    c = clients()
    c.send("/login", "login a b")
    for _ in range(2):
        ev = c.event("error")
        assert (ev["code"], ev["text"]) == ("bad_username", "Bad username")
    c.send("login alice")
    assert c.event("reply", cmd="login")["name"] == "alice"


def test_login_of_a_taken_name_prints_failure_then_why(broker, clients):
    logged_in(clients(), "alice")
    bob = clients(json_mode=False)
    bob.send("login alice", "login bob")
    # The chatroom assignment's Success/Failure line first, then what happened.
    assert lines_until(bob, exact("Logged in as bob")) == [
        "Failure", "Nickname alice is taken", "Success", "Logged in as bob"]
    assert [u["name"] for u in admin_json(broker.control, "users")["users"]] == ["alice",
                                                                                 "bob"]
    # In JSON mode: the error's code, and no Success/Failure event.
    carol = clients()
    carol.send("login alice", "users")
    ev = carol.event("error", cmd="login")
    assert ev["code"] == "name_taken" and "alice" in ev["text"]
    carol.event("reply", cmd="users")
    assert not [e for e in json_lines(carol.out.seen) if e["event"] == "outcome"]


# --- /logout -----------------------------------------------------------------------------


def test_logout_leaves_every_room_but_list_and_login_still_work(broker, clients):
    alice, bob = logged_in(clients(), "alice"), clients()
    in_room(alice, "create lounge")
    in_room(bob, "join lounge bob")
    alice.send("/logout")
    alice.event("reply", cmd="logout", name="alice")
    bob.event("leave", room="lounge", name="alice")
    alice.send("list")  # back in the lobby: a command again, not chat
    assert alice.event("reply", cmd="users")["users"] == ["bob"]
    assert alice.event("reply", cmd="rooms")["rooms"] == [{"room": "lounge", "count": 1}]
    alice.send("login alice")
    alice.event("reply", cmd="login", name="alice")
    users = admin_json(broker.control, "users")["users"]
    assert users == [{"name": "alice", "rooms": []}, {"name": "bob", "rooms": ["lounge"]}]


# --- /users, /rooms, /ls, /list ----------------------------------------------------------


def test_users_rooms_ls_and_list_show_users_and_rooms_with_member_counts(broker, clients):
    alice, bob = logged_in(clients(), "alice"), clients()
    in_room(alice, "create lounge")
    in_room(alice, "create den")
    in_room(bob, "join lounge bob")
    carol = clients(json_mode=False)  # in the lobby, where the slash is optional
    carol.send("users", "rooms", "/ls", "list")
    users, rooms = "Users (2): alice, bob", "Rooms (2): den (1 member), lounge (2 members)"
    assert next_lines(carol, 5) == [users, rooms, rooms, users, rooms]
    alice.send("/rooms")  # in a room: the slash is needed
    assert alice.event("reply", cmd="rooms")["rooms"] == [{"room": "den", "count": 1},
                                                          {"room": "lounge", "count": 2}]
    alice.send("/users")
    assert alice.event("reply", cmd="users")["users"] == ["alice", "bob"]


# --- /create -----------------------------------------------------------------------------


def test_create_of_an_existing_room_is_an_error_never_a_hijack(broker, clients):
    alice = logged_in(clients(), "alice")
    in_room(alice, "create lounge")
    alice.send("first words")
    alice.event("msg", room="lounge", text="first words")
    mallory = clients()
    mallory.send("create lounge", "create lounge mallory", "login mal", "/create lounge")
    for _ in range(3):
        ev = mallory.event("error", cmd="create")
        assert ev["code"] == "room_exists" and "lounge" in ev["text"]
    [room] = admin_json(broker.control, "ls")["rooms"]
    assert (room["members"], room["creator"], room["seq"]) == (["alice"], "alice", 2)
    # Nothing of the refused requests stuck: no nickname taken, no event in the room.
    assert [u["name"] for u in admin_json(broker.control, "users")["users"]] == ["alice",
                                                                                "mal"]
    carol = clients()
    carol.send("join lounge carol")
    carol.event("reply", cmd="join")
    replay = [e for e in events_until(carol, "join", name="carol") if e.get("replay")]
    assert [(e["event"], e["seq"], e.get("name"), e.get("text")) for e in replay] == [
        ("join", 1, "alice", None), ("msg", 2, None, "first words"), ("join", 3, "carol", None)]


def test_a_refused_create_leaves_no_room_behind(broker, clients):
    logged_in(clients(), "alice")
    bob = clients(json_mode=False)
    bob.send("create lounge alice", "create lounge " + "n" * 21, "join lounge bob", "users")
    assert lines_until(bob, exact("Users (1): alice")) == [
        "Nickname alice is taken", "Bad username", "No such room: lounge", "Users (1): alice"]
    assert admin_json(broker.control, "ls")["rooms"] == []


def test_create_enters_the_new_room_and_the_broker_logs_it(broker, clients):
    alice = logged_in(clients(json_mode=False), "alice")
    alice.send("create lounge")
    alice.line(exact("Created and joined lounge as alice (members: alice)"))
    broker.log.wait_for(exact_suffix("New room lounge created"))
    assert admin_json(broker.control, "ls")["rooms"][0]["members"] == ["alice"]


# --- /join -------------------------------------------------------------------------------


def test_join_with_a_name_takes_it_replays_history_and_members_see_the_join(broker, clients):
    alice = logged_in(clients(), "alice")
    in_room(alice, "create lounge")
    alice.send("hello room")
    alice.event("msg", text="hello room")
    bob = clients(json_mode=False)
    bob.send("join lounge bob")
    assert lines_until(bob, exact("[lounge] bob joined")) == [
        "Joined lounge as bob (members: alice, bob)", "[lounge] alice joined",
        "[lounge] alice: hello room", "[lounge] bob joined"]
    ev = alice.event("join", room="lounge", name="bob")
    assert ev["seq"] == 3 and not ev.get("replay")


def test_joining_without_a_nickname_gives_unique_guest_names(broker, clients):
    g1, g2 = clients(), clients(json_mode=False)
    assert in_room(g1, "create lounge")["name"] == "Guest1"
    g2.send("join lounge")
    g2.line(exact("Joined lounge as Guest2 (members: Guest1, Guest2)"))
    g1.event("join", name="Guest2")
    assert admin_json(broker.control, "users")["users"] == [
        {"name": "Guest1", "rooms": ["lounge"]}, {"name": "Guest2", "rooms": ["lounge"]}]


def test_several_rooms_plain_text_goes_to_the_current_and_join_of_a_joined_room_switches(
        broker, clients):
    alice, bob, carol = logged_in(clients(), "alice"), clients(), clients()
    in_room(alice, "create r1")
    in_room(alice, "create r2")  # now current
    in_room(bob, "join r1 bob")
    in_room(carol, "join r2 carol")
    alice.send("to r2")
    assert alice.event("reply", cmd="say")["room"] == "r2"
    assert carol.event("msg", text="to r2")["room"] == "r2"
    start = len(alice.out.seen)
    alice.send("/join r1", "to r1")
    alice.event("reply", cmd="join", room="r1")
    assert alice.event("reply", cmd="say")["room"] == "r1"
    bob_saw = events_until(bob, "msg", text="to r1")
    assert bob_saw[-1]["room"] == "r1"
    # Making a joined room current is no new entry: no second join, no second replay.
    assert not [e for e in bob_saw if e["event"] == "join" and e.get("name") == "alice"]
    assert not [e for e in json_lines(alice.out.seen[start:]) if e.get("replay")]
    [alice_row] = [u for u in admin_json(broker.control, "users")["users"]
                   if u["name"] == "alice"]
    assert alice_row["rooms"] == ["r1", "r2"]
    assert [r["count"] for r in admin_json(broker.control, "ls")["rooms"]] == [2, 2]


# --- /leave, /who ------------------------------------------------------------------------


def test_leave_takes_the_user_out_and_the_others_see_it(broker, clients):
    alice, bob = logged_in(clients(), "alice"), clients(json_mode=False)
    in_room(alice, "create lounge")
    bob.send("join lounge bob")
    bob.line(exact("[lounge] bob joined"))
    bob.send("/leave", "who lounge", "/leave", "/leave lounge")
    out = lines_until(bob, exact("You are not in lounge"))
    # (bob's own leave may or may not be shown, depending on which socket wins the race)
    assert [line for line in out if line != "[lounge] bob left"] == [
        "Left lounge", "Members of lounge (1): alice", "You are not in a room: /join ROOM first",
        "You are not in lounge"]
    assert alice.event("leave", room="lounge", name="bob")["reason"] == "left"
    assert admin_json(broker.control, "ls")["rooms"][0]["members"] == ["alice"]


def test_leave_of_a_named_room_keeps_the_current_one(broker, clients):
    alice, bob = logged_in(clients(), "alice"), clients()
    in_room(alice, "create r1")
    in_room(bob, "join r1 bob")
    in_room(alice, "create r2")
    alice.send("/leave r1", "still in r2")
    alice.event("reply", cmd="leave", room="r1")
    assert alice.event("reply", cmd="say")["room"] == "r2"
    bob.event("leave", room="r1", name="alice")


def test_who_lists_members_of_the_current_or_a_named_room(broker, clients):
    alice, bob = logged_in(clients(), "alice"), clients()
    in_room(alice, "create r1")
    in_room(bob, "join r1 bob")
    in_room(bob, "create r2")
    bob.send("/who", "/who r1", "/who nope")
    assert bob.event("reply", cmd="who", room="r2")["members"] == ["bob"]
    assert bob.event("reply", cmd="who", room="r1")["members"] == ["alice", "bob"]
    assert bob.event("error", cmd="who")["code"] == "no_such_room"


# --- /whisper ----------------------------------------------------------------------------


def test_whisper_reaches_only_its_target_shown_as_whisper_sender_text(broker, clients):
    alice, bob, carol = logged_in(clients(), "alice"), clients(json_mode=False), clients()
    in_room(alice, "create lounge")
    bob.send("join lounge bob")
    bob.line("Joined lounge")
    in_room(carol, "join lounge carol")
    alice.send("/whisper bob psst")
    assert alice.event("reply", cmd="whisper")["to"] == "bob"
    bob.line(exact("(whisper) alice: psst"))
    alice.send("/whisper carol marker")
    ev = carol.event("whisper", text="marker")
    assert (ev["from"], ev["room"]) == ("alice", "lounge")
    # Carol's whispers come over one ordered connection: 'psst' would have come first.
    assert not [line for line in carol.out.seen if "psst" in line]


def test_whisper_to_someone_not_in_the_current_room_is_a_clear_error(broker, clients):
    alice, bob = logged_in(clients(), "alice"), clients()
    in_room(alice, "create r1")
    in_room(bob, "join r1 bob")
    in_room(alice, "create r2")  # bob is in r1, not in alice's current room
    alice.send("/whisper bob hi")
    ev = alice.event("error", cmd="whisper")
    assert ev["code"] == "not_in_room" and "bob" in ev["text"]
    alice.send("/whisper zed hi", "/whisper alice hi")
    assert alice.event("error", cmd="whisper")["code"] == "not_in_room"
    assert alice.event("error", cmd="whisper")["code"] == "self_message"
    alice.send("/join r1", "/whisper bob now you hear me")
    assert bob.event("whisper", text="now you hear me")["room"] == "r1"
    assert not [e for e in json_lines(bob.out.seen) if e.get("text") == "hi"]


def test_whisper_errors_in_line_mode(broker, clients):
    alice, bob = logged_in(clients(json_mode=False), "alice"), clients()
    alice.send("/whisper bob hi")  # in the lobby
    alice.line(exact("You are not in a room: /join ROOM first"))
    in_room(bob, "create r1 bob")
    alice.send("create r2")
    alice.line(exact("[r2] alice joined"))
    alice.send("/whisper bob hi", "/whisper bob", "/whisper " + "n" * 21 + " hi")
    assert lines_until(alice, exact("Bad username")) == [
        "bob is not in r2", "Usage: /whisper NAME TEXT - a private word to a member of this "
        "room", "Bad username"]


# --- /msg, sendto ------------------------------------------------------------------------


def test_msg_and_sendto_deliver_a_private_message_shown_as_sender_colon_text(broker, clients):
    alice, bob = logged_in(clients(json_mode=False), "alice"), logged_in(
        clients(json_mode=False), "bob")
    alice.send("create lounge")  # wherever they are: alice in a room, bob in the lobby
    alice.line("Created and joined lounge")
    alice.send("/msg bob hi there")
    bob.line(exact("alice: hi there"))
    alice.line(exact("(to bob) hi there"))
    bob.send("sendto alice hello back")  # the lobby alias, without a slash
    alice.line(exact("bob: hello back"))
    bob.send("/sendto alice and again")
    alice.line(exact("bob: and again"))


def test_msg_to_one_or_several_names_in_json_mode(broker, clients):
    alice = logged_in(clients(), "alice")
    bob, carol = logged_in(clients(), "bob"), logged_in(clients(json_mode=False), "carol")
    alice.send("/msg bob hi")
    ev = bob.event("dm")
    assert (ev["from"], ev["to"], ev["text"]) == ("alice", ["bob"], "hi")
    assert alice.event("reply", cmd="msg")["to"] == ["bob"]
    alice.send("/msg bob,carol hey both")
    assert alice.event("reply", cmd="msg")["to"] == ["bob", "carol"]
    ev = bob.event("dm", text="hey both")
    assert (ev["from"], ev["to"]) == ("alice", ["bob", "carol"])
    line = carol.line("hey both")
    assert line.endswith("alice: hey both")  # a group marker in front is allowed


def test_msg_of_exactly_65535_characters_is_delivered_intact(broker, clients):
    alice, bob = logged_in(clients(), "alice"), logged_in(clients(), "bob")
    text = "".join(chr(ord("a") + i % 26) for i in range(65535))
    alice.send("/msg bob " + text)
    alice.event("reply", cmd="msg")
    assert bob.event("dm")["text"] == text


def test_msg_errors_print_exact_bad_username_and_bad_message(broker, clients):
    alice = logged_in(clients(json_mode=False), "alice")
    logged_in(clients(), "bob")
    alice.send("/msg", "/msg bob", "sendto bob", "/msg " + "n" * 21 + " hi",
               "/msg bob," + "n" * 21 + " hi", "/msg bob " + "x" * 65536,
               "/msg zed hi", "/msg alice hi", "/users")
    assert lines_until(alice, exact("Users (2): alice, bob")) == [
        "Bad username", "Bad username", "Bad username", "Bad username", "Bad username",
        "Bad message", "No such user: zed", "You cannot message yourself",
        "Users (2): alice, bob"]
    # In JSON mode: the codes.
    carol = logged_in(clients(), "carol")
    carol.send("/msg bob", "/msg bob " + "x" * 65536, "/msg zed hi", "/msg carol hi")
    assert [carol.event("error")["code"] for _ in range(4)] == [
        "bad_username", "bad_message", "no_such_user", "self_message"]


def test_text_over_65535_characters_is_bad_message_for_every_way_of_saying_it(
        broker, clients):
    alice = logged_in(clients(json_mode=False), "alice")
    alice.send("create lounge")
    alice.line(exact("[lounge] alice joined"))
    big = "x" * 65536
    alice.send(big, "/me " + big, "/whisper bob " + big, "/broadcast " + big, "/who")
    assert lines_until(alice, exact("Members of lounge (1): alice")) == [
        "Bad message"] * 4 + ["Members of lounge (1): alice"]


# --- /broadcast --------------------------------------------------------------------------


def test_broadcast_reaches_every_logged_in_user(broker, clients):
    alice = logged_in(clients(), "alice")
    bob = logged_in(clients(json_mode=False), "bob")  # in the lobby
    carol = logged_in(clients(), "carol")
    in_room(carol, "create lounge")  # in a room
    alice.send("/broadcast hear ye")
    assert alice.event("reply", cmd="broadcast")["count"] == 2
    bob.line(exact("(broadcast) alice: hear ye"))
    ev = carol.event("broadcast")
    assert (ev["from"], ev["text"]) == ("alice", "hear ye")
    anon = clients()
    anon.send("broadcast hi")
    assert anon.event("error", cmd="broadcast")["code"] == "not_logged_in"


# --- /history ----------------------------------------------------------------------------


def test_history_shows_the_newest_n_messages_oldest_first(broker, clients):
    alice = logged_in(clients(), "alice")
    in_room(alice, "create lounge")  # seq 1: alice joined
    alice.send(*[f"m{i}" for i in range(1, 61)])  # seq 2..61
    alice.event("reply", cmd="say", seq=61)
    bob = clients()
    bob.send("join lounge bob")  # seq 62; replays seq 13..62
    bob.event("reply", cmd="join")
    bob.send("/history 5", "/history 200")
    page = bob.event("history", room="lounge")["events"]
    assert [(e["seq"], e.get("text")) for e in page] == [
        (s, f"m{s - 1}") for s in range(58, 62)] + [(62, None)]  # ...and bob's own join
    page = bob.event("history", room="lounge")["events"]
    assert [e["seq"] for e in page] == list(range(1, 63))  # the whole room, in order
    assert page[0]["kind"] == "join" and page[0]["name"] == "alice"


def test_history_in_line_mode_prints_older_messages_above_newer_ones(broker, clients):
    """Each /history is one block in time order ending now: a terminal scrolls up, so
    older pages printed after newer ones would read backwards."""
    alice = logged_in(clients(), "alice")
    in_room(alice, "create lounge")
    alice.send(*[f"m{i}" for i in range(1, 56)])  # seq 2..56
    alice.event("reply", cmd="say", seq=56)
    carol = clients(json_mode=False)
    carol.send("join lounge carol")  # seq 57; replays seq 8..57
    carol.line(exact("[lounge] carol joined"))
    carol.send("/history 3")
    assert lines_until(carol, exact("--- end of older messages ---")) == [
        "--- older messages of lounge ---", "[lounge] alice: m54", "[lounge] alice: m55",
        "[lounge] carol joined", "--- end of older messages ---"]
    carol.send("/history 200")
    out = lines_until(carol, exact("--- end of older messages ---"))
    assert out[1:-1] == ["[lounge] alice joined"] + [
        f"[lounge] alice: m{i}" for i in range(1, 56)] + ["[lounge] carol joined"]


# --- /help, /quit, wrong arguments -------------------------------------------------------


def test_help_and_commands_list_every_command(broker, clients):
    c = clients()
    c.send("/help", "users")
    help_lines = [e["text"] for e in events_until(c, "reply", cmd="users")
                  if e["event"] == "info"]
    c.send("commands", "users")
    alias_lines = [e["text"] for e in events_until(c, "reply", cmd="users")
                   if e["event"] == "info"]
    assert help_lines == alias_lines
    for name in COMMAND_NAMES:
        assert any(f"/{name}" in line for line in help_lines), name
    lined = clients(json_mode=False)
    lined.send("/help msg")
    line = lined.line("/msg")
    assert line.startswith("/msg NAME[,NAME...] TEXT") and "/sendto" in line


def test_quit_and_exit_end_the_client_with_status_0_and_others_see_it_leave(
        broker, clients):
    alice, bob = logged_in(clients(), "alice"), clients()
    in_room(alice, "create lounge")
    in_room(bob, "join lounge bob")
    bob.send("/quit")  # stdin stays open: the command alone ends the client
    assert bob.wait() == 0
    assert alice.event("leave", name="bob")["reason"] == "quit"
    others = [clients(json_mode=False) for _ in range(3)]
    for c, word in zip(others, ("quit", "exit", "/exit"), strict=True):
        c.send(word)
    assert [c.wait() for c in others] == [0, 0, 0]
    assert admin_json(broker.control, "stats")["clients"] == 1


def test_a_wrong_command_names_itself_and_shows_its_usage(broker, clients):
    c = clients(json_mode=False)
    c.send("/users extra", "/join", "/frob", "/logout now", "/leave a b", "/quit now",
           "users")
    assert lines_until(c, exact("No users logged in")) == [
        "Usage: /users - who is logged in",
        "Usage: /join ROOM [NAME] [key=KEY] - enter a room (or make it current); key=KEY "
        "if it needs one",
        "Unknown command: /frob (/help lists them)",
        "Usage: /logout - give up your nickname and leave every room",
        "Usage: /leave [ROOM] - leave the current or named room",
        "Usage: /quit - leave the chat",
        "No users logged in"]
    c.send("create lounge")
    c.line(exact("[lounge] Guest1 joined"))
    c.send("/history abc", "/who a b")
    assert next_lines(c, 2) == ["Usage: /history [N] - the last N messages of this room, oldest "
                                "first", "Usage: /who [ROOM] - members of the current or named "
                                "room"]
    # In JSON mode: the codes.
    j = clients()
    j.send("/frob", "/users extra")
    assert j.event("error")["code"] == "unknown_command"
    assert j.event("error")["code"] == "invalid_command"


def test_the_assignment_s_exact_texts_stay(broker, clients):
    """Its client prints exactly these for a bare line that is no command and for its own
    commands used wrongly."""
    c = clients(json_mode=False)
    c.send("hello there", "logout now", "login two words", "sendto bob", "frob", "users")
    assert lines_until(c, exact("No users logged in")) == [
        "Invalid command", "Invalid command", "Bad username", "Bad username",
        "Invalid command", "No users logged in"]


# --- end of input ------------------------------------------------------------------------


@pytest.mark.parametrize("json_mode", [True, False], ids=["json", "lines"])
def test_client_exits_0_at_end_of_input_after_its_requests_are_answered(
        broker, clients, json_mode):
    c = clients(json_mode=json_mode)
    c.send("login eve", "create den", "said before the end", "/who")
    c.close_input()
    assert c.wait() == 0
    if json_mode:
        assert c.event("reply", cmd="who")["members"] == ["eve"]
    else:
        c.line(exact("Members of den (1): eve"))
    # The message was really sent: a later joiner finds it in the room's history.
    joiner = clients()
    joiner.send("join den")
    joiner.event("msg", replay=True, text="said before the end")
    joiner.event("leave", replay=True, name="eve")


# --- live delivery -----------------------------------------------------------------------


def test_plain_text_in_a_room_reaches_every_member_live(broker, clients):
    """Room lines go out on the publisher at once; none waits for a periodic catch-up
    (which would take seconds)."""
    alice, bob, carol = clients(), clients(), clients(json_mode=False)
    in_room(alice, "create lounge alice")
    in_room(bob, "join lounge bob")
    carol.send("join lounge carol")
    carol.line(exact("[lounge] carol joined"))
    for i in range(3):
        bob.send(f"live {i}")
        assert alice.event("msg", text=f"live {i}", timeout=1.0)["from"] == "bob"
        carol.line(exact(f"[lounge] bob: live {i}"), timeout=1.0)
