"""Who holds which secret in Kubernetes: the gateway alone mounts the token
signing key, each worker only its own worker key, the model workers no
database credentials, and the manifests declare every Secret the workloads
and the engines (CloudNativePG, MinIO) name."""

from __future__ import annotations

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
WORKERS = ("sdxl", "wan", "enhancer")


def base_docs() -> list[dict]:
    docs = []
    for path in sorted((K8S / "base").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def deployments() -> dict[str, dict]:
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in base_docs()
        if doc.get("kind") in ("Deployment", "Job")
    }


def secrets_of(pod: dict) -> set[str]:
    names = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
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
    # The gateway presigns nothing (S3 URLs come from Jobs and Workspace).
    assert "ourvidz-storage" not in secrets_of(pods["gateway"])


def test_every_service_mounts_the_public_keys():
    config = yaml.safe_load((K8S / "base" / "config.yaml").read_text())["data"]
    assert config["AUTH_JWKS_FILE"].startswith("/etc/ourvidz/jwks/")
    for name, pod in deployments().items():
        if name in ("migrate", "secrets"):
            continue
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["jwks"]["configMap"]["name"] == "ourvidz-jwks", name


def _engine_secret_refs(doc: dict) -> set[str]:
    spec = doc.get("spec", {})
    if doc["kind"] == "Cluster":
        refs = {spec["bootstrap"]["initdb"]["secret"]["name"]}
        refs |= {r["passwordSecret"]["name"] for r in spec["managed"]["roles"]}
        creds = spec["backup"]["barmanObjectStore"]["s3Credentials"]
        return refs | {c["name"] for c in creds.values()}
    if doc["kind"] == "Tenant":
        return {spec["configuration"]["name"]} | {u["name"] for u in spec["users"]}
    return set()


def test_the_manifests_declare_every_secret_the_workloads_and_engines_name():
    docs = base_docs()
    declared = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    mounted = set().union(*(secrets_of(pod) for pod in deployments().values()))
    mounted |= set().union(*(_engine_secret_refs(d) for d in docs))
    assert mounted <= declared, mounted - declared
    assert "ourvidz-jwks" in {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
