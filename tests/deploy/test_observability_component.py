"""The observability component of the k8s manifests, built on the base with
kustomize (`kubectl kustomize`), and the Grafana dashboard: every service
serves its metrics on the `metrics` port, is annotated for Prometheus and
sends its traces to the collector; the collector runs hardened and reachable;
the dashboard shows every metric."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ourvidz import metrics
from tests.deploy.render import kubectl

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "observability"
DASHBOARD = ROOT / "deploy" / "grafana" / "ourvidz.json"
SERVICES = ("gateway", "jobs", "workspace", "enhancer", "sdxl", "wan")
COLLECTOR = "otel-collector"


@pytest.fixture(scope="module", params=["base", "overlays/dev", "overlays/prod"])
def built(request, tmp_path_factory) -> list[dict]:
    """The base or an overlay, with the component, as an overlay that sets the
    namespace and adds the component would build it."""
    source = ROOT / "deploy" / "k8s" / request.param
    listed = yaml.safe_load((source / "kustomization.yaml").read_text()).get("components", [])
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "ourvidz",
                "resources": [os.path.relpath(source, overlay)],
                # prod lists the component itself; the others get it here.
                "components": []
                if any(Path(c).name == COMPONENT.name for c in listed)
                else [os.path.relpath(COMPONENT, overlay)],
            }
        )
    )
    out = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_everything_is_in_the_namespace(built):
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "ourvidz", doc["metadata"]["name"]


def test_every_service_exports_metrics_and_traces(built):
    deployments = by_kind(built, "Deployment")
    assert set(SERVICES) <= set(deployments)
    config = by_kind(built, "ConfigMap")["ourvidz-config"]["data"]
    assert config["METRICS_PORT"] == "9464" and config["METRICS_HOST"] == "0.0.0.0"
    for name in SERVICES:
        template = deployments[name]["spec"]["template"]
        container = template["spec"]["containers"][0]
        assert {"configMapRef": {"name": "ourvidz-config"}} in container["envFrom"], name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317", name
        assert env["OTEL_TRACES_EXPORTER"] == "otlp", name
        ports = [p for p in container["ports"] if p["name"] == "metrics"]
        assert ports == [{"name": "metrics", "containerPort": 9464}], name
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == "9464", name


def test_the_collector_is_pinned_hardened_probed_and_reachable(built):
    deployment = by_kind(built, "Deployment")[COLLECTOR]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] in by_kind(built, "ServiceAccount")
    (container,) = pod["containers"]
    image, _, tag = container["image"].rpartition(":")
    assert image == "otel/opentelemetry-collector-contrib" and tag[:1].isdigit(), tag
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container, probe
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    # The config volume names the generated ConfigMap (with its hash suffix).
    configmaps = by_kind(built, "ConfigMap")
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] in configmaps
    config = yaml.safe_load(next(iter(configmaps[volume["configMap"]["name"]]["data"].values())))
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]

    service = by_kind(built, "Service")[COLLECTOR]
    assert {p["port"] for p in service["spec"]["ports"]} >= {4317, 4318}
    pdb = by_kind(built, "PodDisruptionBudget")[COLLECTOR]
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": COLLECTOR}
    assert deployment["spec"]["replicas"] > pdb["spec"].get("maxUnavailable", 0)


def test_network_policies_let_the_services_and_prometheus_in(built):
    policies = by_kind(built, "NetworkPolicy")
    assert "default-deny" in policies  # the base's: only what a policy allows flows
    collector = policies[COLLECTOR]
    assert collector["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": COLLECTOR}
    rules = collector["spec"]["ingress"]
    otlp = next(r for r in rules if {p["port"] for p in r["ports"]} == {4317, 4318})
    senders = otlp["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert set(senders) == set(SERVICES)
    assert any(p["port"] == 8888 for r in rules for p in r["ports"])
    # Every pod may send to the collector (the base's egress), Prometheus may
    # reach the services' metrics port (the base's `metrics` policy).
    egress = policies["dns-and-telemetry"]["spec"]["egress"]
    assert any(
        to.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": COLLECTOR}
        and {"protocol": "TCP", "port": 4317} in rule["ports"]
        for rule in egress
        for to in rule.get("to", [])
    )
    metrics_in = policies["metrics"]["spec"]["ingress"]
    assert any(p["port"] == 9464 for r in metrics_in for p in r["ports"])


def test_the_dashboard_configmap_is_the_dashboard_file(built):
    dashboards = [
        d
        for d in by_kind(built, "ConfigMap").values()
        if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 1
    assert json.loads(dashboards[0]["data"]["ourvidz.json"]) == json.loads(DASHBOARD.read_text())


def test_the_scrape_config_discovers_annotated_pods():
    config = yaml.safe_load((COMPONENT / "prometheus-scrape.yaml").read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["ourvidz"]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    # No target label that a metric's own labels use (ourvidz_stage_seconds has `service`).
    assert not {r.get("target_label") for r in job["relabel_configs"]} & {"service", "job_type"}


def exported_metrics() -> set[str]:
    """Every metric ourvidz.metrics defines, the GPU ones and the stage metric."""
    names = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if isinstance(name, str) and name.startswith("ourvidz_"):
            names.add(name)
    names |= {
        "ourvidz_gpu_memory_allocated_bytes",
        "ourvidz_gpu_memory_reserved_bytes",
        "ourvidz_gpu_memory_max_allocated_bytes",
        "ourvidz_stage_seconds",
    }
    return names


def test_the_dashboard_has_a_panel_for_every_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    names = exported_metrics()
    assert "ourvidz_job_queue_seconds" in names and len(names) > 15
    # The queue's "declared" flag is for alerts, not a panel.
    missing = {n for n in names - {"ourvidz_queue_consumer_declared"} if n not in exprs}
    assert not missing, missing
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
