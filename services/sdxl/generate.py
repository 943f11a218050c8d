"""One generation job on the loaded pipelines: text-to-image, or image-to-image
when the job carries a reference, all images of the job in one batch.

Seeds: image `i` of a job with seed `s` uses seed `(s + i) mod 2**32`, through its
own `torch.Generator`. Image 0 therefore has the job's seed, and re-running any
image as a one-image job with its recorded seed draws the same starting noise.

Progress and cancellation go through `callback_on_step_end`: it reports each
finished denoising step and raises `Cancelled` when asked to stop, which ends
the call at once (nothing is decoded) and leaves the pipeline reusable. The
stages around it (encoding the text, decoding) go to `on_stage` where given.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from ourvidz import catalog
from ourvidz.genworker.errors import Cancelled
from ourvidz.genworker.progress import ENCODING_TEXT, no_stage, step_callback
from ourvidz.v1 import job_pb2, queue_pb2
from services.sdxl.models import PipeBundle

SEED_MODULUS = 2**32
REFERENCE_TYPES = {
    job_pb2.REFERENCE_TYPE_STYLE: "style",
    job_pb2.REFERENCE_TYPE_COMPOSITION: "composition",
    job_pb2.REFERENCE_TYPE_CHARACTER: "character",
}
DEFAULT_REFERENCE_TYPE = "style"
DEFAULT_REFERENCE_STRENGTH = 0.5


@dataclass(frozen=True)
class RenderedImage:
    index: int
    png_bytes: bytes
    seed: int
    width: int
    height: int


@dataclass(frozen=True)
class Plan:
    """What the pipeline will be asked to do, resolved from the task."""

    steps: int
    guidance_scale: float
    strength: float | None  # img2img denoising strength; None for text-to-image


def image_seed(job_seed: int, index: int) -> int:
    return (int(job_seed) + index) % SEED_MODULUS


def has_reference(task: queue_pb2.GenerationTask) -> bool:
    return task.HasField("reference") and bool(task.reference.key)


def plan(task: queue_pb2.GenerationTask, with_reference: bool) -> Plan:
    """Steps and guidance from the task, the catalog's values where the task
    leaves them at zero; reference settings from the catalog's mapping."""
    job_type = catalog.CATALOG.get(task.job_type)
    steps = task.steps or (job_type.steps if job_type else 0)
    guidance = task.guidance_scale or (job_type.guidance_scale if job_type else 0.0)
    if steps <= 0:
        raise ValueError(f"no step count for job type {task.job_type!r}")
    if task.num_images not in catalog.SDXL_NUM_IMAGES:
        raise ValueError(
            f"num_images must be one of {catalog.SDXL_NUM_IMAGES}, got {task.num_images}"
        )
    for name, size in (("width", task.width), ("height", task.height)):
        if size <= 0 or size % catalog.SDXL_SIZE_MULTIPLE:
            raise ValueError(f"{name} must be a positive multiple of {catalog.SDXL_SIZE_MULTIPLE}")
    if not with_reference:
        return Plan(steps=steps, guidance_scale=guidance, strength=None)
    ref_type = REFERENCE_TYPES.get(task.reference.type, DEFAULT_REFERENCE_TYPE)
    ref_strength = task.reference.strength or DEFAULT_REFERENCE_STRENGTH
    ref_strength = min(max(ref_strength, 0.1), 1.0)
    strength, boost = catalog.reference_settings(ref_type, ref_strength)
    return Plan(steps=steps, guidance_scale=max(guidance + boost, 1.0), strength=strength)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render(
    pipe_bundle: PipeBundle,
    task: queue_pb2.GenerationTask,
    reference_image: Image.Image | None,
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    on_stage: Callable[..., None] | None = None,
) -> list[RenderedImage]:
    """Run the job's images as one batch; blocking (call it from a thread).

    `on_step(step, total)` follows each denoising step (1-based); `should_cancel`
    is polled after each step and raises `Cancelled` when true; `on_stage(name,
    total=None)` hears "encoding_text" before the pipeline starts and "decoding"
    after the last step."""
    stage = on_stage or no_stage
    job_plan = plan(task, reference_image is not None)
    if should_cancel():
        raise Cancelled()
    seeds = [image_seed(task.seed, i) for i in range(task.num_images)]
    generators = [torch.Generator(device=pipe_bundle.device).manual_seed(s) for s in seeds]

    callback = step_callback(on_step, should_cancel, stage)

    common = {
        "prompt": task.prompt,
        "negative_prompt": task.negative_prompt or None,
        "num_inference_steps": job_plan.steps,
        "guidance_scale": job_plan.guidance_scale,
        "num_images_per_prompt": task.num_images,
        "generator": generators,
        "callback_on_step_end": callback,
        "output_type": "pil",
    }
    with pipe_bundle.lock, torch.inference_mode():
        # img2img runs a share of the steps that diffusers settles; its first step tells.
        stage(ENCODING_TEXT, job_plan.steps if job_plan.strength is None else None)
        if reference_image is None:
            out = pipe_bundle.txt2img(width=task.width, height=task.height, **common)
        else:
            image = reference_image.convert("RGB").resize(
                (task.width, task.height), Image.Resampling.LANCZOS
            )
            out = pipe_bundle.img2img(image=image, strength=job_plan.strength, **common)
    return [
        RenderedImage(
            index=i, png_bytes=encode_png(img), seed=seeds[i], width=img.width, height=img.height
        )
        for i, img in enumerate(out.images)
    ]


async def render_async(
    pipe_bundle: PipeBundle,
    task: queue_pb2.GenerationTask,
    reference_image: Image.Image | None,
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    on_stage: Callable[..., None] | None = None,
) -> list[RenderedImage]:
    """`render` in a worker thread, never on the event loop."""
    return await asyncio.to_thread(
        render, pipe_bundle, task, reference_image, on_step, should_cancel, on_stage
    )
