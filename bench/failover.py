"""How long a failover takes, as clients see it: ``python -m bench.failover [--runs N]
[--edges K]``.

Each run: a throwaway PostgreSQL (one for all runs), two cores on a fresh database (one
active, one standby), K edges in front of them (0: the client knows both cores), and a
client (the client library, in this process) saying a line every 50 ms in a room. The
active core is killed (kill -9); the figure is the time from the kill to the first line
acknowledged that was sent after it (the client's own clock): what a user sees. Every
run is printed, then the distribution; ``--json FILE`` appends them as JSON lines.

It starts its processes with the tests' helpers (tests/harness.py, tests/pgcluster.py):
the same real processes the failover tests use. On one shared 2-core machine these
figures are upper bounds of what several machines would see.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from client.connection import Connection
from schema import keys

LINE_EVERY = 0.05  # seconds between the client's lines
DEADLINE = 30.0  # seconds a run may take to see its first acknowledgement after the kill


def one_run(dsn: str, key_dir: Path, edges: int) -> dict[str, float]:
    from tests.harness import (
        Addresses,
        free_tcp_address,
        serving,
        start_core,
        start_edge,
    )

    links = [free_tcp_address(), free_tcp_address()]
    cores = []
    started_edges = []
    conn = None
    try:
        for link in links:
            cores.append(start_core(dsn, str(key_dir), "--rate", "0", "--edge-bind", link,
                                    at=Addresses()))
        assert serving(cores[0]) and not serving(cores[1])
        started_edges = [start_edge(",".join(links), str(key_dir)) for _ in range(edges)]
        servers = [e.router for e in started_edges] or [c.router for c in cores]
        conn = Connection(servers, server_key=keys.load(key_dir / "broker.key").public)
        conn.hello(timeout=5)
        conn.request("login", name="timer")
        conn.request("create", room="clock")
        _until(conn, lambda ev: ev.kind == "reply" and ev.data.get("cmd") == "create", 10)
        acked_after: float | None = None
        sent: dict[int, float] = {}
        killed = 0.0
        n = 0
        next_line = time.monotonic()
        deadline = time.monotonic() + DEADLINE
        while acked_after is None and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_line:
                rid = conn.request("say", room="clock", text=f"t{n}")
                sent[rid] = now
                n += 1
                next_line = now + LINE_EVERY
                if n == 20:  # a second of traffic, then the kill
                    cores[0].proc.kill()
                    killed = time.monotonic()
            conn.dealer.poll(10)
            for ev in conn.pump():
                if ev.kind == "reply" and ev.data.get("cmd") == "say" and killed and \
                        ev.re is not None and sent.get(ev.re, 0.0) >= killed:
                    acked_after = time.monotonic() - killed
        if acked_after is None:
            raise RuntimeError("no line acknowledged within the deadline after the kill")
        return {"first_ack_s": round(acked_after, 3), "edges": edges}
    finally:
        if conn is not None:
            conn.close()
        for edge in started_edges:
            edge.stop()
        for core in cores:
            core.stop()


def _until(conn: Connection, test, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.dealer.poll(20)
        if any(test(ev) for ev in conn.pump()):
            return
    raise RuntimeError("the client was not served")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--edges", type=int, default=0)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    from tests.pgcluster import Cluster

    pg = Cluster().start()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="zchat-failover-") as tmp:
            key_dir = Path(tmp) / "keys"
            keys.ensure(key_dir)
            for i in range(args.runs):
                result = one_run(pg.create_database(), key_dir, args.edges)
                results.append(result)
                print(f"run {i + 1}: first acknowledgement {result['first_ack_s']:.3f} s "
                      "after the kill", file=sys.stderr)
    finally:
        pg.stop()
    firsts = sorted(r["first_ack_s"] for r in results)
    print(f"kill -9 of the active core, {args.edges} edges, {len(firsts)} runs: first "
          f"acknowledged line after {firsts[0]:.2f} to {firsts[-1]:.2f} s, median "
          f"{statistics.median(firsts):.2f} s")
    if args.json:
        with open(args.json, "a") as out:
            for r in results:
                out.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
