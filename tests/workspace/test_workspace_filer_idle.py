"""An idle filer: its fetches time out quietly (no ERROR, no traceback) and it
keeps the one subscription it bound at start."""

from __future__ import annotations

import logging
import uuid

from ourvidz import queue
from services.workspace.convert import Signer
from services.workspace.filer import Filer
from tests.workspace.workspace_helpers import eventually


async def test_idle_filer_logs_no_error_and_binds_once(workspace, infra, caplog):
    nc, js = await queue.connect(infra.nats_url, "filer-idle-test")
    durable = f"filer-idle-{uuid.uuid4().hex[:8]}"
    # Its own consumer, on subjects nobody publishes to: every fetch finds nothing.
    await queue.declare_events_consumer(js, durable, subject=f"events.jobs.{durable}.>")
    filer = Filer(
        nc,
        js,
        workspace.service,
        Signer(workspace.service.blobs, 60),
        durable=durable,
        fetch_timeout=0.2,
    )
    caplog.set_level(logging.INFO, logger="services.workspace.filer")
    try:
        filer.start()

        async def idle_for_a_while():
            return filer.idle_fetches >= 4

        await eventually(idle_for_a_while)
        await filer.stop()
    finally:
        await filer.stop()
        await js.delete_consumer(queue.EVENTS_STREAM, durable)
        await nc.close()
    mine = [r for r in caplog.records if r.name == "services.workspace.filer"]
    assert not [r for r in mine if r.levelno >= logging.WARNING], [r.getMessage() for r in mine]
    assert [r.getMessage() for r in mine].count(f"filer bound to the consumer {durable}") == 1
