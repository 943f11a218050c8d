"""The NetworkPolicies of each overlay allow exactly the connections the
processes make: every flow below is open on both ends, and no other
connection from one of our pods to a port of another pod in the namespace is.

The flows are the code's: the gateway dials Jobs, Workspace and the enhancer
(services/gateway/app.py) and watches the queue (natslink.py); Jobs asks
Workspace for reference uploads (services/jobs/uploads.py) and reads and
deletes outputs in S3; Workspace files and signs objects in S3; the enhancer
reports to Jobs; the model workers take tasks from NATS, report to Jobs and
write their outputs to S3 themselves (ourvidz/genworker/service.py); the
migration Job talks to PostgreSQL alone; the secrets Job to the Kubernetes API
alone (outside the pod network: not checked here); with the observability
component every service sends traces to the collector.
"""

from __future__ import annotations

import pytest

from tests.deploy.render import (
    NAMESPACE,
    OVERLAYS,
    containers,
    named,
    pod_labels,
    render_overlay,
    selects,
    workloads,
)

POSTGRES = "postgres"
MINIO = "minio"
NATS = "nats"
# Pods the operators make, by the labels they carry, and their ports.
OPERATOR_PODS = {
    POSTGRES: ({"cnpg.io/cluster": "ourvidz-db"}, {5432, 8000}),
    MINIO: ({"v1.min.io/tenant": "ourvidz-minio"}, {9000}),
}
FLOWS = {
    "gateway": {("jobs", 50051), ("workspace", 50052), ("enhancer", 50053)}
    | {(NATS, 4222), (POSTGRES, 5432)},
    "jobs": {("workspace", 50052), (NATS, 4222), (POSTGRES, 5432), (MINIO, 9000)},
    "workspace": {(NATS, 4222), (POSTGRES, 5432), (MINIO, 9000)},
    "enhancer": {("jobs", 50051), (NATS, 4222), (POSTGRES, 5432)},
    "sdxl": {("jobs", 50051), (NATS, 4222), (MINIO, 9000)},
    "wan": {("jobs", 50051), (NATS, 4222), (MINIO, 9000)},
    "migrate": {(POSTGRES, 5432)},
    "secrets": set(),
}
# With the observability component: every service sends its traces.
COLLECTOR = "otel-collector"
SERVICES = ("gateway", "jobs", "workspace", "enhancer", "sdxl", "wan")
# Ports that only the monitoring stack reaches (its own policy).
MONITORING_PORTS = {9464}


def pods(objects) -> dict[str, tuple[dict, set[int]]]:
    """name -> (labels, container ports) of every pod in the namespace."""
    found = {}
    for obj, pod in workloads(objects):
        labels = pod_labels(obj)
        name = labels.get("app.kubernetes.io/name", obj["metadata"]["name"])
        ports = {p["containerPort"] for c in containers(pod) for p in c.get("ports", [])}
        found[name] = (labels, ports)
    return found | OPERATOR_PODS


def _port_matches(rule: dict, port: int, peer_ports: dict) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        value = p.get("port")
        if value is None or value == port or peer_ports.get(value) == port:
            if p.get("protocol", "TCP") == "TCP":
                return True
    return False


def _peer_matches(peers: list | None, labels: dict) -> bool:
    if not peers:
        return True  # no `from`/`to`: every peer
    for peer in peers:
        if "ipBlock" in peer:
            continue  # outside the pod network
        ns = peer.get("namespaceSelector")
        if ns is not None and not selects(ns, {"kubernetes.io/metadata.name": NAMESPACE}):
            continue
        if "podSelector" in peer and not selects(peer["podSelector"], labels):
            continue
        if ns is None and "podSelector" not in peer:
            continue
        return True
    return False


def allowed(policies, direction: str, me: dict, peer: dict, port: int, named_ports) -> bool:
    """Whether the policies selecting `me` let this connection through on
    my side (`direction`: Egress to `peer`, Ingress from it)."""
    mine = [
        p
        for p in policies
        if direction in (p["spec"].get("policyTypes") or ["Ingress"])
        and selects(p["spec"].get("podSelector") or {}, me)
    ]
    if not mine:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    return any(
        _peer_matches(rule.get(peers_key), peer) and _port_matches(rule, port, named_ports)
        for p in mine
        for rule in p["spec"].get(key) or []
    )


def open_flows(objects) -> set[tuple[str, str, int]]:
    policies = list(named(objects, "NetworkPolicy").values())
    everyone = pods(objects)
    named_ports = {}
    for _, pod in workloads(objects):
        for c in containers(pod):
            for p in c.get("ports", []):
                if "name" in p:
                    named_ports[p["name"]] = p["containerPort"]
    found = set()
    for src, (src_labels, _) in everyone.items():
        if src not in FLOWS:
            continue
        for dst, (dst_labels, ports) in everyone.items():
            for port in ports - MONITORING_PORTS:
                if dst == src:
                    continue
                if allowed(
                    policies, "Egress", src_labels, dst_labels, port, named_ports
                ) and allowed(policies, "Ingress", dst_labels, src_labels, port, named_ports):
                    found.add((src, dst, port))
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policies_open_exactly_the_flows_of_the_code(overlay):
    objects = list(render_overlay(overlay))
    everyone = pods(objects)
    assert set(FLOWS) <= set(everyone), f"{overlay}: pods missing: {set(FLOWS) - set(everyone)}"
    want = {(src, dst, port) for src, flows in FLOWS.items() for dst, port in flows}
    if COLLECTOR in everyone:
        # Traces, from every service that is given the exporter (OTEL_*).
        want |= {(s, COLLECTOR, 4317) for s in SERVICES}
    got = open_flows(objects)
    assert not want - got, f"{overlay}: flows the code makes that are blocked: {sorted(want - got)}"
    assert not got - want, f"{overlay}: flows open that no code makes: {sorted(got - want)}"
