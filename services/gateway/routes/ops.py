"""/healthz (the process answers), /readyz (it can serve: database and backing
services up) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus metrics (text exposition format)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(gw=Depends(gateway)) -> Response:
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
