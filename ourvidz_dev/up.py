"""`make up`: the whole stack on one machine, from a fresh clone.

What it does, in order:

1. refuses to start when the gateway's port (127.0.0.1:8080) is already taken;
2. loads (or creates, on the first run) stable development secrets:
   STORAGE_SIGNING_KEY and one password per service database role
   (DB_PASSWORD_<SERVICE>) in `.data/secrets.env` unless they are set, and the
   token keys in `.data/keys/` (mode 0600): the gateway's signing key with its
   public `jwks.json`, one key per worker (sdxl, wan, enhancer) with
   `worker-jwks.json`;
3. starts embedded PostgreSQL (`.data/pg`) and NATS JetStream (`.data/nats`, a
   free port, never 4222) unless DATABASE_URL / NATS_URL point at servers;
   blobs go to `.data/blobs`, or to S3 when S3_ENDPOINT is set;
4. prepares the database as its owner (roles, each with its own password, and
   every service's migrations), makes admins of the existing accounts in
   OURVIDZ_BOOTSTRAP_ADMINS and prints how to make one with
   `ourvidz admin grant EMAIL`;
5. gives every gRPC service a free port, every service a metrics port of its
   own (METRICS_PORT: 9464, 9465, ... in start order, or a free port where
   one is taken; METRICS_PORT_BASE moves the range, 0 turns metrics off), and
   says where each serves /metrics; then runs every `services/<name>` that
   has a `__main__.py`, in dependency order, under a `Supervisor` that restarts
   what dies, each with only the secrets it needs (`service_environment`): its
   own database URL (<NAME>_DATABASE_URL), never the owner's; the signing key
   reaches the gateway alone, each worker its own key, and the model workers no
   database credentials;
6. says so when the gateway answers `/readyz` and reports every model worker
   it started (sdxl, wan) ready, that is with its model loaded; until then it
   says what it waits for (at once when that changes, then every 30 s).

On Ctrl-C or SIGTERM — to this process or to its whole process group — it
stops the services in reverse order, then the embedded servers: those run in
sessions of their own, so the group's signal reaches none of them and no
service loses its database or NATS while it stops. Should this process die
without stopping them (SIGKILL), a watchdog (`ourvidz_dev.watchdog`) does it,
in the same order.

Everything persists in `.data/` across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path

from ourvidz.db import SERVICE_ROLE, own_database_env
from ourvidz.migrate import bootstrap, migration_folders
from ourvidz_dev.embedded import free_port
from ourvidz_dev.supervisor import (
    LinePrefixer,
    ServiceSpec,
    Supervisor,
    process_spawner,
    python_argv,
    run_until_signalled,
)

log = logging.getLogger("ourvidz_dev.up")

ROOT = Path(__file__).resolve().parents[1]
# The database roles' passwords: one per service role, given by `make up` to
# the migration step (with the owner URL) and, as its own URL, to that service.
DB_PASSWORDS = tuple(f"DB_PASSWORD_{name.upper()}" for name in SERVICE_ROLE)
GENERATED_SECRETS = ("STORAGE_SIGNING_KEY", *DB_PASSWORDS)
SECRET_LENGTH = 48

# Who holds which secret. The gateway alone signs user and admin tokens.
SIGNING_KEY_VARS = ("AUTH_SIGNING_KEY", "AUTH_SIGNING_KEY_FILE")
# Each of these signs its own worker tokens with a key of its own.
WORKER_KEYED = ("sdxl", "wan", "enhancer")
WORKER_KEY_VARS = ("WORKER_KEY", "WORKER_KEY_FILE")
# The model workers reach PostgreSQL through Jobs only: no database URL or
# password, and they sign no URLs.
MODEL_WORKERS = ("sdxl", "wan")
NO_DATABASE = MODEL_WORKERS
DATABASE_PREFIXES = ("DATABASE_", "DB_")
URL_SIGNING_VARS = ("STORAGE_SIGNING_KEY",)
# The enhancer stores no blobs: no storage credentials.
NO_STORAGE = ("enhancer",)
STORAGE_VARS = ("S3_ACCESS_KEY", "S3_SECRET_KEY", "STORAGE_SIGNING_KEY")

# Dependency order: the state owners first, then what consumes their events,
# then the workers, the HTTP edge last. Services not named here start after
# the workers and before the gateway.
ORDER = ("jobs", "workspace", "enhancer", "sdxl", "wan")
LAST = ("gateway",)
# gRPC services that others dial: they get <NAME>_ADDR, and the next service
# waits until they listen.
DIALLED = ("jobs", "workspace", "enhancer")


class PortTaken(RuntimeError):
    pass


# --- discovery and ordering -----------------------------------------------------------


def discover_services(root: Path) -> list[str]:
    """Every `services/<name>/` package that can run (`python -m services.<name>`),
    in start order."""
    found = [
        p.parent.name
        for p in (root / "services").glob("*/__main__.py")
        if p.parent.name.isidentifier() and not p.parent.name.startswith("_")
    ]
    return order_services(found)


def order_services(names: list[str]) -> list[str]:
    """Sort services into start order: ORDER first (in its order), unknown ones
    by name, LAST at the end."""

    def rank(name: str) -> tuple[int, int, str]:
        if name in ORDER:
            return (0, ORDER.index(name), name)
        if name in LAST:
            return (2, LAST.index(name), name)
        return (1, 0, name)

    return sorted(set(names), key=rank)


# --- ports ------------------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a port in TIME_WAIT counts as free,
    as it will for the server that binds it with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def listens(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def assign_ports(services: list[str], env: MutableMapping[str, str]) -> dict[str, int]:
    """A port for every service but the gateway: <NAME>_PORT (kept when already
    set), and <NAME>_ADDR for the ones others dial. Returns name -> port."""
    ports: dict[str, int] = {}
    used: set[int] = {int(env.get("GATEWAY_PORT", "8080"))}
    for name in services:
        if name in LAST:
            continue
        key = f"{name.upper()}_PORT"
        port = int(env[key]) if env.get(key) else free_port(used)
        used.add(port)
        ports[name] = port
        env[key] = str(port)
        if name in DIALLED:
            env[f"{name.upper()}_ADDR"] = f"127.0.0.1:{port}"
    return ports


# Where the services' /metrics ports start (Prometheus's range for exporters).
METRICS_PORT_BASE = 9464


def assign_metrics_ports(
    services: list[str], env: Mapping[str, str], avoid: set[int]
) -> dict[str, int]:
    """A metrics port (METRICS_PORT) for every service: METRICS_PORT_BASE + its
    place in `services` when that port is free, else any free port; none at
    all when METRICS_PORT_BASE is 0. Returns name -> port."""
    base = int(env.get("METRICS_PORT_BASE") or METRICS_PORT_BASE)
    if base == 0:
        return {}
    used = set(avoid)
    ports: dict[str, int] = {}
    for offset, name in enumerate(services):
        port = base + offset
        if port in used or not port_is_free("127.0.0.1", port):
            port = free_port(used)
        used.add(port)
        ports[name] = port
    return ports


# --- secrets ------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def dev_secrets(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The development secrets to use: the environment's when set, else the
    ones stored in `path`, else new random ones (48 characters) stored there
    (mode 0600) so tokens and signed URLs survive a restart."""
    stored = read_env_file(path)
    missing = [k for k in GENERATED_SECRETS if not stored.get(k)]
    if missing and not all(env.get(k) for k in GENERATED_SECRETS):
        for key in missing:
            stored[key] = secrets.token_urlsafe(36)[:SECRET_LENGTH]
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "# Development secrets made by `make up`; delete to rotate.\n"
        body += "".join(f"{k}={stored[k]}\n" for k in GENERATED_SECRETS)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(body)
        log.info("wrote development secrets to %s", path)
    return {k: env.get(k) or stored[k] for k in GENERATED_SECRETS}


def dev_keys(
    folder: Path, workers: tuple[str, ...] = WORKER_KEYED
) -> tuple[dict[str, str], dict[str, str]]:
    """The development token keys in `folder`, made on the first run: the
    gateway's signing key (gateway.pem, public key in jwks.json) and one key
    per worker (<name>.pem, public keys in worker-jwks.json). Returns the
    settings that name them (AUTH_SIGNING_KEY_FILE, AUTH_JWKS_FILE,
    AUTH_WORKER_JWKS_FILE) and each worker's key file by service name."""
    from ourvidz import keys

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    made = []
    for name, jwks in (("gateway", "jwks.json"), *((w, "worker-jwks.json") for w in workers)):
        pem = folder / f"{name}.pem"
        if pem.exists():
            # Its public key may be missing from the set (an interrupted first run).
            keys.add_to_jwks(
                folder / jwks, keys.public_jwk(keys.load_private_key(pem.read_bytes()))
            )
        else:
            keys.generate(folder, name, jwks)
            made.append(name)
    if made:
        log.info("made token keys in %s: %s", folder, ", ".join(made))
    settings = {
        "AUTH_SIGNING_KEY_FILE": str(folder / "gateway.pem"),
        "AUTH_JWKS_FILE": str(folder / "jwks.json"),
        "AUTH_WORKER_JWKS_FILE": str(folder / "worker-jwks.json"),
    }
    return settings, {w: str(folder / f"{w}.pem") for w in workers}


def service_environment(
    name: str, env: Mapping[str, str], worker_keys: Mapping[str, str]
) -> dict[str, str]:
    """The environment of service `name`: the shared one, less the secrets it
    has no use for, plus its own worker key (`worker_keys`: name -> key file)."""

    def wanted(key: str) -> bool:
        if key in SIGNING_KEY_VARS:
            return name == "gateway"
        if key in WORKER_KEY_VARS:
            return False
        if name in NO_DATABASE and (key.startswith(DATABASE_PREFIXES) or key in URL_SIGNING_VARS):
            return False
        return not (name in NO_STORAGE and key in STORAGE_VARS)

    # Its own database login only: never the owner's URL, nor another
    # service's role (db.own_database_env); then the other secrets it needs.
    out = {k: v for k, v in own_database_env(name, env).items() if wanted(k)}
    if name in worker_keys:
        out["WORKER_KEY_FILE"] = worker_keys[name]
    return out


# --- the environment every service shares ---------------------------------------------------


def base_environment(
    env: Mapping[str, str], data: Path, gateway: tuple[str, int]
) -> dict[str, str]:
    """The shared environment, before embedded servers and ports are added."""
    host, port = gateway
    out = dict(env)
    out.setdefault("OURVIDZ_ENV", "dev")
    out["LOG_JSON"] = "false"
    out["PYTHONUNBUFFERED"] = "1"
    out["GATEWAY_HOST"] = host
    out["GATEWAY_PORT"] = str(port)
    out.setdefault("PUBLIC_BASE_URL", f"http://{host}:{port}")
    if out.get("S3_ENDPOINT"):
        out.setdefault("STORAGE_BACKEND", "s3")
    else:
        out.setdefault("STORAGE_BACKEND", "local")
    out.setdefault("STORAGE_ROOT", str(data / "blobs"))
    return out


def service_specs(
    services: list[str],
    env: Mapping[str, str],
    root: Path,
    ports: Mapping[str, int],
    worker_keys: Mapping[str, str] | None = None,
    metrics_ports: Mapping[str, int] | None = None,
) -> list[ServiceSpec]:
    specs = []
    for name in services:
        ready = listens("127.0.0.1", ports[name]) if name in DIALLED and name in ports else None
        service_env = service_environment(name, env, worker_keys or {})
        # Each process its own metrics port (a shared one would clash), or none.
        service_env.pop("METRICS_PORT", None)
        if metrics_ports and name in metrics_ports:
            service_env["METRICS_PORT"] = str(metrics_ports[name])
        specs.append(
            ServiceSpec(
                name=name,
                argv=python_argv(f"services.{name}"),
                env=service_env,
                cwd=str(root),
                ready=ready,
            )
        )
    return specs


# --- readiness --------------------------------------------------------------------------------


def readyz_body(url: str) -> dict | None:
    """The JSON body of a 200 answer from `url`; None for anything else."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = json.loads(resp.read() or b"{}") if resp.status == 200 else None
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else {}


def waiting_for(body: dict | None, families: Iterable[str]) -> list[str]:
    """What the stack still waits for, given /readyz's answer (None: not 200):
    the gateway, or each model worker family not "ready" in optional.workers."""
    if body is None:
        return ["the gateway's /readyz"]
    states = (body.get("optional") or {}).get("workers") or {}
    out = []
    for family in families:
        state = states.get(family, "unknown")
        if state == "ready":
            continue
        if state == "loading":
            out.append(f"the {family} worker to load its model")
        elif state == "none":
            out.append(f"the {family} worker to start")
        else:
            out.append(f"the gateway to see the {family} worker (worker registry: {state})")
    return out


def announce_when_ready(
    url: str,
    started: float,
    stop: threading.Event,
    families: Iterable[str] = (),
    check: Callable[[str], dict | None] = readyz_body,
    note_seconds: float = 30.0,
) -> None:
    """Poll `<url>/readyz` until it answers 200 and every worker family in
    `families` (the model workers `up` started) is ready, then say where to
    go. Meanwhile say what it waits for: at once when that changes, then
    every `note_seconds`."""
    families = tuple(families)
    said: list[str] = []
    last_note = time.monotonic()
    while not stop.is_set():
        waiting = waiting_for(check(url + "/readyz"), families)
        if not waiting:
            log.info("ourvidz is serving on %s (ready in %.0f s)", url, time.monotonic() - started)
            return
        if waiting != said or time.monotonic() - last_note > note_seconds:
            if said or waiting != ["the gateway's /readyz"]:
                log.info("waiting for %s ...", ", ".join(waiting))
            said, last_note = waiting, time.monotonic()
        stop.wait(0.5)


# --- main -----------------------------------------------------------------------------------------


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"{'up':<10}| %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("yoyo", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pgserver asks platformdirs for a runtime folder that containers often lack.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def run(root: Path = ROOT, environ: MutableMapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    started = time.monotonic()
    # OURVIDZ_DATA_DIR moves the data folder (the benchmarks start from an empty one).
    data = Path(environ.get("OURVIDZ_DATA_DIR") or root / ".data")
    host = environ.get("GATEWAY_HOST", "127.0.0.1")
    port = int(environ.get("GATEWAY_PORT", "8080"))
    if not port_is_free(host, port):
        raise PortTaken(
            f"{host}:{port} is already in use (another `make up`? another server?). "
            "Stop whatever listens there, or run with GATEWAY_PORT=<another port>."
        )

    services = discover_services(root)
    if not services:
        log.warning("no service under %s/services has a __main__.py: nothing to run", root)
    log.info("services, in start order: %s", ", ".join(services) or "(none)")

    env = base_environment(environ, data, (host, port))
    env.update(dev_secrets(data / "secrets.env", environ))
    key_settings, worker_keys = dev_keys(data / "keys")
    for key, value in key_settings.items():
        env.setdefault(key, value)

    from ourvidz_dev.embedded import Embedded, start_nats, start_postgres
    from ourvidz_dev.watchdog import Watchdog

    watchdog = Watchdog.start()
    emb = Embedded()
    try:
        embedded_database = not env.get("DATABASE_URL")
        if embedded_database:
            log.info("starting embedded PostgreSQL in %s", data / "pg")
            watchdog.postgres(data / "pg")
            env["DATABASE_URL"] = start_postgres(data / "pg", emb)
        if not env.get("NATS_URL"):
            nats_port = free_port()
            log.info("starting embedded NATS JetStream on port %d in %s", nats_port, data / "nats")
            env["NATS_URL"] = start_nats(data / "nats", emb, port=nats_port)
        for pid in emb.server_pids:
            watchdog.server(pid)
        from ourvidz import db
        from ourvidz.operator import OperatorSettings
        from ourvidz_dev.stack import settings_from

        log.info("preparing the database")
        passwords = {name: env[f"DB_PASSWORD_{name.upper()}"] for name in SERVICE_ROLE}
        db.prepare(env["DATABASE_URL"], passwords, migration_folders(root / "services"))
        admin_hint = "DATABASE_URL=<the owner's URL>"
        if embedded_database:
            # No password in the embedded server's URL: safe to print.
            admin_hint = f"DATABASE_URL='{env['DATABASE_URL']}'"
        log.info("make an admin of an account: %s .venv/bin/ourvidz admin grant EMAIL", admin_hint)
        bootstrap(env["DATABASE_URL"], settings_from(OperatorSettings, env).bootstrap_admins)

        ports = assign_ports(services, env)
        metrics_ports = assign_metrics_ports(services, env, {*ports.values(), port})
        if metrics_ports:
            where = ", ".join(
                f"{name} http://127.0.0.1:{p}/metrics" for name, p in metrics_ports.items()
            )
            log.info("metrics: %s", where)
        supervisor = Supervisor(
            service_specs(services, env, root, ports, worker_keys, metrics_ports),
            spawner=process_spawner(LinePrefixer(sys.stdout), on_spawn=watchdog.service),
        )
        stop_polling = threading.Event()

        def after_start() -> None:
            if "gateway" not in services:
                log.warning("no services/gateway yet: nothing serves HTTP on %s:%d", host, port)
            else:
                # "serving" once the model workers it started can generate.
                families = [name for name in services if name in MODEL_WORKERS]
                threading.Thread(
                    target=announce_when_ready,
                    args=(f"http://{host}:{port}", started, stop_polling, families),
                    daemon=True,
                ).start()

        try:
            run_until_signalled(supervisor, after_start)
        finally:
            stop_polling.set()
    finally:
        log.info("stopping embedded servers")
        emb.stop()
        watchdog.release()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ourvidz_dev.up", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return run(args.root.resolve())
    except PortTaken as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
