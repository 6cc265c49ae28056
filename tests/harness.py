"""Real processes on real sockets: a broker, clients and the admin tool, for tests.

Everything waits on an event with a deadline (a line appearing, a process ending),
never on a bare sleep. Output is read by background threads into queues so a chatty
process can never block on a full pipe.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WAIT = 5.0
# A process's start (imports, binds, a core's first greeting) waits on its ready line: long
# enough for a machine loaded far past its cores, and free when it is not.
START_WAIT = 30.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Lines:
    """Lines from a stream, collected by a thread; wait for the one you need."""

    def __init__(self, stream: Any):
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.closed = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)

    def _take(self, deadline: float) -> str | None:
        """The next line, or None at end of stream; TimeoutError past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            line = self._queue.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            self.closed = True
        else:
            self.seen.append(line)
        return line

    def wait_for(self, match: Callable[[str], bool] | str, timeout: float = DEFAULT_WAIT
                 ) -> str:
        """Consume lines until one matches (a predicate, or a substring)."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        while not self.closed:
            try:
                line = self._take(deadline)
            except TimeoutError:
                break
            if line is not None and test(line):
                return line
        raise AssertionError(f"no line matching {match!r} within {timeout} s; "
                             f"seen: {self.seen[-15:]!r}")

    def drain(self, quiet: float = 0.3) -> list[str]:
        """Lines that arrive until the stream has been quiet for ``quiet`` seconds.
        Only for asserting that something did *not* arrive, after a positive wait."""
        out = []
        while not self.closed:
            try:
                line = self._take(time.monotonic() + quiet)
            except TimeoutError:
                break
            if line is not None:
                out.append(line)
        return out


@dataclass
class Broker:
    proc: subprocess.Popen
    log: Lines
    router: str
    pub: str
    control: str
    db: str
    args: list[str] = field(default_factory=list)

    @property
    def keys_dir(self) -> str | None:
        """The broker's key directory, or None when it runs plaintext."""
        return self.args[self.args.index("--keys") + 1] if "--keys" in self.args else None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        return stop_process(self.proc, sig, timeout)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0
                 ) -> int:
    """Signal a process we started and wait for it; kill it if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)


READY = re.compile(r"zchat broker ready: router=(\S+) pub=(\S+) control=(\S+)")


def start_broker(db: str, *extra: str, router: str = "tcp://127.0.0.1:*",
                 pub: str = "tcp://127.0.0.1:*", control: str = "tcp://127.0.0.1:*",
                 timeout: float = START_WAIT, descriptors: int | None = None) -> Broker:
    """``db``: a SQLite file, or a PostgreSQL DSN (then the broker's keys live in a
    directory of that database's own, the same at each restart on it). ``descriptors``:
    the broker's hard limit of open files (as a small machine has)."""
    path, store = db, []
    if db.startswith("postgresql://"):
        path, store = os.path.join(_home_of(db), "unused.db"), ["--store", db]
    args = ["--bind", router, "--pub-bind", pub, "--control-bind", control, "--db", path,
            *store, *extra]
    if "--insecure" not in extra and "--keys" not in extra:
        # Encrypted, as by default. Clients and admin tools started after this find this
        # broker's keys through $ZCHAT_KEYS, as local users find them in data/keys.
        keys = os.path.join(os.path.dirname(os.path.abspath(path)), "keys")
        args += ["--keys", keys]
        os.environ["ZCHAT_KEYS"] = keys
    def limit() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, descriptors))

    proc, log, ready = _spawn("broker", args, READY, timeout,
                              preexec=limit if descriptors is not None else None)
    return Broker(proc, log, ready[1], ready[2], ready[3], db, args)


_HOMES: dict[str, str] = {}


def _home_of(dsn: str) -> str:
    """A directory for the brokers on one PostgreSQL database (their keys)."""
    if dsn not in _HOMES:
        _HOMES[dsn] = tempfile.mkdtemp(prefix="zchat-pg-")
        atexit.register(shutil.rmtree, _HOMES[dsn], True)
    return _HOMES[dsn]


class Client:
    """A ``python -m client`` process driven through its stdin, read line by line."""

    def __init__(self, server: str, *extra: str, json_mode: bool = True):
        self.json_mode = json_mode
        cmd = [sys.executable, "-m", "client", "--server", server, *extra]
        if json_mode:
            cmd.append("--json")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        for line in lines:
            self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def event(self, kind: str | None = None, timeout: float = DEFAULT_WAIT,
              **match: Any) -> dict[str, Any]:
        """Wait for a JSON event of this kind whose fields equal ``match``."""
        def test(line: str) -> bool:
            try:
                ev = json.loads(line)
            except ValueError:
                return False
            return ((kind is None or ev.get("event") == kind)
                    and all(ev.get(k) == v for k, v in match.items()))
        return json.loads(self.line(test, timeout))

    def enter(self, command: str) -> dict[str, Any]:
        """Send a /create or /join line (JSON mode); return its reply once the replayed
        history, which ends with our own join, has been read too."""
        self.send(command)
        reply = self.event("reply", cmd=command.lstrip("/").split()[0])
        self.event("join", replay=True, room=reply["room"], seq=reply["seq"])
        return reply

    def line(self, match: Callable[[str], bool] | str, timeout: float = DEFAULT_WAIT) -> str:
        try:
            return self.out.wait_for(match, timeout)
        except AssertionError as exc:  # what the client said on stderr tells why, if it did
            raise AssertionError(f"{exc}; exit code {self.proc.poll()}, stderr: "
                                 f"{(self.err.seen + self.err.drain(0.2))[-10:]!r}") from None

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = DEFAULT_WAIT) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def admin(control: str, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """Run ``python -m admin`` once; returns the finished process (text output)."""
    return subprocess.run([sys.executable, "-m", "admin", "--control", control, *args],
                          cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def admin_json(control: str, *args: str) -> dict[str, Any]:
    done = admin(control, "--json", *args)
    return json.loads(done.stdout)


def free_tcp_address() -> str:
    """A loopback address nobody listens on (bound once by the kernel, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def silent_listener() -> Iterator[str]:
    """A loopback TCP port that accepts connections and never says a word: a frozen
    broker, as far as a client can tell."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


def host_port(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (HOST, PORT), for raw sockets."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON events among output lines (other lines are skipped)."""
    out = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


def raw_socket(ctx: Any, kind: int, broker: Broker, address: str | None = None) -> Any:
    """A bare pyzmq socket connected to one of the broker's addresses (the router by
    default) as any stranger could make it: CURVE with a fresh key and the broker's
    public key when the broker is encrypted. For playing protocol games and attacks."""
    import zmq

    from schema import keys

    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    keys_dir = broker.keys_dir
    if keys_dir is not None:
        keys.curve_client(sock, keys.load(Path(keys_dir) / "broker.key").public)
    sock.connect(address or broker.router)
    return sock


def operator_socket(ctx: Any, kind: int, broker: Broker) -> Any:
    """A bare pyzmq socket connected to the broker's control address with the operator's
    key pair (as the admin tool has it), for sending the control socket garbage."""
    import zmq

    from schema import keys

    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if broker.keys_dir is not None:
        keys.curve_client(sock, keys.load(Path(broker.keys_dir) / "broker.key").public,
                          keys.load(Path(broker.keys_dir) / "admin.key_secret"))
    sock.connect(broker.control)
    return sock


def rss_mib(pid: int) -> float:
    """A process's resident memory, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- the IRC gateway (issue 15) -------------------------------------------------------------

GATEWAY_READY = re.compile(r"zchat IRC gateway ready: listen=(\S+):(\d+)")


@dataclass
class Gateway:
    """A ``python -m gateway`` process: IRC clients connect to ``host``:``port``."""

    proc: subprocess.Popen
    log: Lines
    host: str
    port: int

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        return stop_process(self.proc, sig, timeout)


def start_gateway(broker: Broker, *extra: str, timeout: float = START_WAIT) -> Gateway:
    """A gateway to ``broker`` on a free loopback port (the broker's keys, or plaintext)."""
    args = ["--server", broker.router, "--listen", "127.0.0.1:0", *extra]
    args += ["--insecure"] if broker.keys_dir is None else ["--keys", broker.keys_dir]
    proc, log, ready = _spawn("gateway", args, GATEWAY_READY, timeout)
    return Gateway(proc, log, ready[1], int(ready[2]))


def _spawn(module: str, args: list[str], ready: re.Pattern[str], timeout: float, *,
           preexec: Callable[[], None] | None = None
           ) -> tuple[subprocess.Popen, Lines, re.Match[str]]:
    """``python -m module args``, once its log says it is ready (killed if it does not
    within ``timeout``): the process, its log, and the ready line's match."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=preexec)
    log = Lines(proc.stderr)
    try:
        found = ready.search(log.wait_for(ready.search, timeout))
    except AssertionError:
        proc.kill()
        raise
    assert found
    return proc, log, found


# --- edges ----------------------------------------------------------------------------------

EDGE_READY = re.compile(r"zchat edge ready: router=(\S+) pub=(\S+) core=(\S+)")
EDGES = re.compile(r"zchat broker ready: .* edges=(\S+)")


@dataclass
class Edge:
    """A ``python -m edge`` process: clients connect to ``router`` as to a broker."""

    proc: subprocess.Popen
    log: Lines
    router: str
    pub: str

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        return stop_process(self.proc, sig, timeout)


def edge_address(broker: Broker) -> str:
    """Where a core started with ``--edge-bind`` takes edges."""
    found = next((EDGES.search(line) for line in broker.log.seen if EDGES.search(line)),
                 None)
    assert found, "the core was not started with --edge-bind"
    return found[1]


def start_edge(core: str, keys_dir: str | None, *extra: str, router: str = "tcp://127.0.0.1:*",
               pub: str = "tcp://127.0.0.1:*", timeout: float = START_WAIT) -> Edge:
    """An edge for the core(s) at ``core`` (their edge addresses, comma-separated), on
    free loopback ports, with the core's key directory (None: plaintext)."""
    args = ["--core", core, "--bind", router, "--pub-bind", pub, *extra]
    args += ["--insecure"] if keys_dir is None else ["--keys", keys_dir]
    proc, log, ready = _spawn("edge", args, EDGE_READY, timeout)
    return Edge(proc, log, ready[1], ready[2])


@dataclass
class EdgedBroker(Broker):
    """A core with one edge, seen as clients see it: ``router`` and ``pub`` are the
    edge's; ``control`` and the keys are the core's; ``proc`` and ``log`` the edge's."""

    core: Broker | None = None
    edge: Edge | None = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        assert self.core is not None and self.edge is not None
        self.edge.stop(sig, timeout)
        return self.core.stop(sig, timeout)


def start_edged(db: str, *extra: str) -> EdgedBroker:
    """A core (``start_broker`` with ``extra``) and an edge of it."""
    core = start_broker(db, "--edge-bind", "tcp://127.0.0.1:*", *extra)
    try:
        edge = start_edge(edge_address(core), core.keys_dir)
    except BaseException:
        core.stop()
        raise
    return EdgedBroker(edge.proc, edge.log, edge.router, edge.pub, core.control, core.db,
                       core.args, core=core, edge=edge)


class RawIrc:
    """A bare IRC connection, for what a client library cannot express: CAP and tags,
    raw bytes, a peer that never reads. Lines (without CR LF) are read by a thread."""

    def __init__(self, gateway: Gateway, *, read: bool = True, rcvbuf: int | None = None,
                 tls: Any = None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting, so the window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect((gateway.host, gateway.port))
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
            sock.setblocking(False)
        self.sock = sock
        # OpenSSL forbids reading and writing one TLS connection from two threads at
        # once (a write racing the read of TLS 1.3's session tickets can vanish): with
        # TLS the reader waits outside this lock and reads under it, non-blocking, and
        # a write takes it.
        self._io = threading.Lock()
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.closed = False
        if read:
            threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        buf = b""
        while True:
            try:
                if isinstance(self.sock, ssl.SSLSocket):
                    data = self._recv_tls()
                else:
                    data = self.sock.recv(65536)
            except (OSError, ValueError):  # ValueError: closed meanwhile
                data = b""
            if not data:
                self.lines.put(None)
                return
            buf += data
            *complete, buf = buf.split(b"\r\n")
            for line in complete:
                self.lines.put(line.decode("utf-8", "replace"))

    def _recv_tls(self) -> bytes:
        assert isinstance(self.sock, ssl.SSLSocket)
        while True:
            # Bytes already decrypted (pending) are invisible to select.
            if not self.sock.pending():
                select.select([self.sock], [], [], 1.0)
            with self._io:
                try:
                    return self.sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass  # a part of a record, or nothing yet

    def send(self, *lines: str | bytes) -> None:
        data = b"".join((line.encode() if isinstance(line, str) else line) + b"\r\n"
                        for line in lines)
        if not isinstance(self.sock, ssl.SSLSocket):
            self.sock.sendall(data)
            return
        deadline = time.monotonic() + 10
        while data:
            with self._io:
                try:
                    data = data[self.sock.send(data):]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if data:
                if time.monotonic() > deadline:
                    raise TimeoutError("the gateway does not read")
                select.select([], [self.sock], [], 0.1)

    def wait(self, match: Callable[[str], bool] | str, timeout: float = DEFAULT_WAIT) -> str:
        """Read lines until one matches (a predicate, or a substring)."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        while not self.closed:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self.closed = True
                break
            self.seen.append(line)
            if test(line):
                return line
        raise AssertionError(f"no line matching {match!r} within {timeout} s "
                             f"(closed: {self.closed}); seen: {self.seen[-15:]!r}")

    def wait_closed(self, timeout: float = DEFAULT_WAIT) -> list[str]:
        """Read until the gateway closes the connection; the lines read meanwhile."""
        start = len(self.seen)
        deadline = time.monotonic() + timeout
        while not self.closed:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"still open after {timeout} s; seen: "
                                     f"{self.seen[-15:]!r}") from None
            if line is None:
                self.closed = True
            else:
                self.seen.append(line)
        return self.seen[start:]

    def drain(self, quiet: float = 0.3) -> list[str]:
        """Lines that arrive until none has for ``quiet`` seconds (after a positive wait)."""
        out = []
        while not self.closed:
            try:
                line = self.lines.get(timeout=quiet)
            except queue.Empty:
                break
            if line is None:
                self.closed = True
            else:
                out.append(line)
                self.seen.append(line)
        return out

    def register(self, nick: str, *caps: str, password: str | None = None) -> None:
        """Register as ``nick``, asking for ``caps``; return once welcomed."""
        lines = ["CAP LS 302"] if caps else []
        if password is not None:
            lines.append(f"PASS {password}")
        lines += [f"NICK {nick}", f"USER {nick} 0 * :{nick}"]
        if caps:
            lines += [f"CAP REQ :{' '.join(caps)}", "CAP END"]
        self.send(*lines)
        self.wait(f" 001 {nick} ")
        self.wait(" 376 ")  # the end of the MOTD: registration's last word

    def close(self) -> None:
        try:
            with self._io:
                self.sock.close()
        except OSError:
            pass


# --- cores on a shared PostgreSQL store ------------------------------------------------------

STANDBY = "Standby:"  # how a core waiting for the store's lock says so
SERVING_OR_STANDBY = re.compile(f"{READY.pattern}|{re.escape(STANDBY)}")


@dataclass
class Addresses:
    """A broker's three fixed loopback addresses: a core that takes over serves there."""

    router: str = field(default_factory=free_tcp_address)
    pub: str = field(default_factory=free_tcp_address)
    control: str = field(default_factory=free_tcp_address)


def start_core(dsn: str, keys_dir: str, *extra: str, at: Addresses | None = None,
               timeout: float = 15.0) -> Broker:
    """A broker on the PostgreSQL store ``dsn``, with its own fixed addresses and the key
    directory every core of the store shares (clients pin one broker key). Returns once
    it serves or waits as a standby; ``serving`` says which."""
    at = at or Addresses()
    args = ["--bind", at.router, "--pub-bind", at.pub, "--control-bind", at.control,
            "--store", dsn, "--keys", keys_dir, *extra]
    proc, log, _ = _spawn("broker", args, SERVING_OR_STANDBY, timeout)
    return Broker(proc, log, at.router, at.pub, at.control, dsn, args)


def serving(core: Broker) -> bool:
    """Has this core served, as far as its log has been read? (See ``wait_serving``.)"""
    return any(READY.search(line) for line in core.log.seen)


def wait_serving(core: Broker, timeout: float) -> float:
    """Wait until the core says it serves (again: a new incarnation); the seconds it took."""
    started = time.monotonic()
    core.log.wait_for(READY.search, timeout)
    return time.monotonic() - started


def stored_events(store: str, room: str) -> list[dict[str, Any]]:
    """A room's stored events in seq order, read straight from the store: a PostgreSQL
    DSN, or a SQLite file."""
    import msgpack

    query = "SELECT body FROM events WHERE room = {} ORDER BY seq"
    if store.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store) as db:
            rows = db.execute(query.format("%s"), (room,)).fetchall()
    else:
        import sqlite3

        with sqlite3.connect(store) as db:
            rows = db.execute(query.format("?"), (room,)).fetchall()
    return [msgpack.unpackb(body) for (body,) in rows]
