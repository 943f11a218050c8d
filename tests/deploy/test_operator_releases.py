"""The operators docs/DEPLOY.md installs are the releases whose CRD schemas
the deploy tests validate against (tests/deploy/schemas/README.md), every
operator whose custom resources the manifests use is installed, and the
Kubernetes floor the docs ask for is the one the tests validate for."""

from __future__ import annotations

import re

import pytest

from tests.deploy import releases
from tests.deploy.render import KUBERNETES_VERSION, SCHEMAS


def docs_text() -> str:
    return releases.DEPLOY_DOC.read_text()


def readme_text() -> str:
    return releases.SCHEMAS_README.read_text()


def test_docs_install_the_releases_the_schemas_are_vendored_from():
    installed = releases.installed_releases(docs_text())
    vendored = releases.vendored_releases(readme_text())
    assert installed.keys() & vendored.keys(), (
        "docs/DEPLOY.md installs no operator the schemas README lists: "
        f"installs {sorted(installed)}, vendored {sorted(vendored)}"
    )
    drift = releases.release_drift(installed, vendored)
    assert not drift, "\n".join(drift)


def test_every_operator_whose_resources_the_manifests_use_is_installed():
    """A custom resource in deploy/k8s validates against a vendored schema;
    the operator that schema came from must be one docs/DEPLOY.md installs
    (at that release, by the test above)."""
    rows = releases.vendored_rows(readme_text())
    api_repo = {releases.schema_api(SCHEMAS / row["file"]): row["repo"] for row in rows}
    used = releases.manifest_apis()
    installed = releases.installed_releases(docs_text())
    missing = sorted(
        f"{api_version} {kind} (schema from {repo})"
        for (api_version, kind), repo in api_repo.items()
        if (api_version, kind) in used and repo not in installed
    )
    assert not missing, "the manifests use custom resources of an operator docs/DEPLOY.md " + (
        "does not install: " + ", ".join(missing)
    )
    assert any(key in used for key in api_repo), "no vendored kind found in deploy/k8s"


def test_the_schemas_table_lists_every_vendored_file():
    listed = {row["file"] for row in releases.vendored_rows(readme_text())}
    on_disk = {p.name for p in SCHEMAS.glob("*.json")}
    assert listed == on_disk, (
        f"in the README table only: {sorted(listed - on_disk)}; "
        f"vendored but not in the table: {sorted(on_disk - listed)}"
    )


def test_the_docs_kubernetes_floor_is_the_one_the_tests_validate_for():
    assert releases.kubernetes_floor(docs_text()) == KUBERNETES_VERSION


# -- the checks can fail ---------------------------------------------------------

DOCS = """\
# Deploying

## Prerequisites

A cluster (Kubernetes 1.30 or newer).

```sh
# CloudNativePG
kubectl apply --server-side -f \\
  https://raw.githubusercontent.com/cloudnative-pg/cloudnative-pg/release-1.30/releases/cnpg-1.30.0.yaml
kubectl -n cnpg-system rollout status deploy/cnpg-controller-manager

# MinIO operator (see github.com/minio/operator?ref=v1.0.0 for nothing: a comment)
kubectl apply -k "github.com/minio/operator?ref=v7.1.1"

kubectl apply --server-side -f \\
  https://github.com/kedacore/keda/releases/download/v2.20.2/keda-2.20.2.yaml
```

## Images

```sh
kubectl apply -f https://github.com/example/elsewhere/releases/download/v9.9.9/x.yaml
```
"""

README = """\
| file | CRD | source repository | path | release |
| --- | --- | --- | --- | --- |
| `a.json` | Cluster | github.com/cloudnative-pg/cloudnative-pg | `c.yaml` | v1.30.0 (4b5e244a) |
| `b.json` | ScheduledBackup | github.com/cloudnative-pg/cloudnative-pg | `s.yaml` | v1.30.0 (4b5e244a) |
| `c.json` | Tenant | github.com/minio/operator | `t.yaml` | v7.1.1 (6eee6a7c) |
| `d.json` | ScaledObject | github.com/kedacore/keda | `k.yaml` | v2.20.2 (68a5b502) |
| `e.json` | PodMonitor | github.com/prometheus-operator/prometheus-operator | `p.yaml` | v0.93.0 |
"""


def test_reads_each_form_of_install_command():
    assert releases.installed_releases(DOCS) == {
        "github.com/cloudnative-pg/cloudnative-pg": "1.30.0",
        "github.com/minio/operator": "7.1.1",
        "github.com/kedacore/keda": "2.20.2",
    }
    assert releases.vendored_releases(README) == {
        "github.com/cloudnative-pg/cloudnative-pg": "1.30.0",
        "github.com/minio/operator": "7.1.1",
        "github.com/kedacore/keda": "2.20.2",
        "github.com/prometheus-operator/prometheus-operator": "0.93.0",
    }
    assert (
        releases.release_drift(
            releases.installed_releases(DOCS), releases.vendored_releases(README)
        )
        == []
    )
    assert releases.kubernetes_floor(DOCS) == "1.30"


@pytest.mark.parametrize(
    ("old", "new", "repo", "docs_release", "schema_release"),
    [
        (
            "release-1.30/releases/cnpg-1.30.0.yaml",
            "release-1.25/releases/cnpg-1.25.1.yaml",
            "github.com/cloudnative-pg/cloudnative-pg",
            "1.25.1",
            "1.30.0",
        ),
        ('ref=v7.1.1"', 'ref=v6.0.4"', "github.com/minio/operator", "6.0.4", "7.1.1"),
        (
            "download/v2.20.2/keda-2.20.2.yaml",
            "download/v2.16.1/keda-2.16.1.yaml",
            "github.com/kedacore/keda",
            "2.16.1",
            "2.20.2",
        ),
    ],
)
def test_a_docs_release_other_than_the_vendored_one_is_named(
    old, new, repo, docs_release, schema_release
):
    doctored = DOCS.replace(old, new)
    assert doctored != DOCS
    drift = releases.release_drift(
        releases.installed_releases(doctored), releases.vendored_releases(README)
    )
    assert len(drift) == 1
    assert drift[0].startswith(f"{repo}: docs/DEPLOY.md installs {docs_release},")
    assert drift[0].endswith(f"vendored from {schema_release}")


def test_the_real_docs_doctored_back_to_older_releases_drift():
    """The shipped docs, with the MinIO operator's ref moved back a major:
    the same check the real test runs fails and names it."""
    text = docs_text()
    vendored = releases.vendored_releases(readme_text())
    minio = vendored["github.com/minio/operator"]
    assert f"ref=v{minio}" in text, f"docs/DEPLOY.md has no MinIO operator install at v{minio}"
    doctored = text.replace(f"ref=v{minio}", "ref=v6.0.4")
    drift = releases.release_drift(releases.installed_releases(doctored), vendored)
    assert drift == [
        "github.com/minio/operator: docs/DEPLOY.md installs 6.0.4, the CRD schemas in "
        f"tests/deploy/schemas/ are vendored from {minio}"
    ]


def test_a_schema_vendored_from_a_second_release_is_refused():
    doctored = README.replace("`s.yaml` | v1.30.0 (4b5e244a)", "`s.yaml` | v1.25.1 (0000000a)")
    assert doctored != README
    with pytest.raises(releases.ReleaseTextError, match=re.escape("both 1.30.0 and 1.25.1")):
        releases.vendored_releases(doctored)


def test_a_branch_of_another_minor_is_refused():
    doctored = DOCS.replace("release-1.30/", "release-1.25/")
    with pytest.raises(releases.ReleaseTextError, match=re.escape("1.25 beside release 1.30.0")):
        releases.installed_releases(doctored)


def test_an_install_url_without_a_release_is_refused():
    doctored = DOCS.replace('"github.com/minio/operator?ref=v7.1.1"', "github.com/minio/operator")
    with pytest.raises(releases.ReleaseTextError, match=r"github\.com/minio/operator .*none"):
        releases.installed_releases(doctored)


def test_a_changed_kubernetes_floor_is_read():
    assert releases.kubernetes_floor(DOCS.replace("1.30 or newer", "1.29 or newer")) == "1.29"
