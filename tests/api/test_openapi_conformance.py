"""schemathesis over every operation of /openapi.json against the real mesh:
the API answers only what its document says (status codes, content types,
headers, bodies), refuses what the schema refuses, and never answers 5xx
other than the documented 503."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.api

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Bounds, determinism and the expected statuses of each check.
CONFIG = Path(__file__).with_name("schemathesis.toml")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts" / "api"


async def _run(url: str, token: str, name: str, *filters: str) -> tuple[int, str]:
    """schemathesis' exit status and report (also kept in .artifacts/api/<name>.log)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"{name}.log"
    args = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        # Conformance, not speed: a tighter response time limit fails on a
        # busy machine (the enhancer's template test runs 19 prompts on a
        # CPU); a response may take as long as a request may.
        "--max-response-time",
        "60",
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(ARTIFACTS / f"{name}.ndjson"),
        "--header",
        f"Authorization: Bearer {token}",
        *filters,
    ]
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*args, stdout=out, stderr=out)
        await proc.wait()
    return proc.returncode, log.read_text(errors="replace")


async def test_every_operation_conforms(stack, tokens):
    """As a user over everything but /v1/admin, and as an admin over
    /v1/admin, side by side."""
    (user_rc, user_out), (admin_rc, admin_out) = await asyncio.gather(
        _run(stack.url, tokens["user"], "user", "--exclude-path-regex", "^/v1/admin"),
        _run(stack.url, tokens["admin"], "admin", "--include-path-regex", "^/v1/admin"),
    )
    assert user_rc == 0, user_out[-20000:]
    assert admin_rc == 0, admin_out[-20000:]
