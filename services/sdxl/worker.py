"""The SDXL family of the shared generation loop (`ourvidz.genworker`): a
task's reference image fetched and decoded, its images rendered, and the PNGs
they become under deterministic keys `<user_id>/<job_id>_<index>.png`.

The jobs of a batch message render together (`render_batch`): those of one
batch key (`ourvidz.batching`) in one pipeline call of at most
`sdxl_batch_max_images` images per call, each with its own prompts and
seeds; a job with a reference (or of another key) renders alone, after them.
Every job not cancelled hears the shared step count; a cancelled job's rows
are still computed, so the others' images do not change, and dropped."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

from PIL import Image, UnidentifiedImageError

from ourvidz import batching, catalog, provenance
from ourvidz.errors import NotFound
from ourvidz.genworker import (
    Blob,
    Cancelled,
    InvalidReference,
    JobRun,
    Output,
    PermanentError,
    previews,
)
from ourvidz.v1 import queue_pb2
from services.sdxl import generate
from services.sdxl.models import PipeBundle

FAMILY = "sdxl"
CONTENT_TYPE = "image/png"


def output_key(task: queue_pb2.GenerationTask, index: int) -> str:
    return catalog.image_key(task.user_id, task.job_id, index)


class SdxlFamily:
    def __init__(
        self,
        bundle: Callable[[], PipeBundle | None],
        max_batch_images: int = batching.SDXL_BATCH_MAX_IMAGES,
    ) -> None:
        self._bundle = bundle
        self._max_batch_images = max_batch_images

    def _loaded(self) -> PipeBundle:
        bundle = self._bundle()
        if bundle is None:
            raise RuntimeError("model not loaded")
        return bundle

    async def render(self, run: JobRun) -> list[Output]:
        bundle = self._loaded()
        task = run.task
        reference = await self._reference(run) if generate.has_reference(task) else None
        images = await generate.render_async(
            bundle,
            task,
            reference,
            run.progress.step,
            run.should_cancel,
            on_stage=run.progress.stage,
            memory=run.memory,
            on_latents=run.previews.hook(previews.sdxl_project, run.progress.preview),
        )
        self._record(bundle, run, generate.plan(task, reference is not None))
        return _outputs(task, images)

    async def render_batch(self, runs: list[JobRun]) -> list[list[Output] | Exception]:
        """The jobs of a batch message: each batch key's jobs in one batch,
        the rest alone; a job's own failure (a bad task or reference, its
        cancellation) in its place, a failure of the whole render raised."""
        bundle = self._loaded()
        results: list[list[Output] | Exception | None] = [None] * len(runs)
        groups: dict[tuple, list[int]] = {}
        alone: list[int] = []
        for i, run in enumerate(runs):
            key = batching.batch_key(run.task)
            try:
                generate.plan(run.task, False)
            except ValueError as exc:
                results[i] = exc
                continue
            if key is None:
                alone.append(i)
            else:
                groups.setdefault(key, []).append(i)
        for members in groups.values():
            if len(members) == 1:
                alone += members
                continue
            group = [runs[i] for i in members]
            try:
                rendered = await self._together(bundle, group)
            except (Cancelled, PermanentError, ValueError) as exc:
                rendered = [exc] * len(group)
            for i, result in zip(members, rendered, strict=True):
                results[i] = result
        for i in sorted(alone):
            try:
                results[i] = await self.render(runs[i])
            except (Cancelled, PermanentError, ValueError) as exc:
                results[i] = exc
        if any(run.abort.is_set() for run in runs):
            raise Cancelled()  # the worker stops: every job goes back to the queue
        return results

    async def _together(self, bundle: PipeBundle, runs: list[JobRun]) -> list[list[Output]]:
        """Jobs of one batch key in one batch, progress to each job not cancelled."""

        def live() -> list[JobRun]:
            return [run for run in runs if not run.should_cancel()]

        def on_step(step: int, total: int) -> None:
            for run in live():
                run.progress.step(step, total)

        def on_stage(name: str, total: int | None = None) -> None:
            for run in live():
                run.progress.stage(name, total)

        images = await asyncio.to_thread(
            generate.render_batch,
            bundle,
            [run.task for run in runs],
            on_step,
            lambda: not live(),
            on_stage=on_stage,
            memory=runs[0].memory,
            on_latents=[
                run.previews.hook(previews.sdxl_project, run.progress.preview) for run in runs
            ],
            max_images=self._max_batch_images,
        )
        for run in runs:
            self._record(bundle, run, generate.plan(run.task, False))
        return [
            _outputs(run.task, job_images) for run, job_images in zip(runs, images, strict=True)
        ]

    @staticmethod
    def _record(bundle: PipeBundle, run: JobRun, used: generate.Plan) -> None:
        run.provenance = provenance.for_job(
            bundle.provenance, "", used.steps, used.guidance_scale, used.strength
        )

    async def _reference(self, run: JobRun) -> Image.Image:
        ref = run.task.reference
        try:
            data = await run.store.get(ref.bucket, ref.key)
        except NotFound as exc:
            raise InvalidReference("the reference image no longer exists") from exc
        except ValueError as exc:
            raise InvalidReference(f"bad reference location: {exc}") from exc

        def decode() -> Image.Image:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    return image.convert("RGB")
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
                raise InvalidReference("the reference image cannot be decoded") from exc

        return await asyncio.to_thread(decode)


def _outputs(task: queue_pb2.GenerationTask, images: list[generate.RenderedImage]) -> list[Output]:
    return [
        Output(
            index=image.index,
            file=Blob(
                task.output_bucket, output_key(task, image.index), image.png_bytes, CONTENT_TYPE
            ),
            width=image.width,
            height=image.height,
            seed=image.seed,
        )
        for image in images
    ]
