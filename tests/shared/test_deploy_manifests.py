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
