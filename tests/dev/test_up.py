"""`make up` (ourvidz_dev.up): discovery and order of services, ports, secrets,
the early refusal of a taken gateway port, and a whole run with stand-in
services against the real test PostgreSQL and NATS."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psycopg
import pytest

from ourvidz import keys
from ourvidz.auth import GATEWAY_ROLES, WORKER_ROLES, TokenSigner, TokenVerifier, load_jwks
from ourvidz_dev import up
from ourvidz_dev.stack import settings_from
from services.gateway.settings import GatewaySettings
from tests.conftest import ROLE_PASSWORDS

from .procs import alive, read_pids, wait_until

ROOT = Path(__file__).resolve().parents[2]


def make_service(root: Path, name: str, body: str = "import time\ntime.sleep(120)\n") -> None:
    pkg = root / "services" / name
    pkg.mkdir(parents=True, exist_ok=True)
    (root / "services" / "__init__.py").touch()
    (pkg / "__init__.py").touch()
    (pkg / "__main__.py").write_text(body)


def test_discovers_runnable_services_in_dependency_order(tmp_path: Path):
    for name in ("gateway", "sdxl", "zeta", "workspace", "jobs", "alpha", "wan"):
        make_service(tmp_path, name)
    (tmp_path / "services" / "notrunnable").mkdir()
    (tmp_path / "services" / "notrunnable" / "__init__.py").touch()
    assert up.discover_services(tmp_path) == [
        "jobs",
        "workspace",
        "sdxl",
        "wan",
        "alpha",
        "zeta",
        "gateway",
    ]


def test_order_puts_enhancer_before_the_workers():
    assert up.order_services(["gateway", "wan", "enhancer", "jobs"]) == [
        "jobs",
        "enhancer",
        "wan",
        "gateway",
    ]


def test_ports_are_free_distinct_and_published_as_addresses():
    env = {"WORKSPACE_PORT": "50999"}
    ports = up.assign_ports(["jobs", "workspace", "sdxl", "gateway"], env)
    assert set(ports) == {"jobs", "workspace", "sdxl"}
    assert ports["workspace"] == 50999  # an explicit setting wins
    assert len(set(ports.values())) == 3
    assert not {8080, 4222} & set(ports.values())
    assert env["JOBS_ADDR"] == f"127.0.0.1:{ports['jobs']}"
    assert env["WORKSPACE_ADDR"] == "127.0.0.1:50999"
    assert env["SDXL_PORT"] == str(ports["sdxl"])
    assert "GATEWAY_PORT" not in env


def test_metrics_ports_are_distinct_skip_taken_ones_and_reach_each_service(tmp_path: Path):
    services = ["jobs", "sdxl", "gateway"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1]
        ports = up.assign_metrics_ports(services, {"METRICS_PORT_BASE": str(base)}, {base + 1})
    assert list(ports) == services
    assert len(set(ports.values())) == 3
    assert ports["jobs"] != base and ports["sdxl"] != base + 1  # taken, or to be avoided
    assert ports["gateway"] == base + 2 or not up.port_is_free("127.0.0.1", base + 2)
    assert up.assign_metrics_ports(services, {"METRICS_PORT_BASE": "0"}, set()) == {}
    # A METRICS_PORT in the shared environment never reaches a service as is.
    env = {"METRICS_PORT": "9999", "NATS_URL": "nats://x"}
    specs = up.service_specs(services, env, tmp_path, {}, metrics_ports=ports)
    assert {s.name: s.env["METRICS_PORT"] for s in specs} == {
        name: str(port) for name, port in ports.items()
    }
    assert all("METRICS_PORT" not in s.env for s in up.service_specs(services, env, tmp_path, {}))


def test_each_service_gets_only_its_own_database_login(tmp_path: Path):
    env = {"DATABASE_URL": "host=/pg user=postgres dbname=ourvidz", "NATS_URL": "nats://x"}
    env |= {key: key.lower() for key in up.DB_PASSWORDS}
    specs = {
        s.name: s.env for s in up.service_specs(["jobs", "sdxl", "gateway"], env, tmp_path, {})
    }
    jobs = specs["jobs"]
    assert "DATABASE_URL" not in jobs and not [k for k in jobs if k.startswith("DB_PASSWORD")]
    assert [k for k in jobs if k.endswith("_DATABASE_URL")] == ["JOBS_DATABASE_URL"]
    assert "user=ourvidz_jobs" in jobs["JOBS_DATABASE_URL"]
    assert "password=db_password_jobs" in jobs["JOBS_DATABASE_URL"]
    assert [k for k in specs["gateway"] if "DATABASE" in k] == ["GATEWAY_DATABASE_URL"]
    assert not [k for k in specs["sdxl"] if "DATABASE" in k or "DB_" in k]  # a worker: none
    assert specs["sdxl"]["NATS_URL"] == "nats://x"


def test_secrets_are_generated_once_private_and_stable(tmp_path: Path):
    path = tmp_path / "data" / "secrets.env"
    first = up.dev_secrets(path, {})
    assert set(first) == {"STORAGE_SIGNING_KEY", *up.DB_PASSWORDS}
    assert len(up.DB_PASSWORDS) == 4
    assert all(len(v) == 48 for v in first.values())
    assert len(set(first.values())) == len(first)  # every role its own password
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert up.dev_secrets(path, {}) == first
    assert (
        up.dev_secrets(path, {"STORAGE_SIGNING_KEY": "from-the-environment"})["STORAGE_SIGNING_KEY"]
        == "from-the-environment"
    )


def test_secrets_from_the_environment_write_no_file(tmp_path: Path):
    path = tmp_path / "secrets.env"
    given = {"STORAGE_SIGNING_KEY": "b" * 40}
    given |= {key: key.lower() * 2 for key in up.DB_PASSWORDS}
    got = up.dev_secrets(path, given)
    assert got == given
    assert not path.exists()


def test_dev_keys_are_made_once_private_and_verify_their_own_tokens(tmp_path: Path):
    folder = tmp_path / "keys"
    settings, worker_keys = up.dev_keys(folder)
    assert set(worker_keys) == {"sdxl", "wan", "enhancer"}
    pems = [Path(settings["AUTH_SIGNING_KEY_FILE"]), *map(Path, worker_keys.values())]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pems)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    before = {p: p.read_bytes() for p in pems}
    assert up.dev_keys(folder) == (settings, worker_keys)
    assert {p: p.read_bytes() for p in pems} == before  # a second run keeps the keys

    verifier = TokenVerifier(
        load_jwks(path=settings["AUTH_JWKS_FILE"]),
        load_jwks(path=settings["AUTH_WORKER_JWKS_FILE"]),
    )
    gateway = TokenSigner.from_pem(before[pems[0]], GATEWAY_ROLES)
    assert verifier.verify(gateway.mint("u", "admin", 60)).role == "admin"
    for name, pem in worker_keys.items():
        worker = TokenSigner.from_pem(Path(pem).read_bytes(), WORKER_ROLES)
        assert verifier.verify(worker.mint(name, "worker", 60)).subject == name
    # The public sets hold no private member.
    for jwks in (settings["AUTH_JWKS_FILE"], settings["AUTH_WORKER_JWKS_FILE"]):
        assert all(
            set(k) <= set(keys.PUBLIC_MEMBERS) for k in json.loads(Path(jwks).read_text())["keys"]
        )


SHARED = {
    "OURVIDZ_ENV": "dev",
    "NATS_URL": "nats://127.0.0.1:4333",
    "JOBS_ADDR": "127.0.0.1:50051",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1/ourvidz",
    "DB_PASSWORD_JOBS": "jobs-password",
    "DB_PASSWORD_ENHANCER": "enhancer-password",
    "STORAGE_SIGNING_KEY": "s" * 48,
    "S3_ACCESS_KEY": "access",
    "S3_SECRET_KEY": "secret",
    "AUTH_SIGNING_KEY_FILE": "/keys/gateway.pem",
    "AUTH_SIGNING_KEY": "inline pem",
    "AUTH_JWKS_FILE": "/keys/jwks.json",
    "AUTH_WORKER_JWKS_FILE": "/keys/worker-jwks.json",
    "WORKER_KEY_FILE": "/keys/someone-elses.pem",
}
WORKER_KEYS = {"sdxl": "/keys/sdxl.pem", "wan": "/keys/wan.pem", "enhancer": "/keys/enhancer.pem"}


@pytest.mark.parametrize("name", ["sdxl", "wan"])
def test_model_workers_get_their_own_key_and_no_database_or_signing_secret(name):
    env = up.service_environment(name, SHARED, WORKER_KEYS)
    for secret in (
        "DATABASE_URL",
        "DB_PASSWORD_JOBS",
        "DB_PASSWORD_ENHANCER",
        "ENHANCER_DATABASE_URL",
        "AUTH_SIGNING_KEY_FILE",
        "AUTH_SIGNING_KEY",
        "STORAGE_SIGNING_KEY",
    ):
        assert secret not in env, secret
    assert env["WORKER_KEY_FILE"] == WORKER_KEYS[name]
    # What a worker does need: the queue, Jobs, storage and the public keys.
    for needed in ("NATS_URL", "JOBS_ADDR", "S3_ACCESS_KEY", "S3_SECRET_KEY", "AUTH_JWKS_FILE"):
        assert env[needed] == SHARED[needed]


def test_only_the_gateway_gets_the_signing_key():
    gateway = up.service_environment("gateway", SHARED, WORKER_KEYS)
    assert gateway["AUTH_SIGNING_KEY_FILE"] == "/keys/gateway.pem"
    assert "WORKER_KEY_FILE" not in gateway
    for name in ("jobs", "workspace", "enhancer", "sdxl", "wan", "another"):
        env = up.service_environment(name, SHARED, WORKER_KEYS)
        assert "AUTH_SIGNING_KEY_FILE" not in env and "AUTH_SIGNING_KEY" not in env, name
        assert env.get("WORKER_KEY_FILE") == WORKER_KEYS.get(name), name
        assert env["AUTH_JWKS_FILE"] == "/keys/jwks.json", name


def test_the_enhancer_keeps_its_database_but_gets_no_storage_secrets():
    env = up.service_environment("enhancer", SHARED, WORKER_KEYS)
    # Its own login, made from the owner URL and its own password; no other.
    own = env["ENHANCER_DATABASE_URL"]
    assert "user=ourvidz_enhancer" in own and "password=enhancer-password" in own
    assert "DATABASE_URL" not in env and "DB_PASSWORD_ENHANCER" not in env
    assert "JOBS_DATABASE_URL" not in env
    assert not {"S3_ACCESS_KEY", "S3_SECRET_KEY", "STORAGE_SIGNING_KEY"} & set(env)


def test_shared_environment_defaults(tmp_path: Path):
    env = up.base_environment({"LOG_JSON": "true"}, tmp_path, ("127.0.0.1", 8080))
    assert env["OURVIDZ_ENV"] == "dev"
    assert env["LOG_JSON"] == "false"
    assert env["PUBLIC_BASE_URL"] == "http://127.0.0.1:8080"
    assert env["STORAGE_BACKEND"] == "local"
    assert env["STORAGE_ROOT"] == str(tmp_path / "blobs")
    s3 = up.base_environment({"S3_ENDPOINT": "minio:9000"}, tmp_path, ("127.0.0.1", 8080))
    assert s3["STORAGE_BACKEND"] == "s3"


def test_a_taken_gateway_port_fails_before_anything_starts(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not up.port_is_free("127.0.0.1", port)
        with pytest.raises(up.PortTaken, match=f"127.0.0.1:{port} is already in use"):
            up.run(tmp_path, {"GATEWAY_PORT": str(port)})
    assert not (tmp_path / ".data").exists()


def test_announces_once_ready():
    answers = iter([None, None, {"status": "ready"}])
    stop = threading.Event()
    seen: list[str] = []

    def check(url: str) -> dict | None:
        seen.append(url)
        return next(answers)

    up.announce_when_ready("http://127.0.0.1:1", 0.0, stop, check=check)
    assert seen == ["http://127.0.0.1:1/readyz"] * 3


def workers_ready(**states: str) -> dict:
    return {"status": "ready", "optional": {"workers": states}}


def test_announces_once_the_started_workers_are_ready(caplog):
    answers = iter(
        [
            None,
            workers_ready(sdxl="unknown", wan="none"),
            workers_ready(sdxl="loading", wan="loading"),
            workers_ready(sdxl="ready", wan="loading"),
            workers_ready(sdxl="ready", wan="loading"),
            workers_ready(sdxl="ready", wan="ready"),
        ]
    )
    caplog.set_level("INFO", logger=up.log.name)
    up.announce_when_ready(
        "http://127.0.0.1:1", 0.0, threading.Event(), ["sdxl", "wan"], check=lambda _: next(answers)
    )
    assert [r.getMessage() for r in caplog.records if r.name == up.log.name][:-1] == [
        "waiting for the gateway to see the sdxl worker (worker registry: unknown), "
        "the wan worker to start ...",
        "waiting for the sdxl worker to load its model, the wan worker to load its model ...",
        "waiting for the wan worker to load its model ...",
    ]
    assert caplog.records[-1].getMessage().startswith("ourvidz is serving on http://127.0.0.1:1")


def test_waits_for_no_worker_it_did_not_start():
    assert up.waiting_for(workers_ready(sdxl="ready", wan="none"), ["sdxl"]) == []
    assert up.waiting_for({"status": "ready"}, []) == []
    assert up.waiting_for(None, []) == ["the gateway's /readyz"]


# --- a whole run -------------------------------------------------------------------------------

JOBS = """
import os, socket, time
s = socket.socket(); s.bind(("127.0.0.1", int(os.environ["JOBS_PORT"]))); s.listen()
open(os.environ["PIDS_FILE"], "a").write(f"{os.getpid()}\\n")
print("jobs listening", flush=True)
time.sleep(300)
"""

# The gateway's stand-in: ready, with its sdxl worker "loading" until
# READY_FILE (when set) exists.
GATEWAY = """
import http.server, json, os
open(os.environ["PIDS_FILE"], "a").write(f"{os.getpid()}\\n")
open(os.environ["ENV_FILE"], "w").write(json.dumps(dict(os.environ)))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/readyz":
            self.send_response(404); self.end_headers(); return
        flag = os.environ.get("READY_FILE")
        sdxl = "ready" if not flag or os.path.exists(flag) else "loading"
        body = json.dumps({"status": "ready", "optional": {"workers": {"sdxl": sdxl}}}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((os.environ["GATEWAY_HOST"], int(os.environ["GATEWAY_PORT"])), H).serve_forever()
"""

# A model worker's stand-in: records its whole environment and serves
# Prometheus metrics where it is told to, as a service does.
WORKER = """
import json, os, time
from prometheus_client import start_http_server
open(os.environ["PIDS_FILE"], "a").write(f"{os.getpid()}\\n")
open(os.environ["WORKER_ENV_FILE"], "w").write(json.dumps(dict(os.environ)))
start_http_server(int(os.environ["METRICS_PORT"]), addr="127.0.0.1")
time.sleep(300)
"""


def http_body(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read()
    except OSError:
        return b""


def test_up_runs_the_services_and_stops_them_on_ctrl_c(tmp_path: Path, infra):
    make_service(tmp_path, "jobs", JOBS)
    make_service(tmp_path, "gateway", GATEWAY)
    make_service(tmp_path, "sdxl", WORKER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        gateway_port = sock.getsockname()[1]
    pids_file, env_file = tmp_path / "pids", tmp_path / "env.json"
    worker_env_file, ready_file = tmp_path / "worker-env.json", tmp_path / "sdxl-ready"
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "NATS_", "AUTH_", "S3_", "STORAGE_"))
        },
        "DATABASE_URL": infra.database_url,
        "NATS_URL": infra.nats_url,
        # The test session's role passwords: roles are shared by the whole
        # PostgreSQL server, so `up` must set the ones the other tests use.
        **{f"DB_PASSWORD_{name.upper()}": value for name, value in ROLE_PASSWORDS.items()},
        "GATEWAY_PORT": str(gateway_port),
        "PIDS_FILE": str(pids_file),
        "ENV_FILE": str(env_file),
        "WORKER_ENV_FILE": str(worker_env_file),
        "READY_FILE": str(ready_file),
        "OURVIDZ_BOOTSTRAP_ADMINS": "nobody-up@example.com",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ourvidz_dev.up", "--root", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        # The gateway answers, but its sdxl worker has not loaded its model: not serving yet.
        assert wait_until(
            lambda: (
                any("waiting for the sdxl worker to load its model" in ln for ln in lines)
                or proc.poll() is not None
            ),
            timeout=90,
        ), "".join(lines)
        assert proc.poll() is None, "".join(lines)
        assert not any("ourvidz is serving on" in ln for ln in lines), "".join(lines)
        ready_file.touch()
        assert wait_until(
            lambda: any("ourvidz is serving on" in ln for ln in lines) or proc.poll() is not None,
            timeout=30,
        ), "".join(lines)
        assert proc.poll() is None, "".join(lines)
        assert wait_until(lambda: len(read_pids(pids_file)) == 3, timeout=30)
        children = read_pids(pids_file)
        assert all(alive(p) for p in children)
        # The worker serves Prometheus metrics on the port `up` gave it.
        found = re.search(r"metrics: .*sdxl (http://127\.0\.0\.1:\d+/metrics)", "".join(lines))
        assert found, "".join(lines)
        assert wait_until(lambda: b"python_info" in http_body(found.group(1)), timeout=30)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert wait_until(lambda: not any(alive(p) for p in children), timeout=10)

    assert "services, in start order: jobs, sdxl, gateway" in output
    # The operator's bootstrap ran, and the way to make an admin is printed
    # without the URL of a database that is not the embedded one.
    assert "no account has nobody-up@example.com" in output
    assert "DATABASE_URL=<the owner's URL> .venv/bin/ourvidz admin grant EMAIL" in output
    assert "jobs      | jobs listening" in output
    # Each process its own metrics port, said where; the worker serves there.
    found = re.search(r"metrics: jobs http://127\.0\.0\.1:(\d+)/metrics, "
                      r"sdxl http://127\.0\.0\.1:(\d+)/metrics, "
                      r"gateway http://127\.0\.0\.1:(\d+)/metrics", output)  # fmt: skip
    assert found, output
    metrics_ports = [int(p) for p in found.groups()]
    assert len(set(metrics_ports)) == 3
    assert f"ourvidz is serving on http://127.0.0.1:{gateway_port} (ready in" in output
    seen = json.loads(env_file.read_text())
    assert seen["OURVIDZ_ENV"] == "dev" and seen["LOG_JSON"] == "false"
    assert seen["NATS_URL"] == infra.nats_url
    assert seen["JOBS_ADDR"].startswith("127.0.0.1:") and seen["STORAGE_BACKEND"] == "local"
    assert seen["AUTH_SIGNING_KEY_FILE"] == str(tmp_path / ".data" / "keys" / "gateway.pem")
    assert seen["AUTH_JWKS_FILE"] == str(tmp_path / ".data" / "keys" / "jwks.json")
    assert seen["PUBLIC_BASE_URL"] == f"http://127.0.0.1:{gateway_port}"
    # The model worker: its own key, the public keys, and no database or signing secret.
    worker = json.loads(worker_env_file.read_text())
    assert int(worker["METRICS_PORT"]) == metrics_ports[1]
    assert int(seen["METRICS_PORT"]) == metrics_ports[2]
    assert worker["WORKER_KEY_FILE"] == str(tmp_path / ".data" / "keys" / "sdxl.pem")
    assert worker["AUTH_JWKS_FILE"] == seen["AUTH_JWKS_FILE"]
    assert worker["NATS_URL"] == infra.nats_url and worker["JOBS_ADDR"] == seen["JOBS_ADDR"]
    leaked = {"AUTH_SIGNING_KEY_FILE", "STORAGE_SIGNING_KEY"}
    assert not leaked & set(worker), leaked & set(worker)
    assert not [k for k in worker if k.startswith(("DATABASE_", "DB_")) or "_DATABASE_URL" in k]
    # The gateway got its own database login and no other: not the owner's
    # URL, not another role's URL or password.
    assert "DATABASE_URL" not in seen and "JOBS_DATABASE_URL" not in seen
    assert not [k for k in seen if k.startswith("DB_PASSWORD_")]
    assert infra.database_url not in seen.values()
    settings = settings_from(GatewaySettings, seen)
    assert settings.database_url != infra.database_url
    with psycopg.connect(settings.service_database_url()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("ourvidz_gateway",)


# --- stopping: the services first, the embedded servers last ----------------------------------

# A stand-in service that, when asked to stop, records whether NATS and
# PostgreSQL still answer (they must: they stop after every service).
STOPPING = """
import os, signal, socket, sys, time
from urllib.parse import urlsplit
import psycopg
open(os.environ["PIDS_FILE"], "a").write(f"{os.getpid()}\\n")
s = socket.socket(); s.bind(("127.0.0.1", int(os.environ["JOBS_PORT"]))); s.listen()

def on_term(*_):
    nats = urlsplit(os.environ["NATS_URL"])
    try:
        socket.create_connection((nats.hostname, nats.port), timeout=5).close()
        seen = "nats up"
    except OSError as exc:
        seen = f"nats down: {exc}"
    try:
        psycopg.connect(os.environ["JOBS_DATABASE_URL"], connect_timeout=5).close()
        seen += ", postgres up"
    except psycopg.Error as exc:
        seen += f", postgres down: {exc}"
    open(os.environ["SEEN_FILE"], "w").write(seen)
    print("jobs stopped", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
print("jobs listening", flush=True)
while True:
    time.sleep(1)
"""


def server_pids(data: Path) -> list[int]:
    """The embedded NATS and PostgreSQL of `data` (found by their data folders)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg in (str(data / "nats").encode(), str(data / "pg").encode()) for arg in argv):
            if alive(int(proc.name)):
                found.append(int(proc.name))
    return found


class UpRun:
    """`python -m ourvidz_dev.up` with stand-in services and its own embedded
    PostgreSQL and NATS, leading a process group of its own."""

    def __init__(self, root: Path, data: Path) -> None:
        self.root, self.data = root, data
        make_service(root, "jobs", STOPPING)
        make_service(root, "gateway", GATEWAY)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.gateway_port = sock.getsockname()[1]
        self.pids_file, self.seen_file = root / "pids", root / "seen"
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DATABASE_", "NATS_", "AUTH_", "S3_", "STORAGE_"))
            },
            "OURVIDZ_DATA_DIR": str(data),
            "GATEWAY_PORT": str(self.gateway_port),
            "PIDS_FILE": str(self.pids_file),
            "SEEN_FILE": str(self.seen_file),
            "ENV_FILE": str(root / "env.json"),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ourvidz_dev.up", "--root", str(root)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(
            target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True
        )
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_serving(self) -> None:
        assert wait_until(
            lambda: (
                any("ourvidz is serving on" in ln for ln in self.lines)
                or self.proc.poll() is not None
            ),
            timeout=180,
        ), self.output
        assert self.proc.poll() is None, self.output

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reader.join(5)


@pytest.fixture(scope="module")
def up_data(tmp_path_factory) -> Path:
    """One data folder for these runs: PostgreSQL is initialised once."""
    return tmp_path_factory.mktemp("up-data")


def test_a_group_sigterm_stops_the_services_before_the_servers(tmp_path: Path, up_data: Path):
    run = UpRun(tmp_path, up_data)
    try:
        run.wait_serving()
        children = read_pids(run.pids_file)
        servers = server_pids(up_data)
        assert len(children) == 2 and len(servers) == 2, (children, servers, run.output)
        os.killpg(run.proc.pid, signal.SIGTERM)  # as `kill -TERM -<pgid>` or Ctrl-C would
        run.proc.wait(timeout=120)
    finally:
        run.close()
    assert run.proc.returncode == 0, run.output
    assert run.seen_file.read_text() == "nats up, postgres up", run.output
    assert not any(alive(p) for p in children + servers), run.output
    output = run.output
    assert output.index("stopped jobs") < output.index("stopping embedded servers")
    assert "Traceback" not in output and "watchdog" not in output, output
    # The embedded database's owner URL is printed for the operator's command.
    hint = re.search(
        r"make an admin of an account: DATABASE_URL='([^']*)' (\S+) admin grant", output
    )
    assert hint, output
    assert f"host={up_data / 'pg'}" in hint[1] and hint[2] == ".venv/bin/ourvidz", output


def test_servers_and_services_are_stopped_when_up_is_killed(tmp_path: Path, up_data: Path):
    run = UpRun(tmp_path, up_data)
    try:
        run.wait_serving()
        children = read_pids(run.pids_file)
        servers = server_pids(up_data)
        assert len(children) == 2 and len(servers) == 2, (children, servers, run.output)
        os.kill(run.proc.pid, signal.SIGKILL)  # up alone: nothing of it runs its clean-up
        run.proc.wait(timeout=10)
        assert wait_until(lambda: not any(alive(p) for p in children + servers), timeout=120), (
            [p for p in children + servers if alive(p)],
            run.output,
        )
    finally:
        run.close()
    assert run.seen_file.read_text() == "nats up, postgres up", run.output
    assert "watchdog  | make up (pid" in run.output
    # pgserver's list of the server's users is left empty, so the next run stops it again.
    assert json.loads((up_data / "pg" / ".handle_pids.json").read_text()) == []
