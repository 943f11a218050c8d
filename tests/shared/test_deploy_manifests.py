"""The Kubernetes manifests hang together: every file a kustomization names
exists, every overlay sets the namespace and pins both images, every workload
runs hardened, probed, sized and under its own ServiceAccount with a
disruption budget, and every service the supervisor starts has a Deployment.
(tests/deploy renders the overlays with kubectl and checks the result.)"""

from pathlib import Path

import pytest
import yaml

from ourvidz import kube_secrets

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())


def kustomizations():
    return sorted(K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_references_exist(path):
    doc = yaml.safe_load(path.read_text())
    refs = [*doc.get("resources", []), *doc.get("components", [])]
    refs += [p["path"] for p in doc.get("patches", []) if "path" in p]
    for ref in refs:
        assert (path.parent / ref).exists(), f"{path}: {ref} missing"


def base_docs():
    for path in sorted((K8S / "base").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def workloads():
    for name, doc in base_docs():
        if doc.get("kind") in ("Deployment", "StatefulSet", "Job"):
            yield name, doc


def containers(doc):
    pod = doc["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize(
    "name,doc", list(workloads()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_workloads_are_hardened(name, doc):
    pod = doc["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # Only the secrets Job talks to the Kubernetes API.
    assert pod["automountServiceAccountToken"] is (doc["metadata"]["name"] == "secrets")
    assert pod["enableServiceLinks"] is False
    for container in containers(doc):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    if doc["kind"] != "Job":
        for container in pod["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, (name, container["name"], probe)


def test_every_service_has_a_deployment():
    services = {p.parent.name for p in (K8S.parents[1] / "services").glob("*/__main__.py")}
    deployed = {doc["metadata"]["name"] for _, doc in workloads() if doc["kind"] == "Deployment"}
    assert services <= deployed, services - deployed


def test_every_workload_has_its_own_service_account_and_a_disruption_budget():
    docs = [doc for _, doc in base_docs()]
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    }
    used = []
    for _, doc in workloads():
        pod = doc["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] in accounts, doc["metadata"]["name"]
        used.append(pod["serviceAccountName"])
        if doc["kind"] != "Job":
            assert doc["metadata"]["name"] in budgets, doc["metadata"]["name"]
    assert len(used) == len(set(used)), "a ServiceAccount shared by two workloads"


def test_every_service_exposes_its_metrics_port():
    for _, doc in workloads():
        if doc["kind"] == "Deployment":
            ports = {
                p["name"]: p["containerPort"]
                for p in doc["spec"]["template"]["spec"]["containers"][0]["ports"]
            }
            assert ports.get("metrics") == 9464, doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_set_the_namespace_and_pin_both_images(overlay):
    doc = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    assert doc["namespace"] == "ourvidz"
    images = {i["name"]: i for i in doc["images"]}
    assert set(images) == {"ourvidz", "ourvidz-gpu"}
    for image in images.values():
        assert image["newTag"] and image["newTag"] != "latest"
    assert "secretGenerator" not in doc and "configMapGenerator" not in doc


def test_the_gpu_image_runs_the_model_workers_and_the_slim_one_the_rest():
    for _, doc in workloads():
        name = doc["metadata"]["name"]
        images = {c["image"] for c in containers(doc)}
        if name in ("sdxl", "wan", "enhancer"):
            assert images == {"ourvidz-gpu"}, name
        elif name != "nats":
            assert images == {"ourvidz"}, name


DB_SERVICES = ("gateway", "jobs", "workspace", "enhancer")


def secret_refs(doc) -> set[str]:
    return {
        ref["secretRef"]["name"]
        for c in containers(doc)
        for ref in c.get("envFrom", [])
        if "secretRef" in ref
    }


def test_each_service_gets_only_its_own_database_login():
    """The migration Job alone gets the owner's URL; a service with a database
    gets its own role's Secret and no other; a worker gets none."""
    for _, doc in workloads():
        name, refs = doc["metadata"]["name"], secret_refs(doc)
        db_refs = {r for r in refs if r.startswith("ourvidz-db-")}
        if name == "migrate":
            assert db_refs == {"ourvidz-db-migrate"}, name
        elif name in DB_SERVICES:
            assert db_refs == {f"ourvidz-db-{name}"}, name
        else:
            assert db_refs == set(), name


def test_the_secrets_job_may_touch_exactly_the_objects_it_fills():
    docs = [doc for _, doc in base_docs()]
    role = next(
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "ourvidz-secrets"
    )
    allowed = {
        f"{'Secret' if rule['resources'] == ['secrets'] else 'ConfigMap'}/{name}"
        for rule in role["rules"]
        for name in rule["resourceNames"]
    }
    for rule in role["rules"]:
        assert set(rule["verbs"]) == {"get", "patch"}
    assert allowed == set(kube_secrets.objects())
    declared = {
        f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in ("Secret", "ConfigMap")
    }
    assert allowed <= declared
    # Declared empty: an apply never overwrites what the Job filled.
    for d in docs:
        if f"{d['kind']}/{d['metadata']['name']}" in allowed:
            assert not d.get("data") and not d.get("stringData"), d["metadata"]["name"]


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
