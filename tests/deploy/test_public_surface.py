"""What the ingress publishes: the gateway, and of MinIO only the buckets
users download from (presigned, path style). MinIO's admin API, the bucket
listing and the backups' bucket stay inside the cluster."""

from __future__ import annotations

import pytest

from ourvidz.catalog import ALL_BUCKETS
from tests.deploy.render import OVERLAYS, named, render_overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_s3_ingress_routes_only_the_download_buckets(overlay):
    objects = list(render_overlay(overlay))
    ingress = named(objects, "Ingress")["s3"]
    routed = set()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["pathType"] in ("Prefix", "Exact"), path
            routed.add(path["path"].rstrip("/"))
    assert routed == {f"/{b}" for b in ALL_BUCKETS}, sorted(routed ^ {f"/{b}" for b in ALL_BUCKETS})
    # Every routed bucket is one the Tenant makes.
    tenant = named(objects, "Tenant")["ourvidz-minio"]
    made = {b["name"] for b in tenant["spec"].get("buckets", [])}
    assert set(ALL_BUCKETS) <= made, sorted(set(ALL_BUCKETS) - made)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_ingress_reaches_the_gateway_alone(overlay):
    objects = list(render_overlay(overlay))
    backends = {
        (p["backend"]["service"]["name"], p["backend"]["service"]["port"].get("name"))
        for rule in named(objects, "Ingress")["gateway"]["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    assert backends == {("gateway", "http")}
