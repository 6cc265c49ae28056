"""The script mode against a real broker: nothing piped in is lost, merged or reordered,
and the commands people from the programs zchat replaces reach for work as they expect.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .harness import ROOT, Client, _env, admin, admin_json, json_lines


def exact(text: str):
    return lambda line: line == text


def joined(client: Client, command: str) -> dict:
    client.send(command)
    reply = client.event("reply", cmd=command.lstrip("/").split()[0])
    client.event("join", replay=True, room=reply["room"], seq=reply["seq"])
    return reply


def lines_until(client: Client, match) -> list[str]:
    start = len(client.out.seen)
    client.line(match)
    return [ln for ln in client.out.seen[start:] if not ln.startswith("Connected to ")]


# --- pacing: the client keeps within the broker's limits by itself ---------------------------


def test_300_lines_piped_in_are_all_delivered_in_order_and_none_refused(broker, clients):
    bob = clients("--name", "bob")
    joined(bob, "/create hall")
    script = clients("--name", "poet", json_mode=False)
    script.send("join hall")
    script.line(exact("[hall] poet joined"))
    lines = [f"line {i:03}" for i in range(300)]
    script.send(*lines)
    script.close_input()
    got = [bob.event("msg", timeout=30, **{"from": "poet"})["text"] for _ in lines]
    assert got == lines  # all of them, once, in order
    assert script.wait(10) == 0
    assert not [ln for ln in script.out.seen if "Slow down" in ln]
    # The person watching was told that lines were waiting their turn.
    assert "queued lines…" in script.err.wait_for("queued lines…")


@pytest.mark.broker_args("--rate", "5", "--burst", "10")
def test_requests_are_paced_to_the_rate_the_broker_announces(broker, clients):
    bob = clients("--name", "bob")
    joined(bob, "/create hall")
    fast = clients("--name", "fast")
    joined(fast, "/join hall")  # hello, login, join: three tokens of ten spent
    started = time.monotonic()
    fast.send(*[f"m{i}" for i in range(30)])
    got = [bob.event("msg", timeout=20, **{"from": "fast"})["text"] for _ in range(30)]
    elapsed = time.monotonic() - started
    assert got == [f"m{i}" for i in range(30)]
    # Past the burst, no faster than the announced 5 a second (less a margin): about 25
    # lines waited for tokens, so at least 4 s; no line was refused on the way.
    assert elapsed >= 4.0, elapsed
    answers = [fast.event(None, timeout=5, cmd="say")["event"] for _ in range(30)]
    assert answers == ["reply"] * 30


@pytest.mark.broker_args("--delivery-rate", "40000", "--delivery-burst", "40000")
def test_joining_and_leaving_a_crowded_room_is_paced_never_refused(broker, clients, zctx):
    """A leave is charged per member told of it (each gets a rekey): the client counts
    that too, so leaving and rejoining a crowded room waits instead of being refused."""
    crowd = [clients("--name", f"m{i}") for i in range(20)]
    for member in crowd:  # 20 processes starting at once: slow on a busy machine
        member.event("reply", cmd="login", timeout=30)
    joined(crowd[0], "/create hall")
    for member in crowd[1:]:
        joined(member, "/join hall")
    cycler = clients("--name", "cycler")
    cycler.event("reply", cmd="login")
    cycler.send(*["/join hall", "/leave hall"] * 3)
    answers = [cycler.event(None, timeout=20, cmd=cmd) for cmd in ["join", "leave"] * 3]
    assert [a["event"] for a in answers] == ["reply"] * 6, answers
    assert "cycler" not in admin_json(broker.control, "ls")["rooms"][0]["members"]


# --- the chatroom assignment: Success / Failure, exact texts ---------------------------------


def test_the_assignment_s_commands_print_success_or_failure_first(broker, clients):
    clients("--name", "bob").event("reply", cmd="login")
    c = clients(json_mode=False)
    c.send("login bob", "login alice", "sendto bob hi there", "sendto zed hi", "logout",
           "logout")
    assert lines_until(c, exact("Log in first: /login NAME")) == [
        "Failure", "Nickname bob is taken",
        "Success", "Logged in as alice",
        "Success", "(to bob) hi there",
        "Failure", "No such user: zed",
        "Success", "Logged out (alice)",
        "Failure", "Log in first: /login NAME"]
    c.send("/login alice", "/msg bob slash forms are ours", "users")
    assert lines_until(c, exact("Users (2): alice, bob")) == [
        "Logged in as alice", "(to bob) slash forms are ours", "Users (2): alice, bob"]


def test_recipients_may_be_separated_by_comma_and_space(broker, clients):
    bob, carol = clients("--name", "bob"), clients("--name", "carol")
    bob.event("reply", cmd="login")
    carol.event("reply", cmd="login")
    alice = clients("--name", "alice")
    alice.send("/msg bob, carol hello both")
    assert alice.event("reply", cmd="msg")["to"] == ["bob", "carol"]
    for peer in (bob, carol):
        assert peer.event("dm")["text"] == "hello both"


# --- the lobby program: its bare words work in a room; a name asked on arrival -------------


def test_the_lobby_words_are_commands_in_a_room_and_a_space_says_them(broker, clients):
    bob = clients("--name", "bob")
    joined(bob, "/create lounge")
    dave = clients("--name", "dave", json_mode=False)
    dave.send("join lounge")
    dave.line(exact("[lounge] dave joined"))
    dave.send("list", " leave", "/say quit", "commands")
    assert dave.line(lambda ln: ln.startswith("Users (")) == "Users (2): bob, dave"
    said = [bob.event("msg", **{"from": "dave"})["text"] for _ in range(2)]
    assert said == ["leave", "quit"]
    dave.line(lambda ln: ln.startswith("Commands ("))
    dave.send("create den")  # creates and switches
    dave.line(exact("Created and joined den as dave (members: dave)"))
    dave.send("join lounge", "back in the lounge")  # joins (here: switches) and says
    assert bob.event("msg", **{"from": "dave"})["text"] == "back in the lounge"
    dave.send("leave")  # leaves the current room, the lounge
    assert bob.event("leave", name="dave")["reason"] == "left"
    dave.send("quit")
    assert dave.wait() == 0
    assert not [e for e in json_lines(bob.out.seen)
                if e.get("event") == "msg" and e.get("text") in ("list", "commands")]


def test_without_a_name_the_first_word_is_the_name_then_the_commands_are_shown(broker,
                                                                                 clients):
    c = clients(json_mode=False)
    greeting = c.line(lambda ln: ln.startswith("Connected to "))
    assert "Your name?" in greeting
    c.send("dave", "users")
    out = lines_until(c, exact("Users (1): dave"))
    assert out[0] == "Logged in as dave"
    assert out[1].startswith("Commands (") and any("/join ROOM" in ln for ln in out)
    # A second bare word is not a name any more: the lobby refuses it as the assignment's
    # client would.
    c.send("carol")
    c.line(exact("Invalid command"))


def test_a_first_line_that_is_a_command_stays_a_command(broker, clients):
    c = clients()
    c.send("list", "alice")  # "list" is a command; "alice" comes too late to be a name
    assert c.event("reply", cmd="users")["users"] == []
    assert c.event("error")["text"] == "Invalid command"
    assert admin_json(broker.control, "users")["users"] == []


# --- nick, away, window, query -----------------------------------------------------------------


def test_nick_renames_inside_a_room(broker, clients):
    bob = clients("--name", "bob")
    joined(bob, "/create lounge")
    alice = clients("--name", "alice", json_mode=False)
    alice.send("join lounge")
    alice.line(exact("[lounge] alice joined"))
    alice.send("/nick alicia")
    # The reply and the room's event come over two sockets: in either order.
    wanted = {"Logged in as alicia", "[lounge] alice is now known as alicia"}
    while wanted:
        wanted.discard(alice.line(lambda ln: ln in wanted))
    assert bob.event("nick", room="lounge")["old"] == "alice"
    alice.send("renamed", "/who")
    assert bob.event("msg", text="renamed")["from"] == "alicia"
    alice.line(exact("Members of lounge (2): alicia, bob"))


def test_away_is_sent_and_cleared(broker, clients):
    alice = clients("--name", "alice", json_mode=False)
    alice.line(exact("Logged in as alice"))
    alice.send("/away lunch", "/away")
    assert lines_until(alice, exact("You are back")) == ["You are marked away: lunch",
                                                         "You are back"]


def test_window_switches_the_current_room_by_number(broker, clients):
    bob = clients("--name", "bob")
    joined(bob, "/create r1")
    joined(bob, "/create r2")
    alice = clients("--name", "alice", json_mode=False)
    alice.send("join r1")
    alice.line(exact("[r1] alice joined"))
    alice.send("join r2")
    alice.line(exact("[r2] alice joined"))
    alice.send("/window 1", "to the first", "/window 2", "to the second", "/window 3")
    # (Room lines come over the subscriber, in their own time: only the local answers
    # have an order to keep here; where each line went is what bob sees, below.)
    seen = lines_until(alice, lambda ln: ln.startswith("No window 3"))
    assert [ln for ln in seen if not ln.startswith("[")] == [
        "Now in r1 (window 1)", "Now in r2 (window 2)",
        "No window 3: you are in 2 rooms (r1, r2)"]
    assert [(e["room"], e["text"]) for e in
            (bob.event("msg", **{"from": "alice"}) for _ in range(2))] == [
        ("r1", "to the first"), ("r2", "to the second")]


def test_query_sends_plain_text_privately_until_closed(broker, clients):
    bob = clients("--name", "bob")
    joined(bob, "/create lounge")
    alice = clients("--name", "alice")
    joined(alice, "/join lounge")
    alice.send("/query bob", "just between us", "/query", "to everyone")
    assert bob.event("dm")["text"] == "just between us"
    assert bob.event("msg", **{"from": "alice"})["text"] == "to everyone"
    alice.send("/q bob", "again privately", "/join lounge", "public again")
    assert bob.event("dm")["text"] == "again privately"
    assert bob.event("msg", **{"from": "alice"})["text"] == "public again"


# --- addresses: HOST:PORT is fine, anything else one clear line --------------------------------


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(),
                          input="", capture_output=True, text=True, timeout=20)


def test_server_may_be_given_as_host_port(broker, clients):
    c = clients(server=broker.router.removeprefix("tcp://"))
    c.send("login alice")
    assert c.event("reply", cmd="login")["name"] == "alice"
    done = admin(broker.control.removeprefix("tcp://"), "users")
    assert done.returncode == 0 and done.stdout.strip().startswith("alice"), done


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "127.0.0.1:port",
                                     "127.0.0.1:99999", "udp://127.0.0.1:5555", ":5555"])
def test_a_bad_address_is_refused_with_one_clear_line(address):
    client = _run("client", "--insecure", "--server", address)
    tool = _run("admin", "--insecure", "--control", address, "ls")
    for done in (client, tool):
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        [line] = done.stderr.strip().splitlines()
        assert "HOST:PORT" in line and repr(address) in line, line
