"""The Dockerfile builds two images: `service` (no torch, no models) for the
control plane and `gpu` for the model workers, both running as a non-root
user and neither with the dev tools. The check is also run on broken copies
of a small Dockerfile, so it can be seen to fail."""

from __future__ import annotations

import pytest

from tests.deploy import dockerfile
from tests.deploy import render as kube

DOCKERFILE = kube.DOCKERFILE

GOOD = """\
FROM python:3.11-slim AS base
RUN useradd --uid 10001 app

FROM base AS build-service
RUN python -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-cache-dir .

FROM base AS build-gpu
RUN /opt/venv/bin/pip install torch \\
 && /opt/venv/bin/pip install '.[models]'

FROM base AS service
COPY --from=build-service /opt/venv /opt/venv
USER 10001

FROM base AS gpu
COPY --from=build-gpu /opt/venv /opt/venv
USER 10001:10001
"""


def test_the_dockerfile():
    problems = dockerfile.check_dockerfile(DOCKERFILE.read_text())
    assert not problems, f"{DOCKERFILE}:\n  " + "\n  ".join(problems)


def test_a_good_dockerfile_passes():
    assert dockerfile.check_dockerfile(GOOD) == []


BREAKS = {
    "no-service-target": (GOOD.replace("AS service", "AS control"), "no stage named 'service'"),
    "no-gpu-target": (GOOD.replace("AS gpu", "AS models"), "no stage named 'gpu'"),
    "service-gets-torch": (
        GOOD.replace("--from=build-service", "--from=build-gpu"),
        "the service image builds on stage 'build-gpu'",
    ),
    "service-gets-models-extra": (
        GOOD.replace("install --no-cache-dir .", "install --no-cache-dir '.[models]'"),
        "stage 'build-service', which installs torch or the models extra",
    ),
    "dev-extra": (GOOD.replace("'.[models]'", "'.[models,dev]'"), "installs the dev extra"),
    "root-user": (GOOD.replace("USER 10001:10001", "USER root"), "stage 'gpu' runs as USER root"),
    "no-user": (GOOD.replace("USER 10001\n", ""), "stage 'service' sets no USER"),
}


@pytest.mark.parametrize("name", BREAKS)
def test_a_broken_dockerfile_is_caught(name):
    text, expected = BREAKS[name]
    assert text != GOOD, f"{name}: the break changed nothing"
    problems = dockerfile.check_dockerfile(text)
    assert any(expected in p for p in problems), f"{name}: {problems}"
