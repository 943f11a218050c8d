"""Each overlay renders with the pinned kubectl, every object in it validates
against its schema, and the render keeps the deployment's rules."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.deploy import policies
from tests.deploy import render as kube


def rendered(overlay: str) -> list[dict]:
    """The overlay's objects; a test that needs them is skipped when it does
    not render (test_overlay_renders fails with kubectl's message)."""
    try:
        return list(kube.render_overlay(overlay))
    except kube.RenderError:
        pytest.skip(f"overlays/{overlay} does not render: see test_overlay_renders[{overlay}]")


@pytest.mark.parametrize("overlay", kube.OVERLAYS)
def test_overlay_renders(overlay):
    try:
        objects = kube.render_overlay(overlay)
    except kube.RenderError as e:
        pytest.fail(str(e), pytrace=False)
    assert objects, f"overlays/{overlay} renders no object"


CASES = [(overlay, name) for overlay in kube.OVERLAYS for name in policies.checks_for(overlay)]


@pytest.mark.parametrize(("overlay", "check"), CASES, ids=[f"{o}-{c}" for o, c in CASES])
def test_policy(overlay, check):
    objects = rendered(overlay)
    fn = policies.checks_for(overlay)[check]
    problems = fn(objects)
    rule = " ".join(fn.__doc__.split())
    assert not problems, f"overlays/{overlay}: {rule}\n  " + "\n  ".join(problems)


def components_outside(overlay: str) -> list[str]:
    """The components under components/ that the overlay does not include."""
    folder = kube.DEPLOY_ROOT / "overlays" / overlay
    doc = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
    used = {(folder / c).resolve() for c in doc.get("components") or []}
    found = sorted(p for p in (kube.DEPLOY_ROOT / "components").glob("*") if p.is_dir())
    return [p.name for p in found if p.resolve() not in used]


@pytest.mark.parametrize("component", components_outside("prod"))
def test_an_optional_component_keeps_prod_valid(tmp_path, component):
    """A component prod leaves out still renders on top of prod and keeps
    every rule: it is validated before anyone turns it on (in an overlay that,
    like prod, puts everything in the ourvidz namespace)."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": kube.NAMESPACE,
                "resources": [os.path.relpath(kube.DEPLOY_ROOT / "overlays" / "prod", tmp_path)],
                "components": [
                    os.path.relpath(kube.DEPLOY_ROOT / "components" / component, tmp_path)
                ],
            }
        )
    )
    rendered("prod")
    try:
        objects = kube.render(tmp_path)
    except kube.RenderError as e:
        pytest.fail(str(e), pytrace=False)
    problems = [
        f"{name}: {line}"
        for name, fn in policies.checks_for("prod").items()
        for line in fn(objects)
    ]
    assert not problems, f"prod + components/{component}:\n  " + "\n  ".join(problems)
