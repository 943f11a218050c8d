"""Each overlay renders with the pinned kubectl, every object in it validates
against its schema, and the render keeps the deployment's rules."""

from __future__ import annotations

import pytest

from tests.deploy import manifests as m


def rendered(overlay: str) -> list[dict]:
    try:
        return list(m.render_overlay(overlay))
    except m.RenderError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_overlay_renders(overlay):
    objects = rendered(overlay)
    assert objects, f"overlays/{overlay} renders no object"


CASES = [(overlay, name) for overlay in m.OVERLAYS for name in m.checks_for(overlay)]


@pytest.mark.parametrize(("overlay", "check"), CASES, ids=[f"{o}-{c}" for o, c in CASES])
def test_policy(overlay, check):
    objects = rendered(overlay)
    fn = m.checks_for(overlay)[check]
    problems = fn(objects)
    rule = " ".join(fn.__doc__.split())
    assert not problems, f"overlays/{overlay}: {rule}\n  " + "\n  ".join(problems)
