"""Helpers of the workspace tests (a module with a name of its own, so test
files import it without clashing with other suites' helpers)."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Awaitable, Callable

from PIL import Image

from ourvidz import queue
from ourvidz.auth import call_metadata
from ourvidz.v1 import events_pb2, job_pb2
from ourvidz.v1 import workspace_service_pb2 as pb
from services.workspace.main import Running
from services.workspace.settings import WorkspaceSettings
from tests.conftest import make_settings, token

CALL_TIMEOUT = 15.0
IMAGE_BUCKET = "sdxl-image-fast"


def workspace_settings(env: dict[str, str], **overrides) -> WorkspaceSettings:
    """Settings from `env` without leaving anything in os.environ."""
    return make_settings(WorkspaceSettings, env, **overrides)


class User:
    """A fresh user id and its access token."""

    def __init__(self, role: str = "user") -> None:
        self.id = str(uuid.uuid4())
        self.metadata = call_metadata(token(self.id, role))

    def kw(self) -> dict:
        return {"metadata": self.metadata, "timeout": CALL_TIMEOUT}


def png_bytes(width: int = 8, height: int = 8, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


async def put_outputs(
    workspace: Running, user_id: str, job_id: str, count: int, bucket: str = IMAGE_BUCKET
) -> list[job_pb2.Asset]:
    """Store `count` PNG outputs under the job's deterministic keys, as a worker would."""
    assets = []
    for index in range(count):
        data = png_bytes(8 + index, 8, (index * 40 % 256, 100, 50))
        key = f"{user_id}/{job_id}_{index}.png"
        await workspace.service.blobs.put(bucket, key, data, "image/png")
        assets.append(
            job_pb2.Asset(
                index=index,
                bucket=bucket,
                key=key,
                content_type="image/png",
                width=8 + index,
                height=8,
                seed=1000 + index,
                size_bytes=len(data),
            )
        )
    return assets


def completed_event(
    user_id: str,
    job_id: str,
    assets: list[job_pb2.Asset],
    *,
    session_id: str = "",
    destination: int = job_pb2.DESTINATION_WORKSPACE,
    prompt: str = "a red fox in the snow",
    enhanced_prompt: str = "",
    negative_prompt: str = "",
    job_type: str = "sdxl_image_fast",
    sequence: int = 9,
) -> events_pb2.JobEvent:
    return events_pb2.JobEvent(
        job_id=job_id,
        user_id=user_id,
        sequence=sequence,
        type=events_pb2.JOB_EVENT_TYPE_COMPLETED,
        state=job_pb2.JOB_STATE_COMPLETED,
        job=job_pb2.Job(
            id=job_id,
            user_id=user_id,
            job_type=job_type,
            state=job_pb2.JOB_STATE_COMPLETED,
            prompt=prompt,
            enhanced_prompt=enhanced_prompt,
            negative_prompt=negative_prompt,
            destination=destination,
            workspace_session_id=session_id,
            num_images=len(assets),
            assets=assets,
        ),
    )


async def publish(js, event: events_pb2.JobEvent) -> None:
    await js.publish(queue.event_subject(event.user_id, event.job_id), event.SerializeToString())


async def eventually(check: Callable[[], Awaitable], within: float = 20.0, every: float = 0.1):
    """Poll `check` until it returns something truthy (the filer works asynchronously)."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


async def items_of(stub, user: User, session_id: str) -> list[pb.WorkspaceItem]:
    reply = await stub.ListSessionItems(
        pb.ListSessionItemsRequest(session_id=session_id, page_size=200), **user.kw()
    )
    return list(reply.items)


async def file_job(workspace: Running, js, stub, user: User, count: int = 3, **event_kw):
    """Publish a completed job with `count` outputs and wait until the filer has
    filed them (into the session the items land in). Returns (job_id, items)."""
    job_id = str(uuid.uuid4())
    assets = await put_outputs(workspace, user.id, job_id, count)
    await publish(js, completed_event(user.id, job_id, assets, **event_kw))
    active = event_kw.get("session_id") or ""

    async def filed():
        session_id = active
        if not session_id:
            reply = await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())
            session_id = reply.session.id
        items = [i for i in await items_of(stub, user, session_id) if i.job_id == job_id]
        return items if len(items) == count else None

    return job_id, await eventually(filed)
