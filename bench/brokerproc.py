"""The broker under test: a real ``python -m broker`` process, started and always stopped.

It runs as in production: CURVE on (the broker makes its keys in the temporary data
directory; load processes read ``DIR/keys/broker.key``), persistence on (a SQLite file in
the same directory, default durability), on free loopback ports. One difference, said in
every report: per-client rate limiting is off (``--rate 0``), because the load is not
abuse. Optionally the broker runs under a profiler (cProfile or pyinstrument); SIGTERM
makes it stop cleanly, so the profile is written.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from schema import keys

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"zchat broker ready: router=(\S+) pub=(\S+) control=(\S+)"
                   r"(?: edges=(\S+))?")
EDGE_READY = re.compile(r"zchat edge ready: router=(\S+) pub=(\S+)")
FD_LIMIT = 65536  # 10,000 clients hold 20,000 connections


def _more_fds() -> None:  # runs in the broker process, before exec
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, max(hard, FD_LIMIT)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out["PYTHONUNBUFFERED"] = "1"
    return out


class ServerProcess:
    """A server the benchmark starts and stops (the broker, or a peer to compare it with)."""

    proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the server says goodbye and exits), then SIGKILL if need be."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.wait(5)


class BrokerProcess(ServerProcess):
    def __init__(self, directory: str, *, profile: str | None = None,
                 profile_out: str | None = None, insecure: bool = False,
                 module: str = "broker", edges: int = 0):
        """``edges``: K edges in front of the core; ``router`` then names all of them
        (comma-separated: each client takes one), and ``edges`` holds them."""
        self.directory = directory
        self.n_edges = edges
        self.edges: list[EdgeProcess] = []
        self.keys_dir = os.path.join(directory, "keys")
        self.db = os.path.join(directory, "zchat.db")
        self.args = ["--bind", "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*",
                     "--control-bind", "tcp://127.0.0.1:*", "--db", self.db,
                     "--keys", self.keys_dir, "--rate", "0"]
        self.insecure = insecure
        if insecure:  # an experiment only: what does encryption cost?
            self.args.append("--insecure")
        if edges:
            self.args += ["--edge-bind", "tcp://127.0.0.1:*"]
        prefix = [sys.executable]
        if profile == "cprofile":
            prefix += ["-m", "cProfile", "-o", profile_out or "broker.prof"]
        elif profile == "pyinstrument":
            prefix += ["-m", "pyinstrument", "-r", "text", "-o",
                       profile_out or "broker-pyinstrument.txt"]
        elif profile is not None:
            raise ValueError(f"unknown profiler {profile!r}")
        self.command = [*prefix, "-m", module, *self.args]
        self.lines: deque[str] = deque(maxlen=200)
        self._ready = threading.Event()
        self.router = self.pub = self.control = self.edge_link = ""
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_more_fds)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or not self.router:
            self.stop()
            raise RuntimeError("the broker did not start:\n" + "\n".join(self.lines))
        for _ in range(self.n_edges):
            edge = EdgeProcess(self.edge_link, self.keys_dir, insecure=self.insecure)
            self.edges.append(edge)
            edge.start(timeout)
        if self.edges:
            self.router = ",".join(edge.router for edge in self.edges)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if not self._ready.is_set():
                ready = READY.search(line)
                if ready:
                    self.router, self.pub, self.control = ready.groups()[:3]
                    self.edge_link = ready[4] or ""
                    self._ready.set()
        self._ready.set()  # ended before it was ready: start() will say so

    def public_key(self) -> bytes | None:
        if self.insecure:
            return None
        return keys.load(Path(self.keys_dir) / "broker.key").public

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a clean stop, flushing any profile), then SIGKILL if need be."""
        for edge in self.edges:
            edge.stop()
        return super().stop(timeout)

    def alive(self) -> bool:
        return super().alive() and all(edge.alive() for edge in self.edges)


class EdgeProcess(ServerProcess):
    """An edge (``python -m edge``) in front of the core under test."""

    def __init__(self, core: str, keys_dir: str, *, insecure: bool = False):
        self.command = [sys.executable, "-m", "edge", "--core", core, "--bind",
                        "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*"]
        self.command += ["--insecure"] if insecure else ["--keys", keys_dir]
        self.router = ""
        self.lines: deque[str] = deque(maxlen=100)

    def start(self, timeout: float) -> None:
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_more_fds)
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for raw in iter(self.proc.stderr.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                self.lines.append(line)
                if not ready.is_set() and (found := EDGE_READY.search(line)):
                    self.router = found[1]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not self.router:
            self.stop()
            raise RuntimeError("an edge did not start:\n" + "\n".join(self.lines))
