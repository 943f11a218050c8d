"""Which worker families can take work now, read from the workers' registry
(ourvidz.registry): /readyz reports it under `optional.workers` and
GET /v1/job-types marks each job type available or not, with the reason.

A family is "ready" when a fresh card of it says its model is loaded,
"loading" when its fresh cards say not yet, "none" when it has no fresh card,
and "unknown" when the registry cannot be read (no NATS connection yet, or no
answer within READ_TIMEOUT_SECONDS). The read is one key-value listing: cheap
enough for every probe, and a failure is a state, never an error."""

from __future__ import annotations

import asyncio
import logging
import time

from ourvidz import catalog, registry

log = logging.getLogger(__name__)

# The generation worker families of the job-type catalog.
FAMILIES = tuple(sorted({t.worker for t in catalog.CATALOG.values()}))
BUCKET = registry.WORKERS_BUCKET
READ_TIMEOUT_SECONDS = 1.0
# A card older than this many of its worker's heartbeats belongs to a worker
# that stopped beating (the bucket drops it a little later).
STALE_BEATS = 3
# The enhancer's gRPC health status when it serves (Backends.optional_health).
ENHANCER_UP = "SERVING"


def is_stale(card: dict, now: float) -> bool:
    beat = float(card.get("heartbeat_seconds") or registry.HEARTBEAT_SECONDS)
    return now - float(card.get("last_seen") or 0) > STALE_BEATS * beat


async def family_states(nats) -> dict[str, str]:
    """ready | loading | none | unknown for each family in FAMILIES."""
    if nats is None or not nats.connected:
        return dict.fromkeys(FAMILIES, "unknown")
    try:
        cards = await asyncio.wait_for(
            registry.list_cards(nats.js, BUCKET), timeout=READ_TIMEOUT_SECONDS
        )
    except Exception as exc:
        log.warning("worker registry not readable: %r", exc)
        return dict.fromkeys(FAMILIES, "unknown")
    now = time.time()
    states = dict.fromkeys(FAMILIES, "none")
    for card in cards:
        family = card.get("family")
        if family not in states or is_stale(card, now):
            continue
        if card.get("ready"):
            states[family] = "ready"
        elif states[family] == "none":
            states[family] = "loading"
    return states


def unavailable_reason(
    family: str, enhanced: bool, states: dict[str, str], enhancer: str
) -> str | None:
    """Why a job type of `family` cannot run now (None when it can): its
    worker family is not ready, or, for an enhanced type, the enhancer is down."""
    state = states.get(family, "none")
    if state == "loading":
        return f"the {family} worker is still loading its model"
    if state == "none":
        return f"no {family} worker is running"
    if state == "unknown":
        return (
            f"the gateway cannot see whether a {family} worker is running (work queue unreachable)"
        )
    if enhanced and enhancer != ENHANCER_UP:
        return "the prompt enhancer is not running"
    return None
