"""Records to protobuf messages (with freshly signed download URLs) and job
events to the filer's view of a completion."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ourvidz.storage import BlobStore
from ourvidz.v1 import events_pb2, job_pb2
from ourvidz.v1 import workspace_service_pb2 as pb
from services.workspace.domain import Asset, Completion, Item, Output, Session, Upload

EVENT_TYPE_NAMES = {
    events_pb2.JOB_EVENT_TYPE_STATE: "state",
    events_pb2.JOB_EVENT_TYPE_PROGRESS: "progress",
    events_pb2.JOB_EVENT_TYPE_PREVIEW: "preview",
    events_pb2.JOB_EVENT_TYPE_COMPLETED: "completed",
    events_pb2.JOB_EVENT_TYPE_FAILED: "failed",
    events_pb2.JOB_EVENT_TYPE_CANCELLED: "cancelled",
}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


class Signer:
    """Signed URLs for an object and its thumbnail. An image without a separate
    thumbnail is its own thumbnail, so clients always have one to show."""

    def __init__(self, blobs: BlobStore, ttl_seconds: int) -> None:
        self.blobs = blobs
        self.ttl_seconds = ttl_seconds

    def urls(self, record: Item | Asset) -> tuple[str, str, Timestamp]:
        url, expires = self.blobs.signed_url(record.bucket, record.key, self.ttl_seconds)
        thumbnail_url = url
        if record.thumbnail_bucket and record.thumbnail_key:
            thumbnail_url, _ = self.blobs.signed_url(
                record.thumbnail_bucket, record.thumbnail_key, self.ttl_seconds
            )
        return url, thumbnail_url, timestamp(expires)

    def item(self, item: Item) -> pb.WorkspaceItem:
        url, thumbnail_url, expire_time = self.urls(item)
        return pb.WorkspaceItem(
            id=str(item.id),
            session_id=str(item.session_id),
            job_id=item.job_id,
            index=item.index,
            job_type=item.job_type,
            content_type=item.content_type,
            prompt=item.prompt,
            original_prompt=item.original_prompt,
            negative_prompt=item.negative_prompt,
            seed=item.seed,
            width=item.width,
            height=item.height,
            url=url,
            thumbnail_url=thumbnail_url,
            expire_time=expire_time,
            create_time=timestamp(item.created_at),
            library_asset_id=str(item.library_asset_id) if item.library_asset_id else "",
        )

    def asset(self, asset: Asset) -> pb.LibraryAsset:
        url, thumbnail_url, expire_time = self.urls(asset)
        return pb.LibraryAsset(
            id=str(asset.id),
            user_id=str(asset.user_id),
            job_id=asset.job_id,
            index=asset.index,
            job_type=asset.job_type,
            content_type=asset.content_type,
            title=asset.title,
            prompt=asset.prompt,
            original_prompt=asset.original_prompt,
            negative_prompt=asset.negative_prompt,
            seed=asset.seed,
            width=asset.width,
            height=asset.height,
            size_bytes=asset.size_bytes,
            url=url,
            thumbnail_url=thumbnail_url,
            expire_time=expire_time,
            create_time=timestamp(asset.created_at),
        )


def session(value: Session) -> pb.Session:
    return pb.Session(
        id=str(value.id),
        user_id=str(value.user_id),
        name=value.name,
        active=value.active,
        item_count=value.item_count,
        create_time=timestamp(value.created_at),
        last_activity_time=timestamp(value.last_activity_at),
    )


def upload(value: Upload) -> pb.Upload:
    return pb.Upload(
        id=str(value.id),
        content_type=value.content_type,
        width=value.width,
        height=value.height,
        size_bytes=value.size_bytes,
        bucket=value.bucket,
        key=value.key,
        create_time=timestamp(value.created_at),
    )


def summary(event: events_pb2.JobEvent) -> pb.JobEventSummary:
    result = pb.JobEventSummary(
        job_id=event.job_id,
        sequence=event.sequence,
        state=event.state,
        event_type=EVENT_TYPE_NAMES.get(event.type, "unspecified"),
    )
    if event.HasField("progress"):
        result.progress.CopyFrom(event.progress)
    return result


def completion(event: events_pb2.JobEvent) -> Completion | None:
    """The filer's view of a COMPLETED event; None for anything else or for an
    event it cannot attribute to a user (logged and dropped by the filer)."""
    if event.type != events_pb2.JOB_EVENT_TYPE_COMPLETED or not event.HasField("job"):
        return None
    job = event.job
    try:
        user_id = uuid.UUID(event.user_id or job.user_id)
    except ValueError:
        return None
    try:
        session_id = uuid.UUID(job.workspace_session_id) if job.workspace_session_id else None
    except ValueError:
        session_id = None
    outputs = tuple(
        Output(
            index=a.index,
            content_type=a.content_type,
            width=a.width,
            height=a.height,
            seed=a.seed or job.seed,
            bucket=a.bucket,
            key=a.key,
            thumbnail_bucket=a.thumbnail_bucket,
            thumbnail_key=a.thumbnail_key,
            size_bytes=a.size_bytes,
        )
        for a in job.assets
        if a.bucket and a.key
    )
    return Completion(
        job_id=event.job_id or job.id,
        user_id=user_id,
        job_type=job.job_type,
        # What the worker was given (the generation task's prompt): the enhanced
        # prompt, unless the job was not enhanced or fell back to the original.
        prompt=job.enhanced_prompt or job.prompt,
        original_prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        to_library=job.destination == job_pb2.DESTINATION_LIBRARY,
        session_id=session_id,
        outputs=outputs,
    )
