"""Proto <-> JSON, in one place. Enum names become the lowercase words clients
see (`JOB_STATE_RUNNING` -> "running"), timestamps ISO 8601 or null, empty
strings of optional fields null."""

from __future__ import annotations

import base64
from datetime import UTC

from google.protobuf import timestamp_pb2

from ourvidz.v1 import enhancer_service_pb2 as enh_pb2
from ourvidz.v1 import events_pb2, job_pb2, workspace_service_pb2

REFERENCE_TYPES = ("style", "composition", "character")
DESTINATIONS = ("workspace", "library")


def _enum_word(enum, value: int, prefix: str) -> str | None:
    if not value:
        return None
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return None


def _enum_value(enum, word: str | None, prefix: str) -> int:
    return enum.Value(prefix + word.upper()) if word else 0


def state_name(value: int) -> str | None:
    return _enum_word(job_pb2.JobState, value, "JOB_STATE_")


def state_value(word: str | None) -> int:
    return _enum_value(job_pb2.JobState, word, "JOB_STATE_")


def reference_type_value(word: str | None) -> int:
    return _enum_value(job_pb2.ReferenceType, word, "REFERENCE_TYPE_")


def destination_value(word: str | None) -> int:
    return _enum_value(job_pb2.Destination, word, "DESTINATION_")


def event_name(value: int) -> str:
    return _enum_word(events_pb2.JobEventType, value, "JOB_EVENT_TYPE_") or "state"


def timestamp(ts: timestamp_pb2.Timestamp, present: bool = True) -> str | None:
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _ts(message, name: str) -> str | None:
    return timestamp(getattr(message, name), message.HasField(name))


def _opt(text: str) -> str | None:
    return text or None


# --- requests ----------------------------------------------------------------------


def job_spec(body, workspace_session_id: str = "") -> job_pb2.JobSpec:
    """A JobSpec from the POST /v1/jobs body (models.CreateJobBody)."""
    spec = job_pb2.JobSpec(
        job_type=body.job_type,
        prompt=body.prompt,
        num_images=body.num_images or 0,
        width=body.width or 0,
        height=body.height or 0,
        num_frames=body.num_frames or 0,
        reference_image_id=body.reference_image_id or "",
        reference_type=reference_type_value(body.reference_type),
        destination=destination_value(body.destination),
        workspace_session_id=workspace_session_id or body.workspace_session_id or "",
    )
    if body.negative_prompt is not None:
        spec.negative_prompt = body.negative_prompt
    if body.seed is not None:
        spec.seed = body.seed
    if body.reference_strength is not None:
        spec.reference_strength = body.reference_strength
    return spec


def generation_settings(body) -> enh_pb2.GenerationSettings | None:
    """GenerationSettings from a body with temperature/top_p/max_new_tokens/seed
    (absent -> 0, "the default"); None when the body is None."""
    if body is None:
        return None
    return enh_pb2.GenerationSettings(
        temperature=body.temperature or 0.0,
        top_p=body.top_p or 0.0,
        max_new_tokens=body.max_new_tokens or 0,
        seed=body.seed or 0,
    )


# --- responses ---------------------------------------------------------------------


def asset(a: job_pb2.Asset) -> dict:
    return {
        "index": a.index,
        "content_type": a.content_type,
        "width": a.width,
        "height": a.height,
        "seed": a.seed,
        "num_frames": a.num_frames or None,
        "size_bytes": a.size_bytes,
        "url": _opt(a.url),
        "thumbnail_url": _opt(a.thumbnail_url),
        "expires_at": _ts(a, "expire_time"),
    }


def provenance(j: job_pb2.Job) -> dict | None:
    """What rendered the job; None when its worker reported nothing."""
    if not j.HasField("provenance"):
        return None
    p = j.provenance
    return {
        "weights_digest": p.weights_digest,
        "preset": p.preset,
        "scheduler": p.scheduler,
        "scheduler_config": p.scheduler_config_json or None,
        "dtype": p.dtype,
        "device": p.device,
        "worker_id": p.worker_id,
        "diffusers_version": p.diffusers_version,
        "transformers_version": p.transformers_version,
        "torch_version": p.torch_version,
        "ourvidz_version": p.ourvidz_version,
        "steps": p.steps,
        "guidance_scale": round(p.guidance_scale, 4),
        "img2img_strength": (
            round(p.img2img_strength, 4) if p.HasField("img2img_strength") else None
        ),
    }


def queue_estimate(j: job_pb2.Job) -> dict | None:
    """Where a queued job stands in line; None for a job in any other state."""
    if not j.HasField("queue"):
        return None
    q = j.queue
    return {
        "position": q.position,
        "dispatched": q.dispatched,
        "estimated_start_at": _ts(q, "estimated_start_time"),
    }


def job(j: job_pb2.Job) -> dict:
    ref = j.reference if j.HasField("reference") and j.reference.upload_id else None
    return {
        "id": j.id,
        "job_type": j.job_type,
        "state": state_name(j.state),
        "prompt": j.prompt,
        "enhanced_prompt": _opt(j.enhanced_prompt),
        "negative_prompt": j.negative_prompt,
        "seed": j.seed,
        "num_images": j.num_images,
        "width": j.width,
        "height": j.height,
        "num_frames": j.num_frames,
        "steps": j.steps,
        "guidance_scale": round(j.guidance_scale, 4),
        "reference_image_id": ref.upload_id if ref else None,
        "reference_type": _enum_word(job_pb2.ReferenceType, ref.type, "REFERENCE_TYPE_")
        if ref
        else None,
        "reference_strength": round(ref.strength, 4) if ref else None,
        "destination": _enum_word(job_pb2.Destination, j.destination, "DESTINATION_"),
        "workspace_session_id": _opt(j.workspace_session_id),
        "progress": {
            "step": j.progress.step,
            "total": j.progress.total,
            "stage": _opt(j.progress.stage),
        },
        "attempt": j.attempt,
        "assets": [asset(a) for a in j.assets],
        "error": (
            {"code": j.error.code, "message": j.error.message}
            if j.HasField("error") and (j.error.code or j.error.message)
            else None
        ),
        "enhancement_fallback": j.enhancement_fallback,
        "enhancement_fallback_reason": _opt(j.enhancement_fallback_reason),
        "enhancement_template_id": _opt(j.enhancement_template_id),
        "enhancement_template_version": j.enhancement_template_version or None,
        "provenance": provenance(j),
        "queue": queue_estimate(j),
        "rerun_of": _opt(j.rerun_of),
        "created_at": _ts(j, "create_time"),
        "started_at": _ts(j, "start_time"),
        "completed_at": _ts(j, "complete_time"),
        "updated_at": _ts(j, "update_time"),
    }


def job_type(t: job_pb2.JobType) -> dict:
    return {
        "name": t.name,
        "worker": t.worker,
        "output": t.output,
        "quality": t.quality,
        "enhanced": t.enhanced,
        "steps": t.steps,
        "guidance_scale": round(t.guidance_scale, 4),
        "default_width": t.default_width,
        "default_height": t.default_height,
        "allowed_widths": list(t.allowed_widths),
        "allowed_heights": list(t.allowed_heights),
        "size_multiple": t.size_multiple,
        "default_num_frames": t.default_num_frames,
        "max_num_frames": t.max_num_frames,
        "allowed_num_images": list(t.allowed_num_images),
        "bucket": t.bucket,
        "content_type": t.content_type,
        "expected_seconds": t.expected_seconds,
        "accepts_reference": t.accepts_reference,
        "fps": t.fps,
        "notes": t.notes,
    }


def settings_out(s: enh_pb2.GenerationSettings) -> dict:
    """Generation settings; a zero (not set) is null."""
    return {
        "temperature": round(s.temperature, 4) or None,
        "top_p": round(s.top_p, 4) or None,
        "max_new_tokens": s.max_new_tokens or None,
        "seed": s.seed or None,
    }


def enhancement(r: enh_pb2.EnhancePromptResponse, original_prompt: str) -> dict:
    return {
        "original_prompt": original_prompt,
        "enhanced_prompt": r.enhanced_prompt,
        "target_model": r.target_model,
        "template": {"id": _opt(r.template_id), "version": r.template_version or None},
        "model": r.model,
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "target_tokens": r.target_tokens,
        "latency_seconds": round(r.latency_seconds, 4),
        "settings": settings_out(r.settings),
        "fallback": r.fallback,
        "fallback_reason": _opt(r.fallback_reason),
        "enhancement_id": _opt(r.enhancement_id),
    }


def template(t: enh_pb2.PromptTemplate) -> dict:
    return {
        "id": t.id,
        "name": t.name,
        "target_model": t.target_model,
        "version": t.version,
        "system_prompt": t.system_prompt,
        "user_template": t.user_template,
        "description": t.description,
        "settings": settings_out(t.settings),
        "active": t.active,
        "created_by": _opt(t.created_by),
        "created_at": _ts(t, "create_time"),
    }


def prompt_test(t: enh_pb2.PromptTest) -> dict:
    return {
        "id": t.id,
        "template_id": t.template_id,
        "template_version": t.template_version,
        "sample_prompt": t.sample_prompt,
        "result": enhancement(t.result, t.sample_prompt),
        "created_at": _ts(t, "create_time"),
    }


def template_stats(s: enh_pb2.GetPromptTemplateStatsResponse) -> dict:
    return {
        "template_id": s.template_id,
        "template_version": s.template_version,
        "enhancements": s.enhancements,
        "fallbacks": s.fallbacks,
        "mean_latency_seconds": round(s.mean_latency_seconds, 4),
        "mean_tokens_in": round(s.mean_tokens_in, 2),
        "mean_tokens_out": round(s.mean_tokens_out, 2),
        "ratings": s.ratings,
        "mean_rating": round(s.mean_rating, 3) if s.ratings else None,
    }


def chat_done(r: enh_pb2.ChatResponse) -> dict:
    return {"tokens_out": r.tokens_out, "model": r.model, "settings": settings_out(r.settings)}


def session(s: workspace_service_pb2.Session) -> dict:
    return {
        "id": s.id,
        "name": s.name,
        "active": s.active,
        "item_count": s.item_count,
        "created_at": _ts(s, "create_time"),
        "last_activity_at": _ts(s, "last_activity_time"),
    }


def workspace_item(i: workspace_service_pb2.WorkspaceItem) -> dict:
    return {
        "id": i.id,
        "session_id": i.session_id,
        "job_id": i.job_id,
        "index": i.index,
        "job_type": i.job_type,
        "content_type": i.content_type,
        "url": _opt(i.url),
        "thumbnail_url": _opt(i.thumbnail_url),
        "prompt": i.prompt,
        "original_prompt": i.original_prompt,
        "negative_prompt": i.negative_prompt,
        "seed": i.seed,
        "width": i.width,
        "height": i.height,
        "library_asset_id": _opt(i.library_asset_id),
        "expires_at": _ts(i, "expire_time"),
        "created_at": _ts(i, "create_time"),
    }


def library_asset(a: workspace_service_pb2.LibraryAsset) -> dict:
    return {
        "id": a.id,
        "job_id": a.job_id,
        "index": a.index,
        "job_type": a.job_type,
        "content_type": a.content_type,
        "title": a.title,
        "prompt": a.prompt,
        "original_prompt": a.original_prompt,
        "negative_prompt": a.negative_prompt,
        "seed": a.seed,
        "width": a.width,
        "height": a.height,
        "size_bytes": a.size_bytes,
        "url": _opt(a.url),
        "thumbnail_url": _opt(a.thumbnail_url),
        "expires_at": _ts(a, "expire_time"),
        "created_at": _ts(a, "create_time"),
    }


def upload(u: workspace_service_pb2.Upload) -> dict:
    return {
        "id": u.id,
        "content_type": u.content_type,
        "width": u.width,
        "height": u.height,
        "size_bytes": u.size_bytes,
        "created_at": _ts(u, "create_time"),
    }


def page(items: list[dict], next_page_token: str) -> dict:
    return {"items": items, "next_page_token": next_page_token}


# --- events ------------------------------------------------------------------------


def job_event(e: events_pb2.JobEvent) -> tuple[str, dict]:
    """(SSE event name, data) of a job event."""
    name = event_name(e.type)
    data: dict = {
        "job_id": e.job_id,
        "sequence": e.sequence,
        "type": name,
        "state": state_name(e.state) or (state_name(e.job.state) if e.HasField("job") else None),
        "time": _ts(e, "time"),
    }
    if e.HasField("progress") or name == "progress":
        data.update(step=e.progress.step, total=e.progress.total, stage=_opt(e.progress.stage))
    if name == "preview" and e.preview_png:
        data["preview"] = "data:image/png;base64," + base64.b64encode(e.preview_png).decode()
    if e.HasField("job"):
        data["job"] = job(e.job)
    return name, data


def session_update(
    u: workspace_service_pb2.WatchSessionResponse,
) -> tuple[str, str | None, dict] | None:
    """(SSE event name, SSE id or None, data) of a session update."""
    kind = u.WhichOneof("update")
    if kind == "item":
        return "item", None, {"item": workspace_item(u.item)}
    if kind == "job_event":
        s = u.job_event
        name = s.event_type.lower().removeprefix("job_event_type_") or "state"
        data = {
            "job_id": s.job_id,
            "sequence": s.sequence,
            "type": name,
            "state": state_name(s.state),
        }
        if s.HasField("progress"):
            data.update(step=s.progress.step, total=s.progress.total, stage=_opt(s.progress.stage))
        return name, None, data
    return None
