"""Each rendered container started as Kubernetes would start it, up to the
point where it would reach the network: its environment (ConfigMaps, the
Secrets as the `secrets` Job fills them, its own `env`), its mounted files,
its module and options. A pod that would stop at start on a missing or
invalid setting, or on an option its command does not take, fails here.

The Secrets hold what `ourvidz.kube_secrets.plan` makes for empty ones (the
values the Job writes on a fresh cluster); each mounted ConfigMap or Secret
is written under a temporary folder, and the paths the container is given
are moved there.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest

from ourvidz import kube_secrets, migrate
from ourvidz.storage import store_from_settings
from tests.deploy.render import OVERLAYS, containers, named, ref, render_overlay, workloads

# The settings class of each service's process.
SERVICE_SETTINGS = {
    "services.gateway": "services.gateway.settings:GatewaySettings",
    "services.jobs": "services.jobs.settings:JobsSettings",
    "services.workspace": "services.workspace.settings:WorkspaceSettings",
    "services.enhancer": "services.enhancer.settings:EnhancerSettings",
    "services.sdxl": "services.sdxl.settings:SdxlSettings",
    "services.wan": "services.wan.settings:WanSettings",
}
# Read by libraries, not by a settings class: the Hugging Face cache and
# offline switch, the OpenTelemetry SDK's own variables.
LIBRARY_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE")
LIBRARY_PREFIXES = ("OTEL_",)


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _filled() -> dict[str, dict[str, str]]:
    """Every Secret and the JWKS ConfigMap as the secrets Job fills them."""
    return kube_secrets.plan({})


def _source_data(objects, filled, kind: str, name: str) -> dict[str, str] | None:
    key = f"{kind}/{name}"
    if key in filled:
        return filled[key]
    obj = named(objects, kind).get(name)
    if obj is None:
        return None
    return dict(obj.get("data") or {}) | dict(obj.get("stringData") or {})


def pod_env(objects, filled, container: dict) -> dict[str, str]:
    """The container's environment, in Kubernetes' order: envFrom, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if field in source:
                data = _source_data(objects, filled, kind, source[field]["name"])
                assert data is not None or source[field].get("optional"), (
                    f"{container['name']}: {kind}/{source[field]['name']} is not in the render"
                )
                env |= {prefix + k: v for k, v in (data or {}).items()}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref_from = item.get("valueFrom", {})
        for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if field in ref_from:
                data = _source_data(objects, filled, kind, ref_from[field]["name"]) or {}
                if ref_from[field]["key"] in data:
                    env[item["name"]] = data[ref_from[field]["key"]]
        if "fieldRef" in ref_from:
            env[item["name"]] = "pod-0"
    return env


def materialize(objects, filled, pod: dict, container: dict, root: Path) -> dict[str, Path]:
    """Write the container's ConfigMap and Secret mounts under root: mount
    path -> where it now is."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    moved: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = root / mount["mountPath"].lstrip("/")
        moved[mount["mountPath"]] = target
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            kind, source = "ConfigMap", volume["configMap"]
            name = source["name"]
        elif "secret" in volume:
            kind, source = "Secret", volume["secret"]
            name = source["secretName"]
        else:
            continue  # emptyDir, a volume claim: a writable or filled folder
        data = _source_data(objects, filled, kind, name) or {}
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] in data:
                path = target / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(data[item["key"]])
    return moved


def relocate(value: str, moved: dict[str, Path]) -> str:
    for mount_path, there in sorted(moved.items(), key=lambda m: -len(m[0])):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(there) + value[len(mount_path.rstrip("/")) :]
    return value


def _relocate_arg(arg: str, moved: dict[str, Path]) -> str:
    if arg.startswith("--") and "=" in arg:
        option, value = arg.split("=", 1)
        return f"{option}={relocate(value, moved)}"
    return relocate(arg, moved)


def module_args(container: dict) -> tuple[str, list[str]] | None:
    """`python -m MODULE ARGS...` of the container, or None."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        return argv[2], argv[3:]
    return None


def python_containers(overlay: str):
    objects = list(render_overlay(overlay))
    for obj, pod in workloads(objects):
        for container in containers(pod):
            found = module_args(container)
            if found:
                yield objects, obj, pod, container, found


def _cases():
    for overlay in OVERLAYS:
        for _, obj, _, container, _ in python_containers(overlay):
            yield pytest.param(
                overlay, ref(obj), container["name"], id=f"{overlay}-{ref(obj)}-{container['name']}"
            )


def _find(overlay: str, workload: str, name: str):
    for objects, obj, pod, container, found in python_containers(overlay):
        if ref(obj) == workload and container["name"] == name:
            return objects, obj, pod, container, found
    raise LookupError(f"{overlay}: {workload} has no container {name}")


def _check_listening(where: str, module: str, settings, container: dict) -> None:
    """The process listens, on every interface, on the port its probes and
    its Service's named port point at; its metrics on the `metrics` port."""
    family = module.removeprefix("services.")
    port = getattr(settings, f"{family}_port")
    host = getattr(settings, f"{family}_host")
    assert host in ("0.0.0.0", "::"), f"{where}: listens on {host} only"
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    served = ports.get("http" if family == "gateway" else "grpc")
    assert served == port, f"{where}: listens on {port}, container port {served}"
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        assert probe, f"{where}: no {kind}"
        action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
        target = ports.get(action["port"], action["port"])
        assert target == port, f"{where}: {kind} on {action['port']}, the process on {port}"
        if "httpGet" in probe:
            from services.gateway.routes.ops import router

            path = probe["httpGet"]["path"].split("?")[0]
            assert path in {r.path for r in router.routes}, f"{where}: no route {path}"
    assert settings.metrics_port == ports.get("metrics"), f"{where}: metrics port"
    assert settings.metrics_host in ("0.0.0.0", "::"), (
        f"{where}: metrics on {settings.metrics_host}"
    )


# Where the processes write on a read-only root: the image's HOME and working
# directory (/tmp: Python's tempfile, torch's and triton's caches, matplotlib's
# config) and the Hugging Face cache.
WRITTEN = ("/tmp", "HF_HOME")


def _check_writable(where: str, pod: dict, container: dict, env: dict[str, str]) -> None:
    if not (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
        return
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    writable = [
        m["mountPath"]
        for m in container.get("volumeMounts", [])
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    ]
    for item in WRITTEN:
        path = env.get(item, item)
        assert path.startswith("/"), f"{where}: {item} is not set"
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), (
            f"{where}: writes {path} on a read-only root, no emptyDir there"
        )


@pytest.fixture
def environ(monkeypatch):
    """Replace the process environment with the one a test sets."""

    def use(env: dict[str, str]) -> None:
        for name in list(os.environ):
            if name not in ("PATH", "HOME", "PYTHONPATH"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return use


def _env_names(settings_cls) -> set[str]:
    names = set()
    for name, field in settings_cls.model_fields.items():
        alias = field.validation_alias
        names.add((alias if isinstance(alias, str) else name).upper())
    return names


def _known_env(settings_cls) -> set[str]:
    from ourvidz.settings import CatalogLimits

    return (
        _env_names(settings_cls)
        | {f"CATALOG_{n.upper()}" for n in CatalogLimits.model_fields}
        | set(LIBRARY_ENV)
    )


@pytest.mark.parametrize(("overlay", "workload", "name"), list(_cases()))
def test_container_starts_with_its_environment(
    overlay, workload, name, tmp_path, environ, monkeypatch
):
    filled = _filled()
    objects, _, pod, container, (module, args) = _find(overlay, workload, name)
    where = f"{overlay}: {workload} container {name}"
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    moved = materialize(objects, filled, pod, container, tmp_path)
    env = {k: relocate(v, moved) for k, v in pod_env(objects, filled, container).items()}
    args = [_relocate_arg(a, moved) for a in args]
    environ(env)

    if module in SERVICE_SETTINGS:
        settings_cls = _load(SERVICE_SETTINGS[module])
        assert not args, f"{where}: {module} takes no options, given {args}"
        # The container's own variables; the shared ConfigMap is checked below.
        own = [item["name"] for item in container.get("env", [])]
        known = _known_env(settings_cls)
        unknown = sorted(n for n in own if n not in known and not n.startswith(LIBRARY_PREFIXES))
        assert not unknown, f"{where}: variables no setting reads: {unknown}"
        settings = settings_cls()  # the validators of OURVIDZ_ENV
        # What main() builds before it reaches the network.
        settings.token_verifier()
        settings.prompt_policy()
        if settings.db_service:
            assert settings.service_database_url().startswith("postgresql://")
        if hasattr(settings, "worker_signer"):
            settings.worker_signer()
        if hasattr(settings, "token_signer"):
            settings.token_signer()
        if module != "services.enhancer":
            store_from_settings(settings)
        _check_listening(where, module, settings, container)
        _check_writable(where, pod, container, pod_env(objects, filled, container))
        if settings.env == "prod" and module not in ("services.gateway", "services.enhancer"):
            assert settings.storage_backend == "s3", f"{where}: prod keeps blobs in S3"
            assert settings.s3_access_key.get_secret_value(), f"{where}: no S3_ACCESS_KEY"
    elif module == "ourvidz.kube_secrets":
        if args[:1] == ["wait"]:
            # Every variable it waits for is one the container is given, and
            # every file one of its mounts holds once the Secrets are filled.
            assert kube_secrets.main([*args, "--timeout=0"]) == 0, f"{where}: would wait forever"
        else:
            assert args == ["fill"], f"{where}: {args}"
            assert pod.get("serviceAccountName"), f"{where}: no ServiceAccount"
    elif module == "ourvidz.migrate":
        calls = []
        monkeypatch.setattr(migrate, "await_schema", lambda url, wait: calls.append(url) or set())
        monkeypatch.setattr(migrate, "retrying", lambda what, fn, wait: calls.append(what))
        monkeypatch.setattr(migrate, "bootstrap", lambda url, emails: None)
        try:
            assert migrate.main(args) == 0, where
        except SystemExit as exc:  # argparse
            pytest.fail(f"{where}: python -m ourvidz.migrate {' '.join(args)}: exit {exc.code}")
        assert calls, where
    else:
        pytest.fail(f"{where}: python -m {module}: no simulation of this module")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_shared_setting_is_read(overlay):
    """Each key of ourvidz-config is read by a process it is given to."""
    objects = list(render_overlay(overlay))
    config = named(objects, "ConfigMap")["ourvidz-config"]["data"]
    known: set[str] = set(LIBRARY_ENV)
    for _, _, _, container, (module, _) in python_containers(overlay):
        uses = any(
            s.get("configMapRef", {}).get("name") == "ourvidz-config"
            for s in container.get("envFrom", [])
        )
        if uses and module in SERVICE_SETTINGS:
            known |= _known_env(_load(SERVICE_SETTINGS[module]))
        elif uses and module == "ourvidz.migrate":
            known |= _known_env(migrate.MigrateSettings)
    unknown = sorted(k for k in config if k not in known and not k.startswith(LIBRARY_PREFIXES))
    assert not unknown, f"{overlay}: ourvidz-config keys no process reads: {unknown}"
