"""A throwaway PostgreSQL cluster for tests: real server processes, nothing mocked.

``Cluster`` runs ``initdb`` and ``pg_ctl`` from the installed PostgreSQL (the newest
under /usr/lib/postgresql, 15 on these machines) in a temporary directory of its own, on
a free loopback port, with its socket there too. fsync stays on and commits are
synchronous: the tests check durability. PostgreSQL refuses to run as root, so as root
every server command runs as the ``postgres`` system user (which owns the directory).

Each test gets a database of its own (``create_database``), so tests stay independent
while sharing one cluster per session. ``python -m tests.pgcluster`` starts one by hand
and prints its DSN, for trying the broker's ``--store`` out.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"  # the system user Debian's package makes, when we are root
START_TIMEOUT = 30  # seconds pg_ctl waits for the server to start or stop
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "on",
    "synchronous_commit": "on",
    "max_connections": "200",
    "shared_buffers": "'32MB'",
    "log_min_messages": "warning",
    "log_connections": "off",
}


class MissingPostgres(RuntimeError):
    """PostgreSQL's server programs are not installed."""


def server_programs() -> Path:
    """The bin directory of the newest installed PostgreSQL server."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if not found:
        raise MissingPostgres(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "the PostgreSQL store and failover tests need it. Install it with "
            "'apt-get install postgresql' (.ci/run does).")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One PostgreSQL server in a temporary directory, started by ``start``."""

    def __init__(self) -> None:
        self.bin = server_programs()
        self.as_root = os.geteuid() == 0
        # Not under pytest's tmp_path: its parents are private to root, and the server
        # runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="zchat-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._databases = 0
        if self.as_root:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, program: str, *args: str, timeout: float = START_TIMEOUT + 10
             ) -> subprocess.CompletedProcess:
        command = [str(self.bin / program), *args]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}\n"
                               f"{self.server_log()}")
        return done

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def start(self) -> Cluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-instructions")
        settings = {**SETTINGS, "port": str(self.port),
                    "unix_socket_directories": f"'{self.root}'"}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", str(START_TIMEOUT), *args)

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are ended, open transactions rolled back)
        and start it again on the same port."""
        self._pg_ctl("restart", "-m", mode)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._pg_ctl("stop", "-m", "immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its DSN."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}_{os.getpid()}"
        with psycopg.connect(self.dsn(), autocommit=True) as db:
            # FILE_COPY checkpoints as it goes; the default (WAL_LOG) leaves every new
            # database's pages dirty, and a restart's checkpoint then takes seconds.
            db.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.dsn(name)

    def backends(self, database: str, application: str = "zchat-core") -> list[int]:
        """The server processes serving ``application`` on a database (from its DSN)."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as db:
            rows = db.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND "
                              "application_name = %s", (database.rsplit("/", 1)[-1],
                                                        application)).fetchall()
        return [pid for (pid,) in rows]


def main() -> None:
    """Start a cluster, print its DSN, and stop it on Ctrl-C."""
    cluster = Cluster().start()
    dsn = cluster.create_database()
    print(f"PostgreSQL {cluster.bin.parent.name} on port {cluster.port}; a fresh database:\n"
          f"  {dsn}\n"
          f"Try: python -m broker --store {dsn}\nCtrl-C stops it.", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
