"""The checks can fail: a copy of the manifests, broken on purpose in one way,
renders and is caught by the same check function the overlay tests call, with
a message naming the object."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy import policies, validation
from tests.deploy import render as kube

KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def kustomizations(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name in KUSTOMIZATIONS)


def sources(root: Path) -> list[tuple[Path, list]]:
    """Each YAML file of Kubernetes objects in the tree, with its documents."""
    found = []
    for path in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
        if path.name in KUSTOMIZATIONS:
            continue
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        if any(isinstance(d, dict) and "kind" in d and "metadata" in d for d in docs):
            found.append((path, docs))
    return found


def is_object(doc, kind: str, name: str | None = None) -> bool:
    return (
        isinstance(doc, dict)
        and doc.get("kind") == kind
        and (name is None or (doc.get("metadata") or {}).get("name") == name)
    )


def edit_objects(root: Path, kind: str, name: str | None, fn: Callable[[dict], None]) -> int:
    """Apply fn to every source document of that kind (and name); the count."""
    count = 0
    for path, docs in sources(root):
        hits = [d for d in docs if is_object(d, kind, name)]
        for doc in hits:
            fn(doc)
        if hits:
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            count += len(hits)
    return count


def delete_objects(root: Path, keep: Callable[[dict], bool]) -> int:
    """Drop the source documents `keep` refuses; a file left empty is dropped
    from its kustomization too. The count dropped."""
    dropped = 0
    for path, docs in sources(root):
        kept = [d for d in docs if not isinstance(d, dict) or keep(d)]
        if len(kept) == len(docs):
            continue
        dropped += len(docs) - len(kept)
        if any(kept):
            path.write_text(yaml.safe_dump_all(kept, sort_keys=False))
            continue
        path.unlink()
        for kfile in kustomizations(root):
            doc = yaml.safe_load(kfile.read_text())
            resources = doc.get("resources") or []
            left = [r for r in resources if (kfile.parent / r).resolve() != path.resolve()]
            if left != resources:
                doc["resources"] = left
                kfile.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dropped


def edit_kustomizations(root: Path, fn: Callable[[dict], bool]) -> int:
    count = 0
    for kfile in kustomizations(root):
        doc = yaml.safe_load(kfile.read_text())
        if fn(doc):
            kfile.write_text(yaml.safe_dump(doc, sort_keys=False))
            count += 1
    return count


def first_container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


# -- the breaks --------------------------------------------------------------


def drop_namespace(root: Path) -> int:
    count = edit_kustomizations(root, lambda doc: doc.pop("namespace", None) is not None)
    for path, docs in sources(root):
        hits = [
            d
            for d in docs
            if isinstance(d, dict) and (d.get("metadata") or {}).pop("namespace", None)
        ]
        if hits:
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            count += len(hits)
    return count


def gateway_db_secret() -> str:
    return kube.DB_LOGINS["gateway"]


def rename_secret(root: Path) -> int:
    old = gateway_db_secret()

    def rename(doc):
        doc["metadata"]["name"] = old + "-renamed"

    def rename_generated(doc):
        hit = False
        for gen in doc.get("secretGenerator") or []:
            if gen.get("name") == old:
                gen["name"] = old + "-renamed"
                hit = True
        return hit

    return edit_objects(root, "Secret", old, rename) + edit_kustomizations(root, rename_generated)


def gateway_pdbs(root: Path) -> set[str]:
    objects = list(kube.render_overlay("prod", root))
    labels = kube.pod_labels(kube.named(objects, "Deployment")["gateway"])
    return {
        name
        for name, pdb in kube.named(objects, "PodDisruptionBudget").items()
        if kube.selects(pdb["spec"].get("selector"), labels)
    }


def remove_gateway_pdb(root: Path) -> int:
    names = gateway_pdbs(root)
    return delete_objects(
        root,
        lambda d: not (d.get("kind") == "PodDisruptionBudget" and d["metadata"]["name"] in names),
    )


def tag_latest(root: Path) -> int:
    def latest(doc):
        images = doc.get("images") or []
        for image in images:
            image.pop("digest", None)
            image["newTag"] = "latest"
        return bool(images)

    return edit_kustomizations(root, latest)


def unknown_cr_field(root: Path) -> int:
    return edit_objects(root, "ScaledObject", "sdxl", lambda d: d["spec"].update(replicas=2))


def worker_gets_db_login(root: Path) -> int:
    def add(doc):
        first_container(doc).setdefault("envFrom", []).append(
            {"secretRef": {"name": gateway_db_secret()}}
        )

    return edit_objects(root, "Deployment", "sdxl", add)


def worker_on_service_image(root: Path) -> int:
    return edit_objects(
        root, "Deployment", "sdxl", lambda d: first_container(d).update(image="ourvidz")
    )


def drop_readiness(root: Path) -> int:
    return edit_objects(
        root, "Deployment", "gateway", lambda d: first_container(d).pop("readinessProbe", None)
    )


def mount_token(root: Path) -> int:
    def mount(doc):
        doc["spec"]["template"]["spec"]["automountServiceAccountToken"] = True

    return edit_objects(root, "Deployment", "sdxl", mount)


def remove_default_deny(root: Path) -> int:
    def keep(doc):
        spec = doc.get("spec") or {}
        return not (
            doc.get("kind") == "NetworkPolicy"
            and not spec.get("podSelector")
            and not spec.get("ingress")
            and not spec.get("egress")
        )

    return delete_objects(root, keep)


def dev_gets_a_gpu(root: Path) -> int:
    def gpu(doc):
        resources = first_container(doc).setdefault("resources", {})
        resources.setdefault("limits", {})[kube.GPU] = 1

    return edit_objects(root, "Deployment", "sdxl", gpu)


def drop_scaled_object(root: Path) -> int:
    return delete_objects(
        root, lambda d: not (d.get("kind") == "ScaledObject" and d["metadata"]["name"] == "wan")
    )


def wan_scales_on_a_consumers_lag(root: Path) -> int:
    def lag(doc):
        doc["spec"]["triggers"] = [
            {
                "type": "nats-jetstream",
                "metadata": {
                    "natsServerMonitoringEndpoint": "nats-headless.ourvidz.svc:8222",
                    "stream": "TASKS",
                    "consumer": "wan-fast",
                    "lagThreshold": "2",
                },
            }
        ]

    return edit_objects(root, "ScaledObject", "wan", lag)


def wan_reads_sdxls_backlog(root: Path) -> int:
    def other(doc):
        meta = doc["spec"]["triggers"][0]["metadata"]
        meta["query"] = meta["query"].replace('family="wan"', 'family="sdxl"')

    return edit_objects(root, "ScaledObject", "wan", other)


def enhancer_on_a_gone_consumer(root: Path) -> int:
    def gone(doc):
        doc["spec"]["triggers"][0]["metadata"]["consumer"] = "enhance-fast"

    return edit_objects(root, "ScaledObject", "enhancer", gone)


def unparsable_config(root: Path) -> int:
    path = root / "overlays" / "prod" / "kustomization.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.setdefault("configMapGenerator", []).append(
        {"name": "dashboards-broken", "literals": ['ourvidz.json={"panels": [']}
    )
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return 1


def host_drifts(root: Path) -> int:
    def rename(doc):
        doc["spec"]["rules"][0]["host"] = "downloads.example.org"

    return edit_objects(root, "Ingress", "s3", rename)


def store_outgrows_volume(root: Path) -> int:
    def grow(doc):
        doc["data"]["nats.conf"] = doc["data"]["nats.conf"].replace(
            "max_file_store: 900MB", "max_file_store: 4GB"
        )

    return edit_objects(root, "ConfigMap", "nats-config", grow)


def pod_security_dropped(root: Path) -> int:
    return edit_objects(root, "Namespace", None, lambda d: d["metadata"].pop("labels", None))


def tls_on_one_host(root: Path) -> int:
    def tls(doc):
        doc["spec"]["tls"] = [{"hosts": [doc["spec"]["rules"][0]["host"]], "secretName": "x"}]

    return edit_objects(root, "Ingress", "gateway", tls)


def gomemlimit_over_limit(root: Path) -> int:
    def over(doc):
        for item in first_container(doc).get("env", []):
            if item["name"] == "GOMEMLIMIT":
                item["value"] = "600MiB"

    return edit_objects(root, "StatefulSet", "nats", over)


BREAKS = {
    # break: (how, the check that catches it, what its message names, overlay)
    "namespace-dropped": (drop_namespace, policies.check_namespace, "metadata.namespace", "prod"),
    "secret-renamed": (
        rename_secret,
        policies.check_references,
        f"Secret/{gateway_db_secret()}",
        "prod",
    ),
    "pdb-removed": (
        remove_gateway_pdb,
        policies.check_disruption_budgets,
        "Deployment/gateway",
        "prod",
    ),
    "image-latest": (tag_latest, policies.check_images, "is tagged latest", "prod"),
    "cr-unknown-field": (
        unknown_cr_field,
        validation.check_schemas,
        "ScaledObject/sdxl: spec",
        "prod",
    ),
    "worker-db-login": (
        worker_gets_db_login,
        policies.check_database_logins,
        "Deployment/sdxl",
        "prod",
    ),
    "worker-service-image": (
        worker_on_service_image,
        policies.check_image_split,
        "Deployment/sdxl",
        "prod",
    ),
    "readiness-dropped": (drop_readiness, policies.check_probes, "Deployment/gateway", "prod"),
    "token-mounted": (mount_token, policies.check_service_accounts, "Deployment/sdxl", "prod"),
    "default-deny-removed": (
        remove_default_deny,
        policies.check_default_deny,
        "NetworkPolicy",
        "prod",
    ),
    "scaled-object-removed": (
        drop_scaled_object,
        policies.check_gpu_autoscaling,
        "Deployment/wan",
        "prod",
    ),
    "scaling-on-consumer-lag": (
        wan_scales_on_a_consumers_lag,
        policies.check_queue_scaling,
        "ScaledObject/wan: spec.triggers has no prometheus trigger",
        "prod",
    ),
    "scaling-on-another-family": (
        wan_reads_sdxls_backlog,
        policies.check_queue_scaling,
        "ScaledObject/wan: spec.triggers[0].metadata.query reads family 'sdxl'",
        "prod",
    ),
    "enhancer-on-a-gone-consumer": (
        enhancer_on_a_gone_consumer,
        policies.check_queue_scaling,
        "ScaledObject/enhancer",
        "prod",
    ),
    "config-unparsable": (
        unparsable_config,
        policies.check_config_files,
        "data[ourvidz.json] does not parse",
        "prod",
    ),
    "dev-gpu": (dev_gets_a_gpu, policies.check_dev_cpu_only, "Deployment/sdxl", "dev"),
    "public-host-drift": (
        host_drifts,
        policies.check_public_names,
        "S3_PUBLIC_ENDPOINT",
        "prod",
    ),
    "nats-store-outgrows-volume": (
        store_outgrows_volume,
        policies.check_nats_store,
        "max_file_store 4GB",
        "dev",
    ),
    "pod-security-dropped": (
        pod_security_dropped,
        policies.check_pod_security,
        "Namespace/ourvidz",
        "dev",
    ),
    "tls-on-one-host": (tls_on_one_host, policies.check_ingress_tls, "Ingress/s3", "dev"),
    "gomemlimit-over-limit": (
        gomemlimit_over_limit,
        policies.check_go_memory_limits,
        "StatefulSet/nats",
        "dev",
    ),
}


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "k8s"
    shutil.copytree(kube.DEPLOY_ROOT, root)
    return root


@pytest.mark.parametrize("name", BREAKS)
def test_a_broken_copy_is_caught(tree, name):
    breaker, check, names, overlay = BREAKS[name]
    try:
        before = set(check(list(kube.render_overlay(overlay))))
    except kube.RenderError:
        pytest.skip(f"overlays/{overlay} does not render: see test_overlay_renders[{overlay}]")
    edits = breaker(tree)
    assert edits, f"{name}: found nothing to break in {kube.DEPLOY_ROOT} ({breaker.__name__})"
    try:
        broken = kube.render(tree / "overlays" / overlay)
    except kube.RenderError as e:
        pytest.fail(f"{name}: the broken copy no longer renders:\n{e}", pytrace=False)
    caught = set(check(broken)) - before
    assert caught, f"{name}: {check.__name__} did not catch it"
    assert any(names in line for line in caught), (
        f"{name}: {check.__name__} caught it but named no {names!r}:\n  " + "\n  ".join(caught)
    )
