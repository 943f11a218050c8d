"""The mesh with the WAN worker and the enhancer (tiny models) in this process:
jobs, workspace, the gateway on a real port, against the session's PostgreSQL,
NATS JetStream and S3 server. The tests talk HTTP, as a client would."""

from __future__ import annotations

import httpx
import pytest

from ourvidz_dev.stack import running_stack

DENIED = "forbidden thing"

# The tests here are about what the enhancer does, so no timer that exists for
# another property may decide one: neither Jobs' enhancement timeout (its
# sweeper sends a job still `enhancing` on with its original prompt) nor the
# enhancer's own deadline on a generation. With Jobs' at 3 s, a loaded machine
# (a 200-token generation of the tiny model took 5-9 s beside two busy loops on
# two cores, 0.3 s idle) made the enhancer lose that race, and an "enhanced"
# job came back as a fallback. At an hour neither fires while a test here runs.
# Their behaviour is tested where it is the subject: tests/jobs/test_enhance_timeout.py
# and tests/e2e_fallback (which sets its own) for Jobs', tests/enhancer for the
# enhancer's.
OUT_OF_PLAY_SECONDS = "3600"


def media_env(base_env: dict, **extra) -> dict:
    return {
        **base_env,
        "WAN_MODEL": "tiny",
        "WAN_PROGRESS_INTERVAL_SECONDS": "0",
        "ENHANCER_MODEL": "tiny",
        "JOBS_ENHANCE_TIMEOUT_SECONDS": OUT_OF_PLAY_SECONDS,
        "ENHANCER_TIMEOUT_SECONDS": OUT_OF_PLAY_SECONDS,
        "PROMPT_DENY_LIST": DENIED,
        **extra,
    }


@pytest.fixture(scope="package")
async def stack(base_env):
    async with running_stack(media_env(base_env), workers=("wan",), enhancer=True) as s:
        yield s


@pytest.fixture
async def http(stack):
    async with httpx.AsyncClient(base_url=stack.url, timeout=120) as client:
        yield client
