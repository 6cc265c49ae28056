"""A room member that will be frozen (SIGSTOP) mid-run: the real client library.

It is ``client.connection.Connection``, as a user's terminal runs it: when it is thawed it
must find out by itself that the broker dropped it, resume its session, and catch up on
the room in order. It reports how long that took and whether anything was lost or
repeated, by the same ``b1 SID N T_NS`` numbering the load processes check.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from client.connection import Connection

from .plan import ClientSpec

READY_WAIT = 1.5  # s after the join reply: the publisher has had time to grant the topic


def main(spec: ClientSpec, server: str, server_key: bytes | None, pipe: Any) -> None:
    try:
        _run(spec, server, server_key, pipe)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        try:
            pipe.send(("error", f"stuck member {spec.name}: {exc!r}"))
        except OSError:
            pass


def _run(spec: ClientSpec, server: str, server_key: bytes | None, pipe: Any) -> None:
    ctx = zmq.Context()
    conn = Connection(server, server_key=server_key, ctx=ctx)
    conn.hello()
    room = spec.joins[0]
    conn.request("join", room=room, name=spec.name)
    got: dict[int, set[int]] = {}
    counts = {"duplicated": 0, "reordered": 0, "events": 0}
    last: dict[int, int] = {}
    notices: list[tuple[str, float]] = []
    joined_at = None
    ready_sent = False
    target: dict[int, int] | None = None  # set by "finish": what the senders sent
    thawed_at = 0.0
    done_at = None
    deadline = None
    poller = zmq.Poller()
    poller.register(conn.dealer, zmq.POLLIN)
    poller.register(conn.sub, zmq.POLLIN)
    poller.register(pipe.fileno(), zmq.POLLIN)
    while True:
        wait = max(1.0, min(conn.next_wakeup(), 0.2) * 1000)
        ready = dict(poller.poll(wait))
        if pipe.fileno() in ready:
            msg = pipe.recv()
            if msg[0] == "finish":
                target, thawed_at = {int(k): v for k, v in msg[1].items()}, msg[2]
                deadline = time.monotonic() + msg[3]
            elif msg[0] == "quit":
                break
        for event in conn.pump():
            if event.kind == "reply" and event.data.get("cmd") == "join":
                joined_at = time.monotonic()
            elif event.kind == "msg":
                _count(event.data.get("text", ""), got, last, counts)
            elif event.kind in ("lost", "restored", "reconnecting", "resumed", "error",
                                "ejected"):
                notices.append((event.kind, time.monotonic()))
        if not ready_sent and joined_at and time.monotonic() - joined_at > READY_WAIT:
            pipe.send(("ok", "ready"))
            ready_sent = True
        if target is not None:
            complete = all(len(got.get(sid, ())) >= n for sid, n in target.items())
            if complete and done_at is None:
                done_at = time.monotonic()
            if complete or (deadline is not None and time.monotonic() > deadline):
                have = {sid: len(got.get(sid, ())) for sid in target}
                pipe.send(("report", {
                    "name": spec.name, "complete": complete,
                    "resync_s": round(done_at - thawed_at, 3) if done_at else None,
                    "lost": sum(max(0, n - have[sid]) for sid, n in target.items()),
                    "received": sum(have.values()), **counts,
                    "notices": [(k, round(t - thawed_at, 3)) for k, t in notices],
                }))
                target = None
    conn.close()
    ctx.term()


def _count(text: Any, got: dict[int, set[int]], last: dict[int, int],
           counts: dict[str, int]) -> None:
    parts = text.split(" ", 4) if isinstance(text, str) else ()
    if len(parts) < 4 or parts[0] != "b1":
        return
    sid, n = int(parts[1]), int(parts[2])
    seen = got.setdefault(sid, set())
    counts["events"] += 1
    if n in seen:
        counts["duplicated"] += 1
        return
    if n < last.get(sid, -1):
        counts["reordered"] += 1
    last[sid] = max(n, last.get(sid, -1))
    seen.add(n)
