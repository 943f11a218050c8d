"""`make up` (ourvidz.dev.up): discovery and order of services, ports, secrets,
the early refusal of a taken gateway port, and a whole run with stand-in
services against the real test PostgreSQL and NATS."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ourvidz.dev import up

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


def test_secrets_are_generated_once_private_and_stable(tmp_path: Path):
    path = tmp_path / "data" / "secrets.env"
    first = up.dev_secrets(path, {})
    assert set(first) == {"AUTH_SECRET", "STORAGE_SIGNING_KEY"}
    assert all(len(v) == 48 for v in first.values())
    assert first["AUTH_SECRET"] != first["STORAGE_SIGNING_KEY"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert up.dev_secrets(path, {}) == first
    assert (
        up.dev_secrets(path, {"AUTH_SECRET": "from-the-environment"})["AUTH_SECRET"]
        == "from-the-environment"
    )


def test_secrets_from_the_environment_write_no_file(tmp_path: Path):
    path = tmp_path / "secrets.env"
    got = up.dev_secrets(path, {"AUTH_SECRET": "a" * 40, "STORAGE_SIGNING_KEY": "b" * 40})
    assert got == {"AUTH_SECRET": "a" * 40, "STORAGE_SIGNING_KEY": "b" * 40}
    assert not path.exists()


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
    answers = iter([False, False, True])
    stop = threading.Event()
    seen: list[str] = []

    def check(url: str) -> bool:
        seen.append(url)
        return next(answers)

    up.announce_when_ready("http://127.0.0.1:1", 0.0, stop, check=check)
    assert seen == ["http://127.0.0.1:1/readyz"] * 3


# --- a whole run -------------------------------------------------------------------------------

JOBS = """
import os, socket, time
s = socket.socket(); s.bind(("127.0.0.1", int(os.environ["JOBS_PORT"]))); s.listen()
open(os.environ["PIDS_FILE"], "a").write(f"{os.getpid()}\\n")
print("jobs listening", flush=True)
time.sleep(300)
"""

GATEWAY = """
import http.server, json, os
open(os.environ["PIDS_FILE"], "a").write(f"{os.getpid()}\\n")
keys = ["OURVIDZ_ENV", "LOG_JSON", "JOBS_ADDR", "DATABASE_URL", "NATS_URL", "AUTH_SECRET", "STORAGE_BACKEND", "PUBLIC_BASE_URL"]
open(os.environ["ENV_FILE"], "w").write(json.dumps({k: os.environ.get(k) for k in keys}))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer((os.environ["GATEWAY_HOST"], int(os.environ["GATEWAY_PORT"])), H).serve_forever()
"""


def test_up_runs_the_services_and_stops_them_on_ctrl_c(tmp_path: Path, infra):
    make_service(tmp_path, "jobs", JOBS)
    make_service(tmp_path, "gateway", GATEWAY)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        gateway_port = sock.getsockname()[1]
    pids_file, env_file = tmp_path / "pids", tmp_path / "env.json"
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "NATS_", "AUTH_", "S3_", "STORAGE_"))
        },
        "DATABASE_URL": infra.database_url,
        "NATS_URL": infra.nats_url,
        "DB_ROLE_PASSWORD": "ourvidz-test",
        "GATEWAY_PORT": str(gateway_port),
        "PIDS_FILE": str(pids_file),
        "ENV_FILE": str(env_file),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ourvidz.dev.up", "--root", str(tmp_path)],
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
        assert wait_until(
            lambda: any("ourvidz is serving on" in ln for ln in lines) or proc.poll() is not None,
            timeout=90,
        ), "".join(lines)
        assert proc.poll() is None, "".join(lines)
        children = read_pids(pids_file)
        assert len(children) == 2 and all(alive(p) for p in children)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert wait_until(lambda: not any(alive(p) for p in children), timeout=10)

    assert "services, in start order: jobs, gateway" in output
    assert "jobs      | jobs listening" in output
    assert f"ourvidz is serving on http://127.0.0.1:{gateway_port} (ready in" in output
    seen = json.loads(env_file.read_text())
    assert seen["OURVIDZ_ENV"] == "dev" and seen["LOG_JSON"] == "false"
    assert seen["DATABASE_URL"] == infra.database_url and seen["NATS_URL"] == infra.nats_url
    assert seen["JOBS_ADDR"].startswith("127.0.0.1:") and seen["STORAGE_BACKEND"] == "local"
    secrets_env = (tmp_path / ".data" / "secrets.env").read_text()
    assert f"AUTH_SECRET={seen['AUTH_SECRET']}" in secrets_env
    assert seen["PUBLIC_BASE_URL"] == f"http://127.0.0.1:{gateway_port}"
