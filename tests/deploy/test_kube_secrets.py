"""The secrets Job: the pure plan of what to fill, and the fill against an
in-process double of the Kubernetes Secrets/ConfigMaps API."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from psycopg.conninfo import conninfo_to_dict

from ourvidz import keys, kube_secrets
from ourvidz.kube_secrets import JWKS, Kube, KubeError, fill, objects, plan

TOKEN = "test-service-account-token"
NAMESPACE = "ourvidz"


def apply(current: dict, patches: dict) -> dict:
    out = {name: dict(current.get(name) or {}) for name in objects()}
    for name, values in patches.items():
        out[name].update(values)
    return out


def test_an_empty_render_gets_every_key():
    filled = apply({}, plan({}))
    assert set(filled["Secret/ourvidz-signing-key"]) == {"signing-key.pem"}
    for worker in kube_secrets.WORKERS:
        pem = filled[f"Secret/ourvidz-worker-key-{worker}"]["worker-key.pem"]
        keys.load_private_key(pem)
    jwks = json.loads(filled[JWKS]["jwks.json"])
    gateway = keys.public_jwk(
        keys.load_private_key(filled["Secret/ourvidz-signing-key"]["signing-key.pem"])
    )
    assert [k["kid"] for k in jwks["keys"]] == [gateway["kid"]]
    assert len(json.loads(filled[JWKS]["worker-jwks.json"])["keys"]) == 3
    owner = filled["Secret/ourvidz-db-owner"]
    assert owner["username"] == "ourvidz_owner"
    migrate = filled["Secret/ourvidz-db-migrate"]
    assert conninfo_to_dict(migrate["DATABASE_URL"])["password"] == owner["password"]
    assert conninfo_to_dict(migrate["DATABASE_URL"])["host"] == "ourvidz-db-rw"
    passwords = set()
    for service in ("gateway", "jobs", "workspace", "enhancer"):
        url = filled[f"Secret/ourvidz-db-{service}"][f"{service.upper()}_DATABASE_URL"]
        params = conninfo_to_dict(url)
        assert params["user"] == f"ourvidz_{service}"
        assert params["password"] == migrate[f"DB_PASSWORD_{service.upper()}"]
        assert len(params["password"]) >= 16
        passwords.add(params["password"])
    assert len(passwords) == 4
    storage, user = filled["Secret/ourvidz-storage"], filled["Secret/ourvidz-minio-user"]
    assert storage["S3_ACCESS_KEY"] == user["CONSOLE_ACCESS_KEY"]
    assert storage["S3_SECRET_KEY"] == user["CONSOLE_SECRET_KEY"]
    assert "export MINIO_ROOT_PASSWORD=" in filled["Secret/ourvidz-minio-env"]["config.env"]
    assert filled["Secret/ourvidz-backup-s3"]["CONSOLE_SECRET_KEY"]
    # MinIO's limits: access keys 3-20 characters, secret keys 8-40.
    for name in ("Secret/ourvidz-minio-user", "Secret/ourvidz-backup-s3"):
        assert 3 <= len(filled[name]["CONSOLE_ACCESS_KEY"]) <= 20
        assert 8 <= len(filled[name]["CONSOLE_SECRET_KEY"]) <= 40
    assert storage["S3_ACCESS_KEY"] != filled["Secret/ourvidz-backup-s3"]["CONSOLE_ACCESS_KEY"]
    # A full set needs nothing more.
    assert plan(filled) == {}


def test_present_values_are_never_replaced_and_derived_ones_follow_them():
    key = keys.private_pem(keys.generate_private_key()).decode()
    current = {
        "Secret/ourvidz-signing-key": {"signing-key.pem": key},
        "Secret/ourvidz-db-migrate": {"DB_PASSWORD_JOBS": "operator-chosen-password-1"},
        "Secret/ourvidz-db-gateway": {
            "GATEWAY_DATABASE_URL": "postgresql://ourvidz_gateway:from-the-url-0123456@db:5432/x"
        },
        "Secret/ourvidz-minio-user": {"CONSOLE_ACCESS_KEY": "ak", "CONSOLE_SECRET_KEY": "sk"},
    }
    patches = plan(current)
    assert "Secret/ourvidz-signing-key" not in patches
    assert "DB_PASSWORD_JOBS" not in patches["Secret/ourvidz-db-migrate"]
    assert "Secret/ourvidz-db-gateway" not in patches
    assert "Secret/ourvidz-minio-user" not in patches
    filled = apply(current, patches)
    jobs_url = filled["Secret/ourvidz-db-jobs"]["JOBS_DATABASE_URL"]
    assert conninfo_to_dict(jobs_url)["password"] == "operator-chosen-password-1"
    assert filled["Secret/ourvidz-db-migrate"]["DB_PASSWORD_GATEWAY"] == "from-the-url-0123456"
    assert filled["Secret/ourvidz-storage"] == {"S3_ACCESS_KEY": "ak", "S3_SECRET_KEY": "sk"}
    kid = keys.public_jwk(keys.load_private_key(key))["kid"]
    assert [k["kid"] for k in json.loads(filled[JWKS]["jwks.json"])["keys"]] == [kid]


def test_a_present_jwks_gains_the_missing_public_keys_and_loses_none():
    old = keys.public_jwk(keys.generate_private_key())
    current = {JWKS: {"jwks.json": json.dumps({"keys": [old]})}}
    filled = apply(current, plan(current))
    kids = [k["kid"] for k in json.loads(filled[JWKS]["jwks.json"])["keys"]]
    assert kids[0] == old["kid"] and len(kids) == 2
    # Once the set holds every present key, it is left alone.
    assert JWKS not in plan(filled)


def test_the_owner_password_is_read_back_from_the_migration_url():
    current = {
        "Secret/ourvidz-db-migrate": {
            "DATABASE_URL": "postgresql://ourvidz_owner:owner-secret-0123456789@h:5432/ourvidz"
        }
    }
    patches = plan(current)
    assert patches["Secret/ourvidz-db-owner"]["password"] == "owner-secret-0123456789"
    assert "DATABASE_URL" not in patches["Secret/ourvidz-db-migrate"]


def test_an_unusable_present_value_is_named_not_replaced():
    with pytest.raises(ValueError, match="ourvidz-worker-key-wan"):
        plan({"Secret/ourvidz-worker-key-wan": {"worker-key.pem": "not a key"}})
    with pytest.raises(ValueError, match=r"jwks\.json"):
        plan({JWKS: {"jwks.json": "{not json"}})


# --- the API double ------------------------------------------------------------------


class FakeApi:
    """Secrets and ConfigMaps of one namespace over HTTP: GET (200/404) and
    merge PATCH of `data`, with resourceVersion checks, behind a bearer token."""

    def __init__(self, present: dict[str, dict[str, str]]):
        self.objects = {name: {"data": dict(data), "rv": 1} for name, data in present.items()}
        self.patches: list[str] = []
        self.lock = threading.Lock()

    def key(self, path: str) -> str | None:
        parts = path.strip("/").split("/")
        if len(parts) != 6 or parts[:3] != ["api", "v1", "namespaces"] or parts[3] != NAMESPACE:
            return None
        kind = {"secrets": "Secret", "configmaps": "ConfigMap"}.get(parts[4])
        return f"{kind}/{parts[5]}" if kind else None

    def handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def find(self):
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.reply(401, {"reason": "Unauthorized"})
                    return None
                name = api.key(self.path)
                if name is None or name not in api.objects:
                    self.reply(404, {"reason": "NotFound"})
                    return None
                return name

            def body(self, name: str) -> dict:
                obj = api.objects[name]
                data = obj["data"]
                if name.startswith("Secret/"):
                    data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
                return {"metadata": {"resourceVersion": str(obj["rv"])}, "data": data or None}

            def do_GET(self):
                with api.lock:
                    name = self.find()
                    if name:
                        self.reply(200, self.body(name))

            def do_PATCH(self):
                length = int(self.headers.get("Content-Length", "0"))
                patch = json.loads(self.rfile.read(length))
                with api.lock:
                    name = self.find()
                    if not name:
                        return
                    if self.headers.get("Content-Type") != "application/merge-patch+json":
                        self.reply(415, {"reason": "UnsupportedMediaType"})
                        return
                    obj = api.objects[name]
                    if patch.get("metadata", {}).get("resourceVersion") != str(obj["rv"]):
                        self.reply(409, {"reason": "Conflict"})
                        return
                    data = patch.get("data") or {}
                    if name.startswith("Secret/"):
                        data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                    obj["data"].update(data)
                    obj["rv"] += 1
                    api.patches.append(name)
                    self.reply(200, self.body(name))

        return Handler


@pytest.fixture
def serve():
    servers = []

    def start(api: FakeApi) -> Kube:
        server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Kube(f"http://127.0.0.1:{server.server_port}", NAMESPACE, TOKEN, verify=False)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_fill_adds_every_missing_value_and_a_second_run_changes_nothing(serve):
    api = FakeApi({name: {} for name in objects()})
    api.objects["Secret/ourvidz-storage"]["data"] = {
        "S3_ACCESS_KEY": "kept",
        "S3_SECRET_KEY": "kept-s",
    }
    kube = serve(api)
    done = fill(kube)
    assert len(done) == len(objects()) - 1  # ourvidz-storage was full
    assert "Secret/ourvidz-storage" not in api.patches
    assert api.objects["Secret/ourvidz-storage"]["data"]["S3_ACCESS_KEY"] == "kept"
    assert api.objects["Secret/ourvidz-minio-user"]["data"]["CONSOLE_ACCESS_KEY"] == "kept"
    filled = {name: obj["data"] for name, obj in api.objects.items()}
    assert plan(filled) == {}
    before = json.dumps(api.objects, sort_keys=True)
    assert fill(kube) == []
    assert json.dumps(api.objects, sort_keys=True) == before


def test_fill_refuses_when_the_overlay_was_not_applied(serve):
    present = {name: {} for name in objects() if name != "Secret/ourvidz-db-jobs"}
    api = FakeApi(present)
    with pytest.raises(KubeError, match="ourvidz-db-jobs"):
        fill(serve(api))
    assert api.patches == []


def test_a_concurrent_change_is_refused_not_overwritten(serve):
    api = FakeApi({name: {} for name in objects()})
    kube = serve(api)
    got = kube.get("Secret/ourvidz-storage")
    assert got is not None
    api.objects["Secret/ourvidz-storage"]["data"]["S3_ACCESS_KEY"] = "set-meanwhile"
    api.objects["Secret/ourvidz-storage"]["rv"] += 1
    with pytest.raises(KubeError, match="changed"):
        kube.add("Secret/ourvidz-storage", {"S3_ACCESS_KEY": "other"}, got[1])
    assert api.objects["Secret/ourvidz-storage"]["data"]["S3_ACCESS_KEY"] == "set-meanwhile"


def test_a_wrong_token_is_an_error_not_an_empty_secret(serve):
    api = FakeApi({name: {} for name in objects()})
    kube = serve(api)
    kube.http.headers["Authorization"] = "Bearer wrong"
    with pytest.raises(KubeError, match="401"):
        fill(kube)


def test_wait_exits_at_once_for_an_empty_variable_and_waits_for_files(tmp_path, monkeypatch):
    monkeypatch.delenv("OURVIDZ_TEST_UNSET", raising=False)
    assert kube_secrets.wait(["OURVIDZ_TEST_UNSET"], [], timeout=60) == 1
    monkeypatch.setenv("OURVIDZ_TEST_SET", "x")
    present = tmp_path / "key.pem"
    present.write_text("k")
    assert kube_secrets.wait(["OURVIDZ_TEST_SET"], [str(present)], timeout=0) == 0
    assert kube_secrets.wait([], [str(tmp_path / "absent.pem")], timeout=0, poll=0) == 1


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_jobs_role_grants_exactly_what_fill_touches(overlay):
    """The secrets Job's ServiceAccount may GET and PATCH (Kube.get, Kube.add)
    each object of objects() by name, and nothing else: no list, no create, no
    other object."""
    from tests.deploy.render import named, render_overlay, workloads

    rendered = list(render_overlay(overlay))
    (account,) = {
        pod["serviceAccountName"]
        for obj, pod in workloads(rendered)
        if obj["kind"] == "Job" and obj["metadata"]["name"] == "secrets"
    }
    roles = named(rendered, "Role")
    granted = set()
    for binding in named(rendered, "RoleBinding").values():
        if {"kind": "ServiceAccount", "name": account} not in [
            {k: s.get(k) for k in ("kind", "name")} for s in binding["subjects"]
        ]:
            continue
        assert binding["roleRef"]["kind"] == "Role", "a ClusterRole reaches other namespaces"
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            assert rule.get("apiGroups") == [""], rule
            assert rule.get("resourceNames"), f"a rule without resourceNames: {rule}"
            for resource in rule["resources"]:
                kind = {"secrets": "Secret", "configmaps": "ConfigMap"}[resource]
                for verb in rule["verbs"]:
                    granted |= {(verb, f"{kind}/{n}") for n in rule["resourceNames"]}
    assert not [b for b in named(rendered, "ClusterRoleBinding").values()]
    want = {(verb, obj) for obj in objects() for verb in ("get", "patch")}
    assert granted == want, (sorted(granted - want), sorted(want - granted))
