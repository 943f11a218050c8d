"""/healthz (the process answers) and /readyz (it can serve: database and
backing services up; the optional ones, the enhancer and each worker
family's state (services.gateway.workers), are reported without counting). Prometheus metrics are not served here, on the public
port, but on the internal metrics port (METRICS_PORT, ourvidz.metrics)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends

from services.gateway import workers
from services.gateway.deps import gateway
from services.gateway.models import problem_responses
from services.gateway.problems import problem

log = logging.getLogger(__name__)

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
async def readyz(gw=Depends(gateway)):
    checks = {"database": await _database(gw)}
    checks.update(await gw.backends.health())
    optional = await gw.backends.optional_health()
    # A gateway serves without workers: jobs wait in the queue for them.
    optional["workers"] = await workers.family_states(gw.nats)
    down = [name for name, status in checks.items() if status not in ("ok", "SERVING")]
    if down:
        return problem(
            503,
            f"not ready: {', '.join(down)} unavailable",
            title="Not Ready",
            checks=checks,
            optional=optional,
        )
    return {"status": "ready", "checks": checks, "optional": optional}


async def _database(gw) -> str:
    async def ping() -> None:
        async with gw.database.connection() as conn:
            await conn.execute("SELECT 1")

    try:
        await asyncio.wait_for(ping(), timeout=2.0)
        return "ok"
    except Exception as exc:
        log.warning("database check failed: %s", exc)
        return "down"
