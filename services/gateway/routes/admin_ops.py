"""/v1/admin/queues and /v1/admin/workers: queue depth per worker family and
the live workers, for operators. Admins only (401 anonymous, 403 users).

Both read NATS directly: JetStream's consumer info for the queues, the
workers' key-value registry (ourvidz.registry) for the workers. When the
gateway has no NATS connection they answer 503 with a readable problem; the
rest of the API does not depend on it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, HTTPException
from nats.js.errors import NotFoundError

from ourvidz import queue, registry
from services.gateway import workers as workers_view
from services.gateway.deps import AdminDep, gateway
from services.gateway.models import QueuesOut, WorkersOut

router = APIRouter(prefix="/v1/admin", tags=["admin"])

# (family, priority, subject, durable consumer), in the order operators read them.
# A worker family has one consumer for both priorities: Jobs publishes its
# tasks in the order they should run.
QUEUES = (
    *(
        (family, "", queue.family_subject(family), queue.consumer_name(family))
        for family in ("sdxl", "wan")
    ),
    ("enhance", "", queue.ENHANCE_SUBJECT, queue.ENHANCE_CONSUMER),
)


def _jetstream(gw):
    nats = gw.nats
    if nats is None or not nats.connected:
        raise HTTPException(
            503, "the work queue (NATS) cannot be reached from the gateway; try again shortly"
        )
    return nats.js


def _iso(seconds: float | None) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@router.get("/queues", response_model=QueuesOut)
async def queues(caller: AdminDep, gw=Depends(gateway)) -> dict:
    """Per worker family (and the enhancer): waiting messages, messages in flight
    (delivered, not yet acked), redeliveries and pulls waiting for work."""
    js = _jetstream(gw)
    out = []
    for family, priority, subject, consumer in QUEUES:
        row = {
            "family": family,
            "priority": priority or None,
            "subject": subject,
            "consumer": consumer,
            "declared": False,
            "pending": 0,
            "in_flight": 0,
            "redelivered": 0,
            "waiting_pulls": 0,
        }
        try:
            info = await js.consumer_info(queue.TASKS_STREAM, consumer, timeout=2)
        except NotFoundError:
            pass  # no worker of this family has started yet
        except Exception as exc:
            detail = f"the work queue did not answer ({type(exc).__name__})"
            raise HTTPException(503, detail) from exc
        else:
            row.update(
                declared=True,
                pending=info.num_pending or 0,
                in_flight=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
                waiting_pulls=info.num_waiting or 0,
            )
        out.append(row)
    return {"queues": out, "checked_at": _iso(time.time())}


def verdict(card: dict, now: float) -> str:
    """healthy | starting (model not loaded yet) | stale (missed heartbeats) |
    failing (more failed jobs than completed ones)."""
    if workers_view.is_stale(card, now):
        return "stale"
    if not card.get("ready"):
        return "starting"
    failed, completed = int(card.get("jobs_failed") or 0), int(card.get("jobs_completed") or 0)
    if failed >= 3 and failed > completed:
        return "failing"
    return "healthy"


@router.get("/workers", response_model=WorkersOut)
async def workers(caller: AdminDep, gw=Depends(gateway)) -> dict:
    """The generation workers and enhancer replicas that reported in lately."""
    js = _jetstream(gw)
    try:
        cards = await registry.list_cards(js)
    except Exception as exc:
        detail = f"the worker registry did not answer ({type(exc).__name__})"
        raise HTTPException(503, detail) from exc
    now = time.time()
    out = [
        {
            "worker_id": str(c.get("worker_id", "")),
            "family": str(c.get("family", "")),
            "model_preset": str(c.get("model_preset", "")),
            "device": str(c.get("device", "")),
            "dtype": str(c.get("dtype", "")),
            "ready": bool(c.get("ready")),
            "current_job_id": c.get("current_job_id") or None,
            "jobs_completed": int(c.get("jobs_completed") or 0),
            "jobs_failed": int(c.get("jobs_failed") or 0),
            "last_seen": _iso(c.get("last_seen")),
            "health": verdict(c, now),
        }
        for c in cards
    ]
    out.sort(key=lambda w: (w["family"], w["worker_id"]))
    return {"workers": out}
