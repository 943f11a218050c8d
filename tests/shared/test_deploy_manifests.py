"""The Kubernetes manifests hang together: every file a kustomization names
exists, every workload runs hardened and is probed, and every service the
supervisor starts has a Deployment."""

from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def kustomizations():
    return sorted(K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_references_exist(path):
    doc = yaml.safe_load(path.read_text())
    for ref in [*doc.get("resources", []), *doc.get("components", [])]:
        assert (path.parent / ref).exists(), f"{path}: {ref} missing"


def workloads():
    for path in sorted((K8S / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "Job"):
                yield path.name, doc


@pytest.mark.parametrize(
    "name,doc", list(workloads()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_workloads_are_hardened(name, doc):
    pod = doc["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        if doc["kind"] == "Deployment":
            assert "readinessProbe" in container and "livenessProbe" in container


def test_every_service_has_a_deployment():
    services = {p.parent.name for p in (K8S.parents[1] / "services").glob("*/__main__.py")}
    deployed = {doc["metadata"]["name"] for _, doc in workloads() if doc["kind"] == "Deployment"}
    assert services <= deployed, services - deployed


DB_SERVICES = ("gateway", "jobs", "workspace", "enhancer")


def secret_refs(doc) -> set[str]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    return {
        ref["secretRef"]["name"]
        for c in containers
        for ref in c.get("envFrom", [])
        if "secretRef" in ref
    }


def test_each_service_gets_only_its_own_database_login():
    """The migration Job alone gets the owner's URL; a service with a database
    gets its own role's Secret and no other; a worker gets none."""
    for _, doc in workloads():
        name, refs = doc["metadata"]["name"], secret_refs(doc)
        db_refs = {r for r in refs if r.startswith("ourvidz-db-")}
        if doc["kind"] == "Job":
            assert db_refs == {"ourvidz-db-migrate"}, name
        elif name in DB_SERVICES:
            assert db_refs == {f"ourvidz-db-{name}"}, name
        else:
            assert db_refs == set(), name


@pytest.mark.parametrize("overlay", sorted(p.name for p in (K8S / "overlays").iterdir()))
def test_overlays_generate_every_database_secret_from_examples(overlay):
    folder = K8S / "overlays" / overlay
    doc = yaml.safe_load((folder / "kustomization.yaml").read_text())
    generated = {g["name"]: g.get("envs", []) for g in doc.get("secretGenerator", [])}
    wanted = {"ourvidz-db-migrate", *(f"ourvidz-db-{s}" for s in DB_SERVICES)}
    assert wanted <= set(generated)
    for name in wanted:
        for env_file in generated[name]:
            example = (folder / f"{env_file}.example").read_text()
            keys = {
                line.split("=", 1)[0]
                for line in example.splitlines()
                if "=" in line and line[0] != "#"
            }
            if name == "ourvidz-db-migrate":
                assert "DATABASE_URL" in keys
            else:
                assert keys == {f"{name.removeprefix('ourvidz-db-').upper()}_DATABASE_URL"}
    assert not (folder / "secrets.env.example").exists()


def test_the_gateway_reads_client_addresses_through_the_ingress(base_env):
    """Behind the ingress the gateway's peers are proxies: unless they are
    trusted, every client shares the ingress's address and its sign-in limit."""
    from services.gateway.settings import GatewaySettings
    from tests.conftest import make_settings

    config = yaml.safe_load((K8S / "base" / "config.yaml").read_text())["data"]
    settings = make_settings(
        GatewaySettings, base_env, gateway_trusted_proxies=config["GATEWAY_TRUSTED_PROXIES"]
    )
    assert "10.0.0.0/8" in settings.gateway_trusted_proxies
