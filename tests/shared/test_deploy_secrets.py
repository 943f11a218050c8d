"""Who holds which secret in Kubernetes: the gateway alone mounts the token
signing key, each worker only its own worker key, the model workers no
database credentials, and every overlay generates what the workloads mount."""

from __future__ import annotations

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
WORKERS = ("sdxl", "wan", "enhancer")


def deployments() -> dict[str, dict]:
    found = {}
    for path in sorted((K8S / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "Job"):
                found[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return found


def secrets_of(pod: dict) -> set[str]:
    names = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    for container in pod["containers"]:
        names |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    return names


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["containers"][0].get("env", [])}


def test_the_gateway_alone_holds_the_signing_key():
    pods = deployments()
    holders = {name for name, pod in pods.items() if "ourvidz-signing-key" in secrets_of(pod)}
    assert holders == {"gateway"}
    assert env_of(pods["gateway"])["AUTH_SIGNING_KEY_FILE"].startswith("/etc/ourvidz/signing/")


def test_each_worker_holds_its_own_key_and_nothing_more():
    pods = deployments()
    for name in WORKERS:
        own = f"ourvidz-worker-key-{name}"
        holders = {n for n, pod in pods.items() if own in secrets_of(pod)}
        assert holders == {name}, (own, holders)
        assert env_of(pods[name])["WORKER_KEY_FILE"].startswith("/etc/ourvidz/worker/")
    for name in ("sdxl", "wan"):
        assert secrets_of(pods[name]) == {"ourvidz-storage", f"ourvidz-worker-key-{name}"}


def test_every_service_mounts_the_public_keys():
    config = yaml.safe_load((K8S / "base" / "config.yaml").read_text())["data"]
    assert config["AUTH_JWKS_FILE"].startswith("/etc/ourvidz/jwks/")
    for name, pod in deployments().items():
        if name == "migrate":
            continue
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["jwks"]["configMap"]["name"] == "ourvidz-jwks", name


def test_overlays_generate_every_secret_the_workloads_mount():
    mounted = set().union(*(secrets_of(pod) for pod in deployments().values()))
    for overlay in sorted((K8S / "overlays").iterdir()):
        doc = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        generated = {s["name"] for s in doc.get("secretGenerator", [])}
        assert mounted <= generated, (overlay.name, mounted - generated)
        assert "ourvidz-jwks" in {c["name"] for c in doc.get("configMapGenerator", [])}
