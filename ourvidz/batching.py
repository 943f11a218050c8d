"""Which generation jobs may share one denoising batch (`batch_key`).

Jobs of the same key run as one SDXL pipeline call with per-image prompts,
negative prompts and seeds, and each image equals its one-job rerun within
the rounding of the batch size: the same job type (so the same queue and
bucket), size, steps and guidance, text-to-image only (a reference is an
img2img call of its own); never a WAN job (it renders one job at a time). The
jobs service groups queued jobs by this key, up to `SDXL_BATCH_MAX_IMAGES`
images (the setting `sdxl_batch_max_images`), and publishes each group as
one `GenerationBatch` (`ourvidz.queue.batch_message`).
"""

from __future__ import annotations

from ourvidz import catalog
from ourvidz.settings import SDXL_BATCH_MAX_IMAGES
from ourvidz.v1 import queue_pb2

__all__ = ["SDXL_BATCH_MAX_IMAGES", "batch_key", "batch_key_of", "groups"]


def batch_key_of(
    *,
    job_type: str,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
    has_reference: bool,
    num_frames: int = 1,
) -> tuple | None:
    """The key of jobs that may share a batch, from the fields a job row
    holds; None for a job that runs alone. Steps and guidance left at zero
    mean the catalog's, so a job with them filled in groups with one without;
    guidance is rounded to 4 places (a float32 on the queue, a double in the
    database). An image's frame count is 0 or 1 (Jobs records 1)."""
    kind = catalog.CATALOG.get(job_type)
    if kind is None or kind.worker != "sdxl" or kind.output != "image":
        return None
    if has_reference or num_frames > 1 or width <= 0 or height <= 0:
        return None
    guidance = round(float(guidance_scale or kind.guidance_scale), 4)
    return (job_type, int(width), int(height), int(steps or kind.steps), guidance)


def batch_key(task: queue_pb2.GenerationTask) -> tuple | None:
    """`batch_key_of` a queued task."""
    return batch_key_of(
        job_type=task.job_type,
        width=task.width,
        height=task.height,
        steps=task.steps,
        guidance_scale=task.guidance_scale,
        has_reference=task.HasField("reference") and bool(task.reference.key),
        num_frames=task.num_frames,
    )


def groups(
    tasks: list[queue_pb2.GenerationTask], max_images: int = SDXL_BATCH_MAX_IMAGES
) -> list[list[queue_pb2.GenerationTask]]:
    """`tasks` put together by batch key, in the order given: a task joins
    the last group of its key while that stays within `max_images` images,
    else starts a new one; a task without a key (or with more images than
    that) is a group of its own. Each group is one message."""
    out: list[list[queue_pb2.GenerationTask]] = []
    open_groups: dict[tuple, tuple[list[queue_pb2.GenerationTask], int]] = {}
    for task in tasks:
        key = batch_key(task)
        group, images = open_groups.get(key, ([], 0)) if key is not None else ([], 0)
        if not group or images + task.num_images > max_images:
            group, images = [], 0
            out.append(group)
        group.append(task)
        if key is not None:
            open_groups[key] = (group, images + task.num_images)
    return out
