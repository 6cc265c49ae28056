"""ngIRCd as the other server under test: ``python -m bench WORKLOAD --against ngircd``.

The benchmark starts its own ngIRCd (the Debian package's binary) with a config of its
own in the run's temporary directory: bound to 127.0.0.1 on a free port, no DNS, ident
or PAM lookups, no MOTD file, no include directory (nothing of /etc/ngircd is read), and
the limits raised for load (connections per IP, channels per user, nick length, ping
timeouts). Flood control is off as far as ngIRCd allows: ``MaxPenaltyTime = 0`` turns
every penalty under ten seconds (command and byte throttling, the costs of commands)
into none, and the load's senders become IRC operators (an ``[Operator]`` block of this
config) to set user mode ``+F``, which lifts the throttle and lets a connection have 10
commands handled per loop turn instead of 3. What stays is ngIRCd's own design: one
process, one thread, epoll, a 32 KiB write buffer per client past which a client is cut.

Run as root, ngIRCd drops to the user ``nobody`` by itself (it refuses to keep uid 0);
as anyone else it keeps that user. It runs ``--nodaemon``, so its pid is the one the
runner reads CPU time from (``/proc/PID/stat``, as for the broker), and SIGTERM stops it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections import deque

from .brokerproc import ServerProcess

READY = re.compile(r"Now listening on \[?127\.0\.0\.1\]?:(\d+)")
OPER_NAME = OPER_PASSWORD = "bench"  # the load's senders OPER with these, for mode +F
SEARCH = ("/usr/sbin", "/usr/local/sbin", "/sbin")  # where the package puts it (not in
# every user's PATH)

CONFIG = """\
# Written by the zchat benchmark (bench/ngircd.py) for one run; deleted after it.
[Global]
\tName = bench.zchat.invalid
\tInfo = zchat benchmark peer
\tAdminInfo1 = zchat benchmark
\tAdminInfo2 = loopback only
\tAdminEMail = bench@localhost
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = bench
[Limits]
\tMaxConnections = 0
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxNickLength = 30
\tMaxPenaltyTime = 0
\tPingTimeout = 600
\tPongTimeout = 600
\tConnectRetry = 3600
[Options]
\tDNS = no
\tIdent = no
\tPAM = no
\tIncludeDir = {dir}/conf.d
\tConnectIPv6 = no
[Operator]
\tName = {oper}
\tPassword = {password}
"""


def binary() -> str | None:
    """The ngircd executable, or None if it is not installed."""
    found = shutil.which("ngircd")
    if found:
        return found
    for d in SEARCH:
        path = os.path.join(d, "ngircd")
        if os.access(path, os.X_OK):
            return path
    return None


def version(path: str | None = None) -> str:
    path = path or binary()
    if not path:
        return ""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    first = out.splitlines()[0] if out else ""
    m = re.match(r"ngIRCd (\S+?)-", first)
    return m.group(1) if m else first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NgircdProcess(ServerProcess):
    """Same interface as brokerproc.BrokerProcess, for the runner (SIGTERM: ngIRCd says
    goodbye to its clients and exits)."""

    insecure = True  # plain IRC: no key to hand the load processes

    def __init__(self, directory: str):
        self.directory = directory
        self.config = os.path.join(directory, "ngircd.conf")
        self.binary = binary()
        self.version = version(self.binary)
        self.lines: deque[str] = deque(maxlen=200)
        self._ready = threading.Event()
        self.router = self.pub = self.control = ""
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0, tries: int = 3) -> None:
        if self.binary is None:
            raise RuntimeError("ngircd is not installed (Debian: apt-get install ngircd)")
        os.makedirs(os.path.join(self.directory, "conf.d"), exist_ok=True)
        os.chmod(self.directory, 0o755)  # readable by "nobody" (ngIRCd reads it as root)
        for _ in range(tries):  # the free port may be taken meanwhile: try another
            self.port = free_port()
            with open(self.config, "w") as f:
                f.write(CONFIG.format(port=self.port, dir=self.directory, oper=OPER_NAME,
                                      password=OPER_PASSWORD))
            self._ready.clear()
            self.router = ""
            self.proc = subprocess.Popen(
                [self.binary, "--nodaemon", "--config", self.config], cwd=self.directory,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
            if self._ready.wait(timeout) and self.router and self._accepts():
                return
            self.stop()
        raise RuntimeError("ngircd did not start:\n" + "\n".join(self.lines))

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if not self._ready.is_set():
                m = READY.search(line)
                if m and int(m.group(1)) == self.port:
                    self.router = f"127.0.0.1:{self.port}"
                elif self.router and " ready." in line:
                    self._ready.set()
        self._ready.set()  # ended before it was ready: start() will say so

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                return True
        except OSError:
            return False

    def public_key(self) -> None:
        return None
