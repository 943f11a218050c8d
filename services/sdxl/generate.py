"""One generation job on the loaded pipelines: text-to-image, or image-to-image
when the job carries a reference, all images of the job in one batch.

Seeds: image `i` of a job with seed `s` uses seed `(s + i) mod 2**32`, through its
own `torch.Generator`. Image 0 therefore has the job's seed, and re-running any
image as a one-image job with its recorded seed draws the same starting noise.
The generators live on the CPU (`ourvidz.seeds`): text-to-image gets its
starting latents drawn there in float32 (`latents=`), image-to-image (whose
latents are the reference's encoding plus noise) the CPU generators, from which
diffusers draws on the CPU too. A seed therefore starts from the same noise on
a CPU and on a GPU, in float32 and in bfloat16.

After an out-of-memory error the job runs again with less memory
(`MemoryFallback`): the VAE decodes in slices and tiles, and the images go
through the pipeline in batches of at most `max_batch`, each with its own
seed as above, so the images are the ones the whole batch gives. Progress
then counts the steps of all batches.

Several text-to-image jobs of one batch key (`ourvidz.batching`) run as one
batch (`render_batch`): each image with its own job's prompt, negative prompt
(each job's encoded as its one-job run encodes it, then stacked) and seed as
above, so each job's images are the ones it gets alone, within the rounding
of the batch size; the memory fallback and the image budget cut the batch's
image list, never a seed.

Progress and cancellation go through `callback_on_step_end`: it reports each
finished denoising step and raises `Cancelled` when asked to stop, which ends
the call at once (nothing is decoded) and leaves the pipeline reusable. The
stages around it (encoding the text, decoding) go to `on_stage` where given.

Each stage is a span of the job's trace and a sample of `ourvidz_stage_seconds`
(`telemetry.stage`): `sdxl.encode_text` (the pipeline's own `encode_prompt`,
called first; its embeddings are passed in), `sdxl.denoise` (the pipeline
asked for latents: timesteps, the starting noise, for img2img the reference's
encoding, and the steps) and `sdxl.decode` (the VAE decode as the pipeline
does it, then the PNGs). The images are the same bytes as one call of the
pipeline gives. A stand-in pipeline without a text encoder and VAE (the
control-plane preset) is one `sdxl.denoise` stage.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ourvidz import catalog, seeds, telemetry
from ourvidz.genworker.errors import Cancelled
from ourvidz.genworker.memory import FULL_MEMORY, MemoryFallback, low_memory_decode
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


@dataclass(frozen=True)
class _Row:
    """One image of a pipeline batch: whose it is (`member`, the task's place
    in the batch), its index in that job, its seed and its prompts."""

    member: int
    index: int
    seed: int
    prompt: str
    negative: str | None


def _rows(member: int, task: queue_pb2.GenerationTask) -> list[_Row]:
    negative = task.negative_prompt or None
    return [
        _Row(member, i, image_seed(task.seed, i), task.prompt, negative)
        for i in range(task.num_images)
    ]


def render(
    pipe_bundle: PipeBundle,
    task: queue_pb2.GenerationTask,
    reference_image: Image.Image | None,
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    on_stage: Callable[..., None] | None = None,
    memory: MemoryFallback = FULL_MEMORY,
    on_latents: Callable[[int, int, torch.Tensor], None] | None = None,
) -> list[RenderedImage]:
    """Run the job's images as one batch (or in batches of `memory.max_batch`);
    blocking (call it from a thread).

    `on_step(step, total)` follows each denoising step (1-based); `should_cancel`
    is polled after each step and raises `Cancelled` when true; `on_stage(name,
    total=None)` hears "encoding_text" before the pipeline starts and "decoding"
    after the last step; `on_latents(step, total, latents)` gets each step's
    latents (previews), counted like `on_step`."""
    job_plan = plan(task, reference_image is not None)
    if reference_image is None:
        pipe = pipe_bundle.txt2img
        call = {"width": task.width, "height": task.height}
    else:
        pipe = pipe_bundle.img2img
        image = reference_image.convert("RGB").resize(
            (task.width, task.height), Image.Resampling.LANCZOS
        )
        call = {"image": image, "strength": job_plan.strength}
    (images,) = _render_rows(
        pipe_bundle,
        pipe,
        call,
        job_plan,
        _rows(0, task),
        on_step,
        should_cancel,
        on_stage or no_stage,
        memory.max_batch,
        memory.low_memory_decode,
        [on_latents],
    )
    return images


def render_batch(
    pipe_bundle: PipeBundle,
    tasks: Sequence[queue_pb2.GenerationTask],
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    on_stage: Callable[..., None] | None = None,
    memory: MemoryFallback = FULL_MEMORY,
    on_latents: Sequence[Callable[[int, int, torch.Tensor], None] | None] = (),
    max_images: int | None = None,
) -> list[list[RenderedImage]]:
    """Several text-to-image jobs of one batch key (`ourvidz.batching`) as one
    batch: each image with its own job's prompt, negative prompt and seed
    (`image_seed`), so each job's images are the ones it renders alone. The
    images go through the pipeline in calls of at most `max_images` (and
    `memory.max_batch`); blocking (call it from a thread).

    `on_step`, `should_cancel` and `on_stage` as in `render`, for the whole
    batch (`should_cancel` true stops every job); `on_latents[m]` gets job
    `m`'s rows of each step's latents (previews). The images of each task, in
    the order of `tasks`."""
    plans = {plan(task, False) for task in tasks}
    if len(plans) != 1 or len({(t.width, t.height) for t in tasks}) != 1:
        raise ValueError("the tasks of a batch need the same size, steps and guidance")
    rows = [row for member, task in enumerate(tasks) for row in _rows(member, task)]
    limits = [n for n in (memory.max_batch, max_images) if n]
    return _render_rows(
        pipe_bundle,
        pipe_bundle.txt2img,
        {"width": tasks[0].width, "height": tasks[0].height},
        plans.pop(),
        rows,
        on_step,
        should_cancel,
        on_stage or no_stage,
        min(limits) if limits else None,
        memory.low_memory_decode,
        list(on_latents) or [None] * len(tasks),
    )


def _render_rows(
    pipe_bundle: PipeBundle,
    pipe,
    call: dict,
    job_plan: Plan,
    rows: list[_Row],
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    stage: Callable[..., None],
    max_batch: int | None,
    low_memory: bool,
    on_latents: Sequence[Callable[[int, int, torch.Tensor], None] | None],
) -> list[list[RenderedImage]]:
    """`rows` through `pipe` in pipeline calls of at most `max_batch` images;
    the rendered images of each member, in order."""
    if should_cancel():
        raise Cancelled()
    size = min(max_batch or len(rows), len(rows))
    batches = [rows[i : i + size] for i in range(0, len(rows), size)]
    rendered: list[list[RenderedImage]] = [[] for _ in on_latents]
    with (
        pipe_bundle.lock,
        torch.inference_mode(),
        low_memory_decode(getattr(pipe, "vae", None), low_memory),
    ):
        # img2img runs a share of the steps that diffusers settles; its first step tells.
        stage(ENCODING_TEXT, job_plan.steps if job_plan.strength is None else None)
        for done, batch in enumerate(batches):

            def batch_step(step: int, total: int, done: int = done) -> None:
                on_step(done * total + step, len(batches) * total)

            def batch_stage(name: str, total: int | None = None, done: int = done) -> None:
                if done == len(batches) - 1:  # "decoding" once, after the last batch
                    stage(name, total)

            def batch_latents(step: int, total: int, latents, done=done, batch=batch) -> None:
                for member, hook in enumerate(on_latents):
                    picked = [i for i, row in enumerate(batch) if row.member == member]
                    if hook is not None and picked:
                        hook(
                            done * total + step,
                            len(batches) * total,
                            latents[picked[0] : picked[-1] + 1],
                        )

            previews = any(hook is not None for hook in on_latents)
            call["generator"] = seeds.cpu_generators([row.seed for row in batch])
            call["callback_on_step_end"] = step_callback(
                batch_step, should_cancel, batch_stage, batch_latents if previews else None
            )
            call["num_inference_steps"] = job_plan.steps
            call["guidance_scale"] = job_plan.guidance_scale
            images, pngs = _render_batch(pipe, batch, call)
            for row, image, png in zip(batch, images, pngs, strict=True):
                rendered[row.member].append(
                    RenderedImage(
                        index=row.index,
                        png_bytes=png,
                        seed=row.seed,
                        width=image.width,
                        height=image.height,
                    )
                )
    return rendered


def _prompt_runs(rows: list[_Row]) -> list[tuple[str, str | None, int]]:
    """The rows of a pipeline call as (prompt, negative prompt, count) of
    consecutive images of one member."""
    runs: list[tuple[int, str, str | None, int]] = []
    for row in rows:
        if runs and runs[-1][0] == row.member:
            member, prompt, negative, count = runs[-1]
            runs[-1] = (member, prompt, negative, count + 1)
        else:
            runs.append((row.member, row.prompt, row.negative, 1))
    return [(prompt, negative, count) for _, prompt, negative, count in runs]


def _render_batch(pipe, rows: list[_Row], call: dict) -> tuple[list[Image.Image], list[bytes]]:
    """One pipeline call of the images `rows`: the images and their PNGs."""
    runs = _prompt_runs(rows)
    if not stages_apart(pipe):
        if len(runs) == 1:
            (prompt, negative, count) = runs[0]
            prompts = {
                "prompt": prompt,
                "negative_prompt": negative,
                "num_images_per_prompt": count,
            }
        else:  # one prompt per image, as diffusers takes a list
            prompts = {
                "prompt": [row.prompt for row in rows],
                "negative_prompt": [row.negative or "" for row in rows],
                "num_images_per_prompt": 1,
            }
        with telemetry.stage("sdxl.denoise"):
            out = pipe(output_type="pil", **prompts, **call)
        with telemetry.stage("sdxl.decode"):
            return out.images, [encode_png(img) for img in out.images]
    with telemetry.stage("sdxl.encode_text"):
        # Each job's prompts encoded as its one-job run encodes them (an empty
        # negative prompt is zeros there, not the encoding of ""), then stacked.
        parts = [encode_text(pipe, p, n, count, call["guidance_scale"]) for p, n, count in runs]
        embeds = {
            name: None if parts[0][name] is None else torch.cat([part[name] for part in parts])
            for name in parts[0]
        }
    with telemetry.stage("sdxl.denoise"):
        if "image" not in call:  # text-to-image: the starting noise, drawn on the CPU
            dtype = embeds["prompt_embeds"].dtype  # what the pipeline draws in
            call = {
                **call,
                "latents": seeds.initial_noise(
                    call["generator"],
                    latent_shape(pipe, call["width"], call["height"]),
                    dtype,
                    pipe._execution_device,
                ),
            }
        # The embeddings hold every image of the batch already.
        latents = pipe(num_images_per_prompt=1, output_type="latent", **embeds, **call).images
    with telemetry.stage("sdxl.decode"):
        images = decode(pipe, latents)
        return images, [encode_png(img) for img in images]


def stages_apart(pipe) -> bool:
    """Whether the pipeline's text encoding and decoding can be run apart
    from its denoising (a diffusers SDXL pipeline; not a stand-in)."""
    return callable(getattr(pipe, "encode_prompt", None)) and getattr(pipe, "vae", None) is not None


def latent_shape(pipe, width: int, height: int) -> tuple[int, int, int]:
    """One image's starting latents, as the text-to-image pipeline's
    `prepare_latents` shapes them (diffusers 0.42)."""
    scale = pipe.vae_scale_factor
    return (pipe.unet.config.in_channels, int(height) // scale, int(width) // scale)


def encode_text(
    pipe, prompt: str, negative_prompt: str | None, num_images: int, guidance_scale: float
) -> dict:
    """The prompt embeddings of a batch of `num_images`, as the pipeline's
    own call computes them, ready to be passed back to it."""
    guided = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    positive, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompt,
        device=pipe._execution_device,
        num_images_per_prompt=num_images,
        do_classifier_free_guidance=guided,
        negative_prompt=negative_prompt,
    )
    return {
        "prompt_embeds": positive,
        "negative_prompt_embeds": negative,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def decode(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """Latents to images, the steps of the SDXL pipelines' own decoding
    (diffusers 0.42: upcast a float16 VAE that asks for it, unscale, decode,
    post-process); the watermarker is off in every bundle."""
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
        latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    latents = latents.to(get_module_execution_device(vae))
    image = vae.decode(latents, return_dict=False)[0]
    if upcast:
        vae.to(dtype=torch.float16)
    images = pipe.image_processor.postprocess(image, output_type="pil")
    pipe.maybe_free_model_hooks()
    return images


async def render_async(
    pipe_bundle: PipeBundle,
    task: queue_pb2.GenerationTask,
    reference_image: Image.Image | None,
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    on_stage: Callable[..., None] | None = None,
    memory: MemoryFallback = FULL_MEMORY,
    on_latents: Callable[[int, int, torch.Tensor], None] | None = None,
) -> list[RenderedImage]:
    """`render` in a worker thread, never on the event loop."""
    return await asyncio.to_thread(
        render,
        pipe_bundle,
        task,
        reference_image,
        on_step,
        should_cancel,
        on_stage,
        memory,
        on_latents,
    )
