"""Edges, without sockets: the chat core's rules for clients behind edges, and an edge's
own decisions for its clients (edge/clients.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.chat import Chat
from broker.store import SqliteStore
from edge.clients import Answer, Clients, Relay
from edge.link import Link
from schema import edge as E
from schema import pack, request, unpack
from schema import protocol as P

from .test_chat import PUB, UNLIMITED, Clock, call, connect, ok, published, tokens

A, B = b"peer-a", b"peer-b"  # on the core itself
E1, E2 = b"edge-1", b"edge-2"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chat(clock) -> Iterator[Chat]:
    store = SqliteStore(":memory:")
    yield Chat(store, **UNLIMITED, pub_address=PUB, clock=clock, token=tokens())
    store.close()


# --- the chat core: peers behind edges ------------------------------------------------------


def test_a_room_counts_its_members_per_edge_as_they_come_and_go(chat):
    connect(chat, (E1, b"a"), "alice")
    connect(chat, (E1, b"b"), "bob")
    connect(chat, (E2, b"c"), "carol")
    connect(chat, A, "dave")  # on the core itself: no edge
    ok(chat, (E1, b"a"), "create", room="den")
    for peer in ((E1, b"b"), (E2, b"c"), A):
        ok(chat, peer, "join", room="den")
    room = chat.rooms["den"]
    assert room.edges == {E1: 2, E2: 1}
    ok(chat, (E2, b"c"), "leave", room="den")
    assert room.edges == {E1: 2}
    ok(chat, (E1, b"a"), "logout")
    assert room.edges == {E1: 1}
    # A room event carries its room, so the loop can send it to these edges once each.
    _, out = call(chat, (E1, b"b"), "say", room="den", text="hi")
    [event] = published(out)
    assert event.room is room and event.body["text"] == "hi"


def test_topics_made_live_and_dead_are_kept_for_the_edges_in_order(chat):
    chat.topic_changes.clear()
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    ok(chat, A, "create", room="den")
    first = chat.rooms["den"].topic
    ok(chat, B, "join", room="den")
    ok(chat, B, "leave", room="den")  # a leave rotates the topic
    second = chat.rooms["den"].topic
    assert chat.topic_changes == [(first, True), (first, False), (second, True)]


def test_sessions_behind_an_edge_are_the_edges_to_time_out(chat, clock):
    connect(chat, (E1, b"a"), "alice")
    connect(chat, A, "bob")
    clock.advance(P.PEER_TIMEOUT + 1)
    chat.expire()
    assert set(chat.sessions) == {(E1, b"a")}  # bob, on the core, timed out


def test_an_edge_lost_ends_the_sessions_it_held_and_tells_their_rooms(chat):
    connect(chat, (E1, b"a"), "alice")
    connect(chat, (E2, b"b"), "bob")
    ok(chat, (E2, b"b"), "create", room="den")
    ok(chat, (E1, b"a"), "join", room="den")
    out = chat.edge_lost(E1, "its edge was lost")
    assert set(chat.sessions) == {(E2, b"b")}
    [leave] = [p.body for p in published(out) if p.body["ev"] == "leave"]
    assert (leave["name"], leave["reason"]) == ("alice", "its edge was lost")
    assert "alice" not in chat.users and chat.rooms["den"].edges == {E2: 1}


def test_the_same_client_coming_back_through_another_edge_takes_its_name_back(chat):
    hello = {"version": P.PROTOCOL_VERSION, "client": "cafe"}
    ok(chat, (E1, b"a"), "hello", **hello)
    ok(chat, (E1, b"a"), "login", name="alice")
    ok(chat, (E1, b"a"), "create", room="den")
    # Its edge is not known to be lost yet; the client moved on, with the same client id.
    ok(chat, (E2, b"a2"), "hello", **hello)
    assert ok(chat, (E2, b"a2"), "login", name="alice")["name"] == "alice"
    assert set(chat.sessions) == {(E2, b"a2")}
    # Another client (another id) may not take it so.
    ok(chat, (E1, b"x"), "hello", version=P.PROTOCOL_VERSION, client="beef")
    reply, _ = call(chat, (E1, b"x"), "login", name="alice")
    assert reply["code"] == "name_taken"


def test_a_peer_behind_an_edge_is_never_a_routing_id_on_the_core(chat):
    """A tuple cannot be presented on the ROUTER: no client can pose as one behind an
    edge, and the core's route check (the edge's job for them) never sees one."""
    checked = []
    chat.route_check = lambda peer, key: checked.append(peer) or True
    ok(chat, (E1, b"z-route"), "hello", version=P.PROTOCOL_VERSION)
    assert checked == []


# --- the edge's own decisions ----------------------------------------------------------------


def frame(cmd: str, rid: int = 1, **fields: object) -> bytes:
    return pack(request(rid, cmd, **fields))


def opened(clients: Clients, client: bytes, now: float = 0.0, rid: int = 1) -> None:
    """The client said hello through the edge and the core answered it ok."""
    assert clients.request(client, frame("hello", rid, version=P.PROTOCOL_VERSION), now=now,
                           core_alive=True) == Relay(hello=True)
    clients.reply(client, pack([{"re": rid, "ok": True, "inc": "i", "pub": "tcp://core:1"}]),
                  "tcp://edge:1")


def ping(clients: Clients, client: bytes, now: float = 0.0) -> dict | Relay | None:
    """What a ping gets at the edge: its answer, Relay (to the core), or None (silence)."""
    verdict = clients.request(client, frame("ping", 0), now=now, core_alive=True)
    return unpack(verdict.frame)[0] if isinstance(verdict, Answer) else verdict


def test_pings_are_answered_at_the_edge_only_while_the_core_is_heard():
    clients = Clients()
    opened(clients, b"c")
    answer = clients.request(b"c", frame("ping", 0), now=0.0, core_alive=True)
    assert isinstance(answer, Answer) and unpack(answer.frame) == [{"re": 0, "ok": True}]
    assert clients.request(b"c", frame("ping", 0), now=1.0, core_alive=False) is None


def test_a_ping_is_answered_as_the_core_would_whether_the_client_has_a_session():
    """Before, the edge answered every ping ok: a client whose session the core had ended
    (a new core, this edge lost) never heard of it, and never resumed."""
    clients = Clients()
    assert ping(clients, b"c")["code"] == "no_session"  # no hello yet
    clients.request(b"c", frame("hello", 5, version=P.PROTOCOL_VERSION), now=0.0,
                    core_alive=True)
    assert ping(clients, b"c") == Relay(hello=False)  # the core answers it, after the hello
    clients.reply(b"c", pack([{"re": 5, "ok": True, "inc": "i", "pub": "p"}]), "e")
    assert ping(clients, b"c") == {"re": 0, "ok": True}
    clients.sessions_ended()  # a new core, or the core lost this edge
    assert ping(clients, b"c")["code"] == "no_session"
    opened(clients, b"c", rid=6)
    clients.reply(b"c", pack([{"re": 9, "ok": False, "code": "no_session",
                               "error": "Say hello first"}]), "e")  # the core says so
    assert ping(clients, b"c")["code"] == "no_session"
    opened(clients, b"c", rid=7)
    assert clients.request(b"c", frame("bye", 8), now=0.0, core_alive=True) == Relay(
        hello=False)
    assert ping(clients, b"c")["code"] == "no_session"
    # A hello the core never answers holds pings back only for a timeout.
    clients.request(b"c", frame("hello", 10, version=P.PROTOCOL_VERSION), now=1.0,
                    core_alive=True)
    assert ping(clients, b"c", now=1.5) == Relay(hello=False)
    assert ping(clients, b"c", now=1.0 + clients.timeout)["code"] == "no_session"


def test_a_request_that_cannot_reach_the_core_ends_the_session_it_had():
    clients = Clients()
    opened(clients, b"c")
    assert not clients.unrelayed(b"stranger")  # nothing to end
    assert clients.unrelayed(b"c")  # the core is told, and the client at its next ping
    assert ping(clients, b"c")["code"] == "no_session"
    assert not clients.unrelayed(b"c")  # once


def test_every_hello_in_flight_is_answered_with_the_edges_publisher():
    """Before, only the last hello sent was followed: the reply to an earlier one still
    on its way went out naming the core's publisher."""
    clients = Clients()
    for rid in (1, 2):
        clients.request(b"c", frame("hello", rid, version=P.PROTOCOL_VERSION), now=0.0,
                        core_alive=True)
    for rid in (1, 2):
        told = unpack(clients.reply(b"c", pack([{"re": rid, "ok": True, "inc": "i",
                                                 "pub": "tcp://core:5556"}]),
                                    "tcp://edge:6556"))
        assert told[0]["pub"] == "tcp://edge:6556", rid


def test_what_is_no_request_is_refused_at_the_edge_and_charged():
    clients = Clients(rate=1.0, burst=2.0)
    refusals = [clients.request(b"c", b"\xc1 not msgpack", now=0.0, core_alive=True)
                for _ in range(3)]
    codes = [unpack(r.frame)[0]["code"] for r in refusals if isinstance(r, Answer)]
    assert codes == ["malformed", "malformed", "rate_limited"]


def test_requests_are_relayed_within_the_rate_and_refused_past_it():
    clients = Clients(rate=10.0, burst=3.0)
    verdicts = [clients.request(b"c", frame("say", i, room="r", text="x"), now=0.0,
                                core_alive=True) for i in range(4)]
    assert verdicts[:3] == [Relay(hello=False)] * 3
    assert isinstance(verdicts[3], Answer)
    assert unpack(verdicts[3].frame)[0]["code"] == "rate_limited"
    assert clients.request(b"c", frame("say", 9, room="r", text="x"), now=0.1,
                           core_alive=True) == Relay(hello=False)  # a token came back


def test_the_hello_reply_names_the_edges_publisher_and_brings_the_cores_limits():
    clients = Clients()
    assert clients.request(b"c", frame("hello", 7, version=P.PROTOCOL_VERSION), now=0.0,
                           core_alive=True) == Relay(hello=True)
    from_core = pack([{"re": 7, "ok": True, "pub": "tcp://core:5556",
                       "limits": {"rate": 0, "burst": 100}}, {"ev": "other"}])
    told = unpack(clients.reply(b"c", from_core, "tcp://edge:6556"))
    assert told[0]["pub"] == "tcp://edge:6556" and told[1] == {"ev": "other"}
    assert (clients.rate, clients.burst) == (0.0, 100.0)
    # Once: a later frame passes untouched, byte for byte.
    later = pack([{"re": 8, "ok": True, "pub": "tcp://core:5556"}])
    assert clients.reply(b"c", later, "tcp://edge:6556") == later


def test_silent_clients_are_forgotten_and_named_once():
    clients = Clients(timeout=4.0)
    clients.request(b"quiet", frame("ping", 0), now=0.0, core_alive=True)
    clients.request(b"talker", frame("ping", 0), now=0.0, core_alive=True)
    clients.request(b"talker", frame("ping", 0), now=3.0, core_alive=True)
    assert clients.silent(now=5.0) == [b"quiet"]
    assert clients.silent(now=5.5) == []
    clients.pardon(10.0)  # the edge itself was away
    assert clients.silent(now=12.0) == []


def test_junk_is_no_sign_of_life_only_requests_are():
    # As on the core, where a refused frame keeps no session: a client sending nothing
    # but junk (or multi-frame messages) is timed out like a silent one.
    clients = Clients(timeout=4.0, rate=0)
    clients.request(b"junk", frame("ping", 0), now=0.0, core_alive=True)
    clients.request(b"live", frame("ping", 0), now=0.0, core_alive=True)
    for t in (1.0, 2.0, 3.0, 4.5):
        assert isinstance(clients.request(b"junk", b"\xc1", now=t, core_alive=True), Answer)
        clients.refuse(b"junk", P.ProtocolError("malformed"), now=t)
    clients.request(b"live", frame("say", 1, room="r", text="x"), now=3.0, core_alive=True)
    assert clients.silent(now=4.6) == [b"junk"]


@pytest.mark.parametrize("cmd", ["hello", "say"])
def test_a_garbled_request_never_reaches_the_core(cmd):
    clients = Clients()
    verdict = clients.request(b"c", frame(cmd)[:-1] + b"\xc1", now=0.0, core_alive=True)
    assert isinstance(verdict, Answer)


def test_the_common_ping_is_answered_by_its_bytes_exactly_as_when_decoded():
    """Idle clients' pings are most of an edge's traffic, all the same bytes: answered
    without decoding, the answer must be the one the decoded path gives."""
    import msgpack

    common = pack({"id": 0, "cmd": "ping"})
    other = msgpack.packb({"cmd": "ping", "id": 0})  # the same request, keys swapped
    assert common != other
    for has_session in (False, True):
        answers = []
        for body in (common, other):
            clients = Clients()
            clients.request(b"c", frame("hello", 1, version=P.PROTOCOL_VERSION), now=0.0,
                            core_alive=True)
            if has_session:
                clients.reply(b"c", pack([{"re": 1, "ok": True, "pub": "x"}]), "y")
            else:
                clients.hello_refused(b"c", 1)
            answer = clients.request(b"c", body, now=1.0, core_alive=True)
            assert isinstance(answer, Answer)
            answers.append(unpack(answer.frame))
        assert answers[0] == answers[1] and answers[0][0]["ok"] is has_session


def test_the_core_takes_a_bounded_number_of_edge_requests_a_turn(chat):
    """All edges together hand the core at most REQUESTS_PER_TURN requests a turn, so a
    burst (edges' backlogs after a hiccup of the core's) is spread over turns; and a link
    message of more requests than an edge ever sends is dropped."""
    import zmq

    from broker.edges import Edges
    from schema import edge as E_

    ctx = zmq.Context()
    try:
        core = ctx.socket(zmq.ROUTER)
        core.bind("inproc://edges-turn")
        edge = ctx.socket(zmq.DEALER)
        edge.connect("inproc://edges-turn")
        edges = Edges(core, chat, secure=False)
        say = pack(request(1, "say", room="r", text="x"))
        per_message = E_.REQUESTS_PER_MESSAGE
        for m in range(E_.REQUESTS_PER_TURN // per_message + 2):
            frames = [E_.REQUEST]
            for k in range(per_message):
                frames += [b"c%d-%d" % (m, k), b"", b"", say]
            edge.send_multipart(frames)
        edge.send_multipart([E_.REQUEST] + [b"x", b"", b"", say] * (per_message + 1))
        assert core.poll(5000)
        time_to_take = [len(edges.drain()) for _ in range(3)]
        # (sessionless: each request is answered no_session, one delivery each)
        assert time_to_take == [E_.REQUESTS_PER_TURN, 2 * per_message, 0]
    finally:
        ctx.destroy(linger=0)


# --- the link: what the core has read of what the edge relayed ------------------------------


def test_the_edge_relays_until_link_bytes_are_unread_and_again_once_a_hello_is_answered():
    link = Link()
    link.sent(E.LINK_BYTES - 10)
    assert link.relaying(9) and not link.relaying(10)
    mark = link.relayed
    link.hello_sent()
    link.sent(5)  # after the hello: not read as far as its answer can tell
    link.alive(str(mark).encode())
    assert link.read == mark
    assert link.relaying(E.LINK_BYTES - 6) and not link.relaying(E.LINK_BYTES - 5)


def test_an_answer_to_an_older_hello_or_a_garbled_mark_moves_nothing_back_or_past():
    link = Link()
    link.sent(1000)
    first = link.relayed
    link.hello_sent()
    link.sent(1000)
    second = link.relayed
    link.hello_sent()
    link.alive(str(second).encode())
    link.alive(str(first).encode())  # a late answer to the first hello
    assert link.read == second
    link.alive(str(10 * second).encode())  # more than was ever relayed (from before a drop)
    assert link.read == link.relayed == 2000
    link.sent(500)
    link.alive(b"-5")  # garbled: as with no mark, up to the last hello
    assert link.read == 2000


def test_a_core_that_echoes_no_mark_has_read_up_to_the_last_hello():
    link = Link()
    link.sent(700)
    link.hello_sent()
    link.sent(300)
    link.alive(None)
    assert link.read == 700


def test_a_hello_is_due_after_an_eighth_of_link_bytes_relayed_since_the_last():
    link = Link()
    link.sent(E.LINK_BYTES // 8)
    assert not link.hello_due()
    link.sent(1)
    assert link.hello_due()
    link.hello_sent()
    assert not link.hello_due()


def test_what_went_to_a_lost_core_is_not_waited_for():
    link = Link()
    link.sent(E.LINK_BYTES)
    assert not link.relaying()
    link.forget()
    assert link.relaying(E.LINK_BYTES - 1)
