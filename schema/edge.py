"""The link between an edge and the core: its messages, kinds and limits.

An edge holds client connections and relays them to the core over one DEALER (the
core's edge socket is a ROUTER, CURVE, in a ZAP domain that admits only edge keys). The
clients' own protocol (``schema.protocol``) passes through unchanged: the bodies below
are the clients' request frames and the broker's reply frames, byte for byte. Each link
message is a multipart message whose first frame is its kind:

Edge to core
    ``HELLO  info``                  every HEARTBEAT s, and after each LINK_BYTES / 8
                                     relayed; msgpack ``{"pub": address, "reset": n,
                                     "mark": m}`` (n: drops of the link so far; a new n
                                     makes the core end the edge's sessions and greet it
                                     anew; m: request bytes relayed before this hello).
                                     Its ALIVE echoes m: the core has read all the edge
                                     sent before it (the edge bounds the rest: LINK_BYTES).
                                     The first one (or any message from an edge the core
                                     does not know) makes the core send TOPICS first.
    ``REQUEST (client, key, address, body)...``
                                     client requests of one turn, four frames each: the
                                     client's routing id on the edge, its CURVE key (z85,
                                     empty in plaintext), its IP address (only with a
                                     hello, else empty), the request frame as the client
                                     sent it (the edge checked its size and shape).
    ``GONE   (client, reason)...``   clients the edge lost (silent, cut, not reading).

Core to edge
    ``TOPICS live? (topic, live)...`` room topics that became live (b"1") or dead (b"0")
                                     since the last; the first after a HELLO carries every
                                     live topic and ``live?`` b"all": the edge's set is
                                     replaced. Always before any reply naming a topic.
    ``SEND   (client, frame)...``    the turn's frames for clients on this edge, in order.
    ``ROOM   topic frame``           one room frame of the turn, once per edge that has
                                     members in the room; the edge publishes it.
    ``ALIVE  incarnation mark``      the answer to a HELLO, echoing its mark (decimal).
    ``ENDED  client...``             clients on this edge whose sessions the core ended
                                     (kicked, replaced, moved, not reading...): their
                                     pings are answered ``no_session`` from then on.
                                     Before the turn's frames, like TOPICS.

The link is trusted in one direction only: the core trusts an edge's word on who a
client is (the edge did the CURVE handshake with it and checked its routing id), and an
edge trusts the core's frames. Neither trusts a client.
"""

from __future__ import annotations

HELLO, REQUEST, GONE = b"H", b"R", b"G"
TOPICS, SEND, ROOM, ALIVE, ENDED = b"T", b"S", b"P", b"A", b"E"
ALL = b"all"
LIVE, DEAD = b"1", b"0"

HEARTBEAT = 1.0  # seconds between an edge's hellos
TIMEOUT = 4.0  # an edge (or the core) silent this long is lost
# Requests in one link message at most (an edge's turn's worth); the core drops a bigger
# message (no edge sends one) and takes at most REQUESTS_PER_TURN a turn from all its
# edges together, so a burst from them (after a hiccup of the core's) is spread over
# turns, as a direct ROUTER's is.
REQUESTS_PER_MESSAGE = 512
REQUESTS_PER_TURN = 2048
# Link messages (whole multipart messages, not frames) queued before a send would block.
# The core loses an edge it cannot send to (its clients resume elsewhere); an edge that
# cannot send to its core ends the sessions of the requests it cannot relay.
LINK_QUEUE = 10_000
# Bytes the core has handed an edge that the edge's kernel has not acknowledged (TCP_INFO,
# looked at with each of its hellos, and past the bound once a heartbeat as frames go to
# it, so an edge that sends no hellos is bounded too): past it with nothing acknowledged
# for TIMEOUT, or past four times it, the edge is not reading; the core loses it and cuts
# its connection, which frees what libzmq held for it (the edge, told by the drop, is
# greeted anew when it reads).
EDGE_QUEUE_BYTES = 64 << 20
# Bytes an edge relays to the core beyond what the core has shown it read (it answered a
# HELLO sent after them). Past it the core is not keeping up (stopped, far behind): the
# edge relays no more requests, and ends their clients' sessions so that they resume.
LINK_BYTES = 64 << 20
