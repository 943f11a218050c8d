"""The WAN family of the shared generation loop (`ourvidz.genworker`): a
task rendered into a video (MP4 at `<user_id>/<job_id>.mp4` in the job's
bucket, its PNG thumbnail at `<user_id>/<job_id>.png` in the thumbnails
bucket) or a single-frame image (`<user_id>/<job_id>_0.png`)."""

from __future__ import annotations

from collections.abc import Callable

from ourvidz import catalog, provenance
from ourvidz.genworker import Blob, JobRun, Output, previews
from ourvidz.settings import CatalogLimits
from ourvidz.v1 import queue_pb2
from services.wan import generate
from services.wan.models import PipeBundle

FAMILY = "wan"


def video_key(task: queue_pb2.GenerationTask) -> str:
    return catalog.video_key(task.user_id, task.job_id)


def thumbnail_key(task: queue_pb2.GenerationTask) -> str:
    return catalog.thumbnail_key(task.user_id, task.job_id)


def image_key(task: queue_pb2.GenerationTask) -> str:
    return catalog.image_key(task.user_id, task.job_id, 0)


class WanFamily:
    def __init__(
        self,
        bundle: Callable[[], PipeBundle | None],
        *,
        crf: int = 18,
        limits: CatalogLimits | None = None,
    ) -> None:
        self._bundle = bundle
        self._crf = crf
        self._limits = limits

    async def render(self, run: JobRun) -> list[Output]:
        bundle = self._bundle()
        if bundle is None:
            raise RuntimeError("model not loaded")
        task = run.task
        out = await generate.render_async(
            bundle,
            task,
            run.progress.step,
            run.should_cancel,
            run.progress.stage,
            crf=self._crf,
            limits=self._limits,
            memory=run.memory,
            on_latents=run.previews.hook(previews.wan_project, run.progress.preview),
        )
        used = generate.plan(task, bundle.preset, self._limits)
        run.provenance = provenance.for_job(bundle.provenance, "", used.steps, used.guidance_scale)
        if out.thumbnail_png is None:
            file = Blob(task.output_bucket, image_key(task), out.data, out.content_type)
            thumbnail = None
        else:
            file = Blob(task.output_bucket, video_key(task), out.data, out.content_type)
            thumbnail = Blob(
                catalog.THUMBNAIL_BUCKET, thumbnail_key(task), out.thumbnail_png, "image/png"
            )
        return [
            Output(
                index=0,
                file=file,
                width=out.width,
                height=out.height,
                seed=out.seed,
                num_frames=out.num_frames,
                thumbnail=thumbnail,
            )
        ]
