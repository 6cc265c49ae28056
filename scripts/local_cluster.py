"""One command for a whole cluster on this machine, on loopback: a throwaway PostgreSQL,
two cores on it (one active, one standby) and two edges in front of them.

    python scripts/local_cluster.py [--dir DIR]

It prints the client command (connect to both edges), then waits; Ctrl-C stops
everything it started, and the PostgreSQL cluster's directory goes with it. Try killing
the active core or an edge (their pids are printed) and watch the clients carry on.
docs/deploy.md says what each process does.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schema import keys  # noqa: E402
from tests.pgcluster import Cluster, MissingPostgres  # noqa: E402

CORES = [("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557",
          "tcp://127.0.0.1:5558"),
         ("tcp://127.0.0.1:5565", "tcp://127.0.0.1:5566", "tcp://127.0.0.1:5567",
          "tcp://127.0.0.1:5568")]
EDGES = [("tcp://127.0.0.1:6555", "tcp://127.0.0.1:6556"),
         ("tcp://127.0.0.1:6565", "tcp://127.0.0.1:6566")]


def _stop(*_: object) -> None:
    """Once: what stops is then left to stop (a second signal would cut the cleanup)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="where the key directory goes (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="zchat-cluster-"))
    key_dir = work / "keys"
    keys.ensure(key_dir)  # once, before any core: every process shares these keys
    try:
        pg = Cluster().start()
    except MissingPostgres as exc:
        print(f"local_cluster: {exc}", file=sys.stderr)
        return 1
    dsn = pg.create_database()
    procs: list[subprocess.Popen] = []
    python = sys.executable
    try:
        for router, pub, control, link in CORES:
            procs.append(subprocess.Popen(
                [python, "-m", "broker", "--store", dsn, "--keys", str(key_dir),
                 "--bind", router, "--pub-bind", pub, "--control-bind", control,
                 "--edge-bind", link], cwd=ROOT))
            time.sleep(1.0)  # the first takes the lock; the second waits as its standby
        links = ",".join(core[3] for core in CORES)
        for router, pub in EDGES:
            procs.append(subprocess.Popen(
                [python, "-m", "edge", "--core", links, "--keys", str(key_dir),
                 "--bind", router, "--pub-bind", pub], cwd=ROOT))
        servers = ",".join(edge[0] for edge in EDGES)
        print(f"\nzchat cluster up. PostgreSQL: {dsn}\n"
              f"  cores (pids {procs[0].pid}, {procs[1].pid}); edges (pids {procs[2].pid}, "
              f"{procs[3].pid})\n"
              f"  chat:  ZCHAT_KEYS={key_dir} {python} -m client --server {servers}\n"
              f"  admin: ZCHAT_KEYS={key_dir} {python} -m admin --control {CORES[0][2]} ls\n"
              "Ctrl-C stops it all.", flush=True)
        signal.signal(signal.SIGTERM, _stop)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _stop()
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
