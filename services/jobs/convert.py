"""Rows and domain values to protobuf messages and back. Nothing here decides
anything; it only translates."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.types.json import Jsonb

from ourvidz import catalog
from ourvidz.errors import InvalidArgument
from ourvidz.settings import CatalogLimits
from ourvidz.storage import BlobStore
from ourvidz.v1 import events_pb2, job_pb2, queue_pb2
from services.jobs import domain

EVENT_TYPES = {
    "state": events_pb2.JOB_EVENT_TYPE_STATE,
    "progress": events_pb2.JOB_EVENT_TYPE_PROGRESS,
    "preview": events_pb2.JOB_EVENT_TYPE_PREVIEW,
    "completed": events_pb2.JOB_EVENT_TYPE_COMPLETED,
    "failed": events_pb2.JOB_EVENT_TYPE_FAILED,
    "cancelled": events_pb2.JOB_EVENT_TYPE_CANCELLED,
}
TERMINAL_EVENT_TYPES = frozenset(
    {
        events_pb2.JOB_EVENT_TYPE_COMPLETED,
        events_pb2.JOB_EVENT_TYPE_FAILED,
        events_pb2.JOB_EVENT_TYPE_CANCELLED,
    }
)


def state_enum(state: str) -> int:
    return job_pb2.JobState.Value(f"JOB_STATE_{state.upper()}")


def state_name(value: int) -> str:
    """ "" for JOB_STATE_UNSPECIFIED."""
    if value == job_pb2.JOB_STATE_UNSPECIFIED:
        return ""
    try:
        return job_pb2.JobState.Name(value).removeprefix("JOB_STATE_").lower()
    except ValueError as exc:
        raise InvalidArgument.field("state", f"unknown state {value}") from exc


def _enum_name(enum, value: int, prefix: str) -> str:
    try:
        name = enum.Name(value)
    except ValueError:
        return f"unknown-{value}"  # refused by validation
    return "" if name.endswith("_UNSPECIFIED") else name.removeprefix(prefix).lower()


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def submission(spec: job_pb2.JobSpec) -> domain.Submission:
    return domain.Submission(
        job_type=spec.job_type,
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt if spec.HasField("negative_prompt") else None,
        seed=spec.seed if spec.HasField("seed") else None,
        num_images=spec.num_images,
        width=spec.width,
        height=spec.height,
        num_frames=spec.num_frames,
        reference_image_id=spec.reference_image_id.strip(),
        reference_type=_enum_name(job_pb2.ReferenceType, spec.reference_type, "REFERENCE_TYPE_"),
        reference_strength=spec.reference_strength if spec.HasField("reference_strength") else None,
        destination=_enum_name(job_pb2.Destination, spec.destination, "DESTINATION_"),
        workspace_session_id=spec.workspace_session_id,
    )


def asset_proto(row: dict) -> job_pb2.Asset:
    return job_pb2.Asset(
        index=row["index"],
        bucket=row["bucket"],
        key=row["key"],
        content_type=row["content_type"],
        width=row["width"],
        height=row["height"],
        seed=row["seed"],
        thumbnail_bucket=row["thumbnail_bucket"],
        thumbnail_key=row["thumbnail_key"],
        size_bytes=row["size_bytes"],
        num_frames=row["num_frames"],
    )


def asset_row(asset: job_pb2.Asset) -> dict:
    return {
        "index": asset.index,
        "bucket": asset.bucket,
        "key": asset.key,
        "content_type": asset.content_type,
        "width": asset.width,
        "height": asset.height,
        "seed": asset.seed,
        "thumbnail_bucket": asset.thumbnail_bucket,
        "thumbnail_key": asset.thumbnail_key,
        "size_bytes": asset.size_bytes,
        "num_frames": asset.num_frames,
    }


# Longest string a worker's provenance may carry in one field (a scheduler's
# configuration is the longest, about 1 kB); longer ones are cut.
MAX_PROVENANCE_CHARS = 8192


def provenance_row(provenance: job_pb2.Provenance | None) -> Jsonb | None:
    """A worker's provenance as the jobs.jobs column stores it (None: none)."""
    if provenance is None:
        return None
    kept = job_pb2.Provenance()
    kept.CopyFrom(provenance)
    for field, value in kept.ListFields():
        if isinstance(value, str) and len(value) > MAX_PROVENANCE_CHARS:
            setattr(kept, field.name, value[:MAX_PROVENANCE_CHARS])
    return Jsonb(json_format.MessageToDict(kept, preserving_proto_field_name=True))


def job_proto(row: dict, assets: list[dict] = ()) -> job_pb2.Job:
    """The whole job as stored: assets carry bucket and key, never URLs."""
    job = job_pb2.Job(
        id=str(row["id"]),
        user_id=str(row["user_id"]),
        job_type=row["job_type"],
        state=state_enum(row["state"]),
        prompt=row["prompt"],
        enhanced_prompt=row["enhanced_prompt"],
        negative_prompt=row["negative_prompt"],
        seed=row["seed"],
        num_images=row["num_images"],
        width=row["width"],
        height=row["height"],
        num_frames=row["num_frames"],
        steps=row["steps"],
        guidance_scale=row["guidance_scale"],
        destination=job_pb2.Destination.Value(f"DESTINATION_{row['destination'].upper()}"),
        workspace_session_id=str(row["workspace_session_id"] or ""),
        progress=job_pb2.Progress(
            step=row["progress_step"], total=row["progress_total"], stage=row["progress_stage"]
        ),
        attempt=row["attempt"],
        assets=[asset_proto(a) for a in sorted(assets, key=lambda a: a["index"])],
        enhancement_fallback=row["enhancement_fallback"],
        enhancement_fallback_reason=row["enhancement_fallback_reason"],
        request_id=row["request_id"] or "",
        last_sequence=row["last_sequence"],
        enhancement_template_id=row["enhancement_template_id"],
        enhancement_template_version=row["enhancement_template_version"],
        rerun_of=str(row["rerun_of"] or ""),
    )
    if row.get("provenance"):
        json_format.ParseDict(row["provenance"], job.provenance, ignore_unknown_fields=True)
    if row["reference_upload_id"]:
        job.reference.CopyFrom(
            job_pb2.Reference(
                upload_id=row["reference_upload_id"],
                type=job_pb2.ReferenceType.Value(f"REFERENCE_TYPE_{row['reference_type'].upper()}"),
                strength=row["reference_strength"],
                bucket=row["reference_bucket"] or "",
                key=row["reference_key"] or "",
            )
        )
    if row["error_code"] or row["error_message"]:
        job.error.CopyFrom(job_pb2.JobError(code=row["error_code"], message=row["error_message"]))
    for field, column in (
        ("create_time", "created_at"),
        ("start_time", "started_at"),
        ("complete_time", "completed_at"),
        ("update_time", "updated_at"),
    ):
        ts = timestamp(row[column])
        if ts is not None:
            getattr(job, field).CopyFrom(ts)
    return job


def sign_assets(job: job_pb2.Job, store: BlobStore) -> job_pb2.Job:
    """Fill each asset's time-limited URLs (for responses to clients)."""
    for asset in job.assets:
        if asset.bucket and asset.key:
            url, expires = store.signed_url(asset.bucket, asset.key)
            asset.url = url
            asset.expire_time.CopyFrom(timestamp(expires))
        if asset.thumbnail_bucket and asset.thumbnail_key:
            asset.thumbnail_url, _ = store.signed_url(asset.thumbnail_bucket, asset.thumbnail_key)
    return job


def event(
    job: job_pb2.Job,
    sequence: int,
    kind: str,
    *,
    now: datetime,
    snapshot: bool = True,
    preview_png: bytes = b"",
) -> events_pb2.JobEvent:
    ev = events_pb2.JobEvent(
        job_id=job.id,
        user_id=job.user_id,
        sequence=sequence,
        type=EVENT_TYPES[kind],
        state=job.state,
        progress=job.progress,
        preview_png=preview_png,
        time=timestamp(now),
    )
    if snapshot:
        ev.job.CopyFrom(job)
    return ev


def generation_task(job: job_pb2.Job, *, now: datetime) -> queue_pb2.GenerationTask:
    jt = catalog.CATALOG[job.job_type]
    task = queue_pb2.GenerationTask(
        job_id=job.id,
        user_id=job.user_id,
        job_type=job.job_type,
        prompt=job.enhanced_prompt or job.prompt,
        negative_prompt=job.negative_prompt,
        seed=job.seed,
        num_images=job.num_images,
        width=job.width,
        height=job.height,
        num_frames=job.num_frames,
        steps=job.steps,
        guidance_scale=job.guidance_scale,
        output_bucket=jt.bucket,
        enqueue_time=timestamp(now),
    )
    if job.HasField("reference"):
        task.reference.CopyFrom(job.reference)
    return task


def enhance_task(job: job_pb2.Job, *, now: datetime) -> queue_pb2.EnhanceTask:
    jt = catalog.CATALOG[job.job_type]
    return queue_pb2.EnhanceTask(
        job_id=job.id,
        user_id=job.user_id,
        job_type=job.job_type,
        prompt=job.prompt,
        target_model=jt.target_model,
        enqueue_time=timestamp(now),
    )


def job_type_proto(jt: catalog.JobType, limits: CatalogLimits) -> job_pb2.JobType:
    lo, hi = catalog.size_limits(jt, limits)
    start = -(-lo // jt.size_multiple) * jt.size_multiple
    sizes = list(range(start, hi + 1, jt.size_multiple))
    return job_pb2.JobType(
        name=jt.name,
        worker=jt.worker,
        output=jt.output,
        quality=jt.quality,
        enhanced=jt.enhanced,
        steps=jt.steps,
        guidance_scale=jt.guidance_scale,
        default_width=jt.default_width,
        default_height=jt.default_height,
        allowed_widths=sizes,
        allowed_heights=sizes,
        size_multiple=jt.size_multiple,
        default_num_frames=jt.default_num_frames,
        max_num_frames=limits.wan_max_frames if jt.output == "video" else 1,
        allowed_num_images=list(jt.num_images),
        bucket=jt.bucket,
        content_type=jt.content_type,
        expected_seconds=jt.expected_seconds,
        accepts_reference=jt.accepts_reference,
        subject=jt.subject,
        notes=jt.notes,
        fps=jt.fps,
    )
