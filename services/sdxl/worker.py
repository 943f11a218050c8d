"""The SDXL family of the shared generation loop (`ourvidz.genworker`): a
task's reference image fetched and decoded, its images rendered, and the PNGs
they become under deterministic keys `<user_id>/<job_id>_<index>.png`."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

from PIL import Image, UnidentifiedImageError

from ourvidz import catalog, provenance
from ourvidz.errors import NotFound
from ourvidz.genworker import Blob, InvalidReference, JobRun, Output, previews
from ourvidz.v1 import queue_pb2
from services.sdxl import generate
from services.sdxl.models import PipeBundle

FAMILY = "sdxl"
CONTENT_TYPE = "image/png"


def output_key(task: queue_pb2.GenerationTask, index: int) -> str:
    return catalog.image_key(task.user_id, task.job_id, index)


class SdxlFamily:
    def __init__(self, bundle: Callable[[], PipeBundle | None]) -> None:
        self._bundle = bundle

    async def render(self, run: JobRun) -> list[Output]:
        bundle = self._bundle()
        if bundle is None:
            raise RuntimeError("model not loaded")
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
        used = generate.plan(task, reference is not None)
        run.provenance = provenance.for_job(
            bundle.provenance, "", used.steps, used.guidance_scale, used.strength
        )
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
