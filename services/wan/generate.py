"""One WAN job on the loaded pipeline: a video (MP4 plus a PNG thumbnail) or
a single-frame image (PNG).

Seeds: the job's seed (mod 2**32) seeds a CPU `torch.Generator`, from which the
starting latents are drawn on the CPU in float32 (as `WanPipeline` draws them)
and then moved to the pipeline's device (`ourvidz.seeds`): the same seed gives
the same starting noise on a CPU and on a GPU, and the same frames on one
machine. Steps and guidance come from the task, the catalog's
values where the task leaves them at zero; the negative prompt comes in the
task (Jobs fills WAN's default).

The task is checked again here (defence in depth behind Jobs' checks at
submit): sizes multiples of 16, frame counts 4k+1, no reference image (the
configured model is text-to-video). A task that fails them is a permanent
failure with a message naming the field, never a silent rounding.

Progress and cancellation go through `callback_on_step_end`: it reports each
finished denoising step and raises `Cancelled` when asked to stop, which ends
the call at once (nothing is decoded) and leaves the pipeline reusable.

Each stage is a span of the job's trace and a sample of `ourvidz_stage_seconds`
(`telemetry.stage`): `wan.encode_text` (the pipeline's own `encode_prompt`,
called first; its embeddings are passed in), `wan.denoise` (the pipeline asked
for latents), `wan.decode` (the VAE decode as the pipeline does it; for an
image, its PNG too) and, for a video, `wan.encode_video` (MP4 and thumbnail).
The frames are the same as one call of the pipeline gives.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ourvidz import catalog, seeds, telemetry
from ourvidz.genworker.errors import Cancelled, InvalidReference, InvalidTask
from ourvidz.genworker.memory import FULL_MEMORY, MemoryFallback, low_memory_decode
from ourvidz.genworker.progress import ENCODING_TEXT, ENCODING_VIDEO, no_stage, step_callback
from ourvidz.settings import CatalogLimits
from ourvidz.v1 import queue_pb2
from services.wan.models import PipeBundle

SEED_MODULUS = 2**32
FRAME_MULTIPLE = 4  # WAN's VAE compresses time 4x: frame counts are 4k+1


@dataclass(frozen=True)
class Plan:
    """What the pipeline will be asked to do, resolved from the task."""

    video: bool
    steps: int
    guidance_scale: float
    width: int
    height: int
    num_frames: int
    fps: int


@dataclass(frozen=True)
class Rendered:
    """A finished job: MP4 plus thumbnail for a video, one PNG for an image."""

    data: bytes
    content_type: str
    width: int
    height: int
    num_frames: int
    seed: int
    thumbnail_png: bytes | None = None


def job_seed(task: queue_pb2.GenerationTask) -> int:
    return int(task.seed) % SEED_MODULUS


def has_reference(task: queue_pb2.GenerationTask) -> bool:
    return task.HasField("reference") and bool(task.reference.key or task.reference.upload_id)


def plan(
    task: queue_pb2.GenerationTask, model: str = "", limits: CatalogLimits | None = None
) -> Plan:
    """Check the task against what WAN can run (and the deployment's catalog
    limits, where given) and resolve its defaults."""
    job_type = catalog.CATALOG.get(task.job_type)
    if job_type is None or job_type.worker != "wan":
        raise InvalidTask(f"job_type {task.job_type!r} is not a WAN job type")
    if has_reference(task):
        name = f" ({model})" if model else ""
        raise InvalidReference(
            f"the configured WAN model{name} is text-to-video and cannot use a reference "
            "image; submit the job without reference_image_id"
        )
    for name, size in (("width", task.width), ("height", task.height)):
        if size <= 0 or size % catalog.WAN_SIZE_MULTIPLE:
            raise InvalidTask(
                f"{name} must be a positive multiple of {catalog.WAN_SIZE_MULTIPLE}, got {size}"
            )
        if limits is not None and not limits.wan_min_size <= size <= limits.wan_max_size:
            raise InvalidTask(
                f"{name} must be between {limits.wan_min_size} and {limits.wan_max_size}, "
                f"got {size}"
            )
    video = job_type.output == "video"
    if video:
        frames = task.num_frames or job_type.default_num_frames
        if frames < 1 or (frames - 1) % FRAME_MULTIPLE:
            raise InvalidTask(f"num_frames must be 4k+1 (e.g. 81), got {frames}")
        if limits is not None and frames > limits.wan_max_frames:
            raise InvalidTask(f"num_frames must be at most {limits.wan_max_frames}, got {frames}")
    else:
        if task.num_frames not in (0, 1):
            raise InvalidTask(f"num_frames must be 1 for the image type {job_type.name}")
        frames = 1
    steps = task.steps or job_type.steps
    if steps <= 0:
        raise InvalidTask(f"steps must be positive, got {steps}")
    return Plan(
        video=video,
        steps=steps,
        guidance_scale=task.guidance_scale or job_type.guidance_scale,
        width=task.width,
        height=task.height,
        num_frames=frames,
        fps=job_type.fps,
    )


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline frames in [0, 1] (float) -> RGB bytes."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def encode_png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_mp4(frames: np.ndarray, fps: int, crf: int = 18) -> bytes:
    """RGB frames (F, H, W, 3) -> MP4 (H.264, yuv420p) at `fps`, written with
    PyAV. The index goes up front (faststart) so a player can start before the
    whole file arrives; the muxer rewrites the file for that, hence a temporary
    file rather than memory."""
    import av

    height, width = frames.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="wan-mp4-") as tmp:
        path = Path(tmp) / "video.mp4"
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(stream.encode())
        return path.read_bytes()


def thumbnail_frame(frames: np.ndarray) -> np.ndarray:
    """The middle frame: more of the motion shows there than in the first."""
    return frames[len(frames) // 2]


def render(
    pipe_bundle: PipeBundle,
    task: queue_pb2.GenerationTask,
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    on_stage: Callable[..., None] | None = None,
    *,
    crf: int = 18,
    limits: CatalogLimits | None = None,
    memory: MemoryFallback = FULL_MEMORY,
    on_latents: Callable[[int, int, torch.Tensor], None] | None = None,
) -> Rendered:
    """Run the job; blocking (call it from a thread). With
    `memory.low_memory_decode` (a retry after running out of GPU memory) the
    VAE decodes in tiles where it can.

    `on_step(step, total)` follows each denoising step (1-based); `should_cancel`
    is polled before the run and after each step and raises `Cancelled` when
    true; `on_stage(name, total=None)` hears encoding_text, decoding and, for a
    video, encoding_video; `on_latents(step, total, latents)` gets each step's
    latents (previews)."""
    stage = on_stage or no_stage
    job_plan = plan(task, pipe_bundle.preset, limits)
    if should_cancel():
        raise Cancelled()
    seed = job_seed(task)
    generators = seeds.cpu_generators([seed])

    callback = step_callback(on_step, should_cancel, stage, on_latents)

    pipe = pipe_bundle.pipe
    with pipe_bundle.lock, torch.inference_mode():
        stage(ENCODING_TEXT, job_plan.steps)
        with telemetry.stage("wan.encode_text"):
            embeds = encode_text(
                pipe, task.prompt, task.negative_prompt or None, job_plan.guidance_scale
            )
        with telemetry.stage("wan.denoise"):
            shape = latent_shape(pipe, job_plan.width, job_plan.height, job_plan.num_frames)
            noise = seeds.initial_noise(generators, shape, torch.float32, pipe._execution_device)
            latents = pipe(
                height=job_plan.height,
                width=job_plan.width,
                num_frames=job_plan.num_frames,
                num_inference_steps=job_plan.steps,
                guidance_scale=job_plan.guidance_scale,
                generator=generators[0],
                latents=noise,
                callback_on_step_end=callback,
                output_type="latent",
                **embeds,
            ).frames
        with (
            telemetry.stage("wan.decode"),
            low_memory_decode(pipe.vae, memory.low_memory_decode),
        ):
            frames = to_uint8(decode(pipe, latents)[0])
            png = None if job_plan.video else encode_png(frames[0])
    common = {
        "width": job_plan.width,
        "height": job_plan.height,
        "num_frames": len(frames),
        "seed": seed,
    }
    if png is not None:
        return Rendered(data=png, content_type="image/png", **common)
    stage(ENCODING_VIDEO)
    with telemetry.stage("wan.encode_video"):
        return Rendered(
            data=encode_mp4(frames, job_plan.fps, crf),
            content_type="video/mp4",
            thumbnail_png=encode_png(thumbnail_frame(frames)),
            **common,
        )


def latent_shape(pipe, width: int, height: int, num_frames: int) -> tuple[int, int, int, int]:
    """One video's starting latents, as `WanPipeline.prepare_latents` shapes
    them (diffusers 0.42): channels, latent frames, height, width."""
    spatial = pipe.vae_scale_factor_spatial
    return (
        pipe.transformer.config.in_channels,
        (num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
        int(height) // spatial,
        int(width) // spatial,
    )


# The pipeline's default prompt length (`WanPipeline.__call__`), which its
# `encode_prompt` does not share.
MAX_SEQUENCE_LENGTH = 512


def encode_text(pipe, prompt: str, negative_prompt: str | None, guidance_scale: float) -> dict:
    """The prompt embeddings as the pipeline's own call computes them, ready
    to be passed back to it."""
    positive, negative = pipe.encode_prompt(
        prompt=prompt,
        negative_prompt=negative_prompt,
        do_classifier_free_guidance=guidance_scale > 1.0,
        num_videos_per_prompt=1,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        device=pipe._execution_device,
    )
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative}


def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Latents to frames in [0, 1] (batch, frames, height, width, 3), the
    steps of `WanPipeline`'s own decoding (diffusers 0.42)."""
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    latents = latents / std + mean
    video = vae.decode(latents, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")
    pipe.maybe_free_model_hooks()
    return frames


async def render_async(
    pipe_bundle: PipeBundle,
    task: queue_pb2.GenerationTask,
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    on_stage: Callable[..., None] | None = None,
    *,
    crf: int = 18,
    limits: CatalogLimits | None = None,
    memory: MemoryFallback = FULL_MEMORY,
    on_latents: Callable[[int, int, torch.Tensor], None] | None = None,
) -> Rendered:
    """`render` in a worker thread, never on the event loop."""
    return await asyncio.to_thread(
        render,
        pipe_bundle,
        task,
        on_step,
        should_cancel,
        on_stage,
        crf=crf,
        limits=limits,
        memory=memory,
        on_latents=on_latents,
    )
