"""Fill the deployment's Secrets and the JWKS ConfigMap in Kubernetes:
`python -m ourvidz.kube_secrets fill` (the pre-deploy Job `secrets`).

The manifests hold every Secret by a fixed name with no data; this module
adds what is missing and never replaces a value that is there (an operator
who fills them, e.g. with External Secrets, keeps their values). What it fills:

- the gateway's signing key and one key per worker (Ed25519, `ourvidz.keys`),
  and the public halves of every present key in the JWKS ConfigMap (added to
  the sets, never removed: rotation drops old keys by hand);
- the database owner's login (the CNPG role secret) and the migration Job's
  DATABASE_URL, one random password per service role and each service's own
  <SERVICE>_DATABASE_URL built from it;
- MinIO's root credentials (the Tenant's config.env), the services' S3 keys
  (and the same keys as the Tenant user that the operator creates) and the
  database backups' S3 keys.

A value that another one is derived from is read back from whichever side is
present (a URL's password, a pair of keys), so a fill that stopped half way,
or an operator who filled only one side, stays consistent.

`python -m ourvidz.kube_secrets wait --env NAME --file PATH` is a pod's init
step: it exits 1 at once when an environment variable is empty (the kubelet
starts it again with the Secret's current values) and waits for the files of
mounted Secrets to appear.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

from ourvidz import keys
from ourvidz.db import SERVICE_ROLE

log = logging.getLogger(__name__)

WORKERS = ("sdxl", "wan", "enhancer")
OWNER_ROLE = "ourvidz_owner"
JWKS = "ConfigMap/ourvidz-jwks"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Target:
    """Where the database lives, as the URLs name it."""

    db_host: str = "ourvidz-db-rw"
    db_port: int = 5432
    db_name: str = "ourvidz"
    minio_root_user: str = "ourvidz-root"
    # Prefixes of the MinIO users' access keys (svc + 16 hex: within the
    # 20 characters S3 clients expect of a key id).
    storage_user: str = "svc"
    backup_user: str = "bak"


def objects() -> list[str]:
    """Every object the Job fills ("Kind/name"), in the order it patches them."""
    names = ["ourvidz-signing-key", *(f"ourvidz-worker-key-{w}" for w in WORKERS)]
    names += ["ourvidz-db-owner", "ourvidz-db-migrate"]
    names += [f"ourvidz-db-{s}" for s in SERVICE_ROLE]
    names += ["ourvidz-minio-env", "ourvidz-storage", "ourvidz-minio-user", "ourvidz-backup-s3"]
    return [*(f"Secret/{n}" for n in names), JWKS]


def password() -> str:
    """A random URL-safe password (no quoting needed in a URL or a shell)."""
    return secrets.token_urlsafe(32)


def access_key() -> str:
    return secrets.token_hex(8)


def s3_secret() -> str:
    """An S3 secret key: 32 URL-safe characters (MinIO takes 8 to 40)."""
    return secrets.token_urlsafe(24)


def _url_password(url: str) -> str:
    try:
        return conninfo_to_dict(url).get("password") or ""
    except Exception:
        return ""


def _minio_env(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        line = line.strip().removeprefix("export ").strip()
        if "=" in line:
            name, value = line.split("=", 1)
            found[name.strip()] = value.strip().strip('"').strip("'")
    return found


def plan(
    current: Mapping[str, Mapping[str, str] | None],
    target: Target = Target(),
) -> dict[str, dict[str, str]]:
    """What to add to each object ("Kind/name" -> key -> value) so that every
    object has all its keys. `current`: each object's data as text (None or
    {} when it has none). Values that are present are never in the result."""
    have = {name: dict(current.get(name) or {}) for name in objects()}

    def first(*candidates: str, make=password) -> str:
        return next((c for c in candidates if c), "") or make()

    want: dict[str, dict[str, str]] = {}

    # Token keys: a present private key is kept; the JWKS lists every present one.
    private: dict[str, str] = {}
    holders = {"gateway": ("Secret/ourvidz-signing-key", "signing-key.pem")}
    holders |= {w: (f"Secret/ourvidz-worker-key-{w}", "worker-key.pem") for w in WORKERS}
    for name, (obj, key) in holders.items():
        pem = have[obj].get(key) or keys.private_pem(keys.generate_private_key()).decode()
        want[obj] = {key: pem}
        private[name] = pem
    jwks_doc: dict[str, str] = {}
    for file, names in (("jwks.json", ["gateway"]), ("worker-jwks.json", list(WORKERS))):
        present = have[JWKS].get(file)
        try:
            doc = json.loads(present) if present else {"keys": []}
        except ValueError as exc:
            raise ValueError(f"{JWKS} {file} is not a JWKS document: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys", []), list):
            raise ValueError(f"{JWKS} {file} is not a JWKS document")
        kids = {k.get("kid") for k in doc.get("keys", [])}
        added = False
        for name in names:
            try:
                jwk = keys.public_jwk(keys.load_private_key(private[name]))
            except ValueError as exc:
                raise ValueError(f"{holders[name][0]}: {exc}") from exc
            if jwk["kid"] not in kids:
                doc.setdefault("keys", []).append(jwk)
                added = True
        if added or not present:
            jwks_doc[file] = json.dumps(doc, indent=2) + "\n"
    want[JWKS] = jwks_doc

    # The database: the owner (CNPG's role secret and the migration Job's URL).
    migrate = have["Secret/ourvidz-db-migrate"]
    owner_password = first(
        have["Secret/ourvidz-db-owner"].get("password", ""),
        _url_password(migrate.get("DATABASE_URL", "")),
    )
    base = f"{target.db_host}:{target.db_port}/{target.db_name}"
    want["Secret/ourvidz-db-owner"] = {"username": OWNER_ROLE, "password": owner_password}
    want["Secret/ourvidz-db-migrate"] = {
        "DATABASE_URL": f"postgresql://{OWNER_ROLE}:{quote(owner_password, safe='')}@{base}"
    }
    for service, role in SERVICE_ROLE.items():
        url_key = f"{service.upper()}_DATABASE_URL"
        own = have[f"Secret/ourvidz-db-{service}"]
        pw = first(
            migrate.get(f"DB_PASSWORD_{service.upper()}", ""), _url_password(own.get(url_key, ""))
        )
        want["Secret/ourvidz-db-migrate"][f"DB_PASSWORD_{service.upper()}"] = pw
        want[f"Secret/ourvidz-db-{service}"] = {
            url_key: f"postgresql://{role}:{quote(pw, safe='')}@{base}"
        }

    # Object storage: MinIO's root, the services' keys (also the Tenant's user
    # of the same keys), the backups' keys.
    root = _minio_env(have["Secret/ourvidz-minio-env"].get("config.env", ""))
    root_user = root.get("MINIO_ROOT_USER") or target.minio_root_user
    root_password = first(root.get("MINIO_ROOT_PASSWORD", ""), make=s3_secret)
    want["Secret/ourvidz-minio-env"] = {
        "config.env": f"export MINIO_ROOT_USER={root_user}\n"
        f"export MINIO_ROOT_PASSWORD={root_password}\n"
    }
    storage, user = have["Secret/ourvidz-storage"], have["Secret/ourvidz-minio-user"]
    s3_key = first(
        storage.get("S3_ACCESS_KEY", ""),
        user.get("CONSOLE_ACCESS_KEY", ""),
        make=lambda: f"{target.storage_user}{access_key()}",
    )
    s3_secret_key = first(
        storage.get("S3_SECRET_KEY", ""), user.get("CONSOLE_SECRET_KEY", ""), make=s3_secret
    )
    want["Secret/ourvidz-storage"] = {"S3_ACCESS_KEY": s3_key, "S3_SECRET_KEY": s3_secret_key}
    want["Secret/ourvidz-minio-user"] = {
        "CONSOLE_ACCESS_KEY": s3_key,
        "CONSOLE_SECRET_KEY": s3_secret_key,
    }
    backup = have["Secret/ourvidz-backup-s3"]
    want["Secret/ourvidz-backup-s3"] = {
        "CONSOLE_ACCESS_KEY": first(
            backup.get("CONSOLE_ACCESS_KEY", ""),
            make=lambda: f"{target.backup_user}{access_key()}",
        ),
        "CONSOLE_SECRET_KEY": first(backup.get("CONSOLE_SECRET_KEY", ""), make=s3_secret),
    }

    out: dict[str, dict[str, str]] = {}
    for name, values in want.items():
        if name == JWKS:
            missing = values  # the sets, with the public keys they lacked
        else:
            missing = {k: v for k, v in values.items() if not have[name].get(k)}
        if missing:
            out[name] = missing
    return out


# --- the Kubernetes API ----------------------------------------------------------


class KubeError(RuntimeError):
    pass


class Kube:
    """Get and merge-patch Secrets and ConfigMaps of one namespace."""

    def __init__(self, base_url: str, namespace: str, token: str, verify: str | bool = True):
        import httpx

        self.namespace = namespace
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=10.0,
        )

    @classmethod
    def in_cluster(cls) -> Kube:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        base = f"https://{host}:{port}" if host else "https://kubernetes.default.svc"
        return cls(
            base,
            (SA_DIR / "namespace").read_text().strip(),
            (SA_DIR / "token").read_text().strip(),
            str(SA_DIR / "ca.crt"),
        )

    def _path(self, obj: str) -> str:
        kind, name = obj.split("/", 1)
        plural = {"Secret": "secrets", "ConfigMap": "configmaps"}[kind]
        return f"/api/v1/namespaces/{self.namespace}/{plural}/{name}"

    def get(self, obj: str) -> tuple[dict[str, str], str] | None:
        """The object's data as text and its resourceVersion; None when absent."""
        response = self.http.get(self._path(obj))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise KubeError(f"GET {obj}: HTTP {response.status_code} {response.text[:200]}")
        body = response.json()
        data = body.get("data") or {}
        if obj.startswith("Secret/"):
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return data, body["metadata"].get("resourceVersion", "")

    def add(self, obj: str, values: Mapping[str, str], resource_version: str) -> None:
        """Merge `values` into the object's data; refused (409) when the object
        changed since `resource_version` was read."""
        data = dict(values)
        if obj.startswith("Secret/"):
            data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        response = self.http.patch(
            self._path(obj),
            content=json.dumps({"metadata": {"resourceVersion": resource_version}, "data": data}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code == 409:
            raise KubeError(f"{obj} changed while it was being filled; run again")
        if response.status_code != 200:
            raise KubeError(f"PATCH {obj}: HTTP {response.status_code} {response.text[:200]}")


def fill(kube: Kube, target: Target = Target()) -> list[str]:
    """Add every missing value; returns "Kind/name: key, ..." lines of what was added."""
    current: dict[str, dict[str, str]] = {}
    versions: dict[str, str] = {}
    absent = []
    for obj in objects():
        got = kube.get(obj)
        if got is None:
            absent.append(obj)
            continue
        current[obj], versions[obj] = got
    if absent:
        raise KubeError(
            f"missing {', '.join(absent)}: apply the overlay (kubectl apply -k) before this Job"
        )
    done = []
    for obj, values in plan(current, target).items():
        kube.add(obj, values, versions[obj])
        done.append(f"{obj}: {', '.join(sorted(values))}")
    return done


def wait(env: list[str], files: list[str], timeout: float, poll: float = 2.0) -> int:
    """0 once every variable is set and every file is there and not empty;
    1 at once for an empty variable, or when the files are not there in time."""
    empty = [name for name in env if not os.environ.get(name)]
    if empty:
        print(f"not set yet: {', '.join(empty)} (the Secret is not filled)", file=sys.stderr)
        return 1
    deadline = time.monotonic() + timeout
    while True:
        missing = [f for f in files if not (Path(f).is_file() and Path(f).stat().st_size)]
        if not missing:
            return 0
        if time.monotonic() >= deadline:
            print(f"still missing after {timeout:.0f} s: {', '.join(missing)}", file=sys.stderr)
            return 1
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ourvidz.kube_secrets")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fill", help="add the missing Secret and JWKS values (in-cluster)")
    w = commands.add_parser("wait", help="wait for a pod's Secrets to be filled")
    w.add_argument("--env", action="append", default=[], help="a variable that must be set")
    w.add_argument("--file", action="append", default=[], help="a file that must be there")
    w.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "wait":
        return wait(args.env, args.file, args.timeout)
    target = Target(
        db_host=os.environ.get("DB_HOST", Target.db_host),
        db_port=int(os.environ.get("DB_PORT", Target.db_port)),
        db_name=os.environ.get("DB_NAME", Target.db_name),
    )
    try:
        done = fill(Kube.in_cluster(), target)
    except (KubeError, OSError, ValueError) as exc:
        print(f"secrets: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # httpx errors: the API server is away
        print(f"secrets: the Kubernetes API did not answer: {exc}", file=sys.stderr)
        return 1
    for line in done:
        log.info("filled %s", line)
    log.info("every Secret is filled (%d objects changed)", len(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
