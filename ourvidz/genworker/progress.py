"""Progress reports from the torch thread to the jobs service: stages and steps.

A job goes through stages (`STAGES`, in order); within "denoising" it reports
steps. The pipeline runs in a worker thread while gRPC objects belong to the
event loop, so `ProgressReporter.stage` and `.step` (any thread) only decide
what is worth sending and hand it to a single task on the loop, which sends
the reports in order:

- a change of stage is sent at once;
- denoising steps at most one per interval, the first and the last always;
- a preview (`preview`, a small PNG of the current latents) at once, with the
  step it shows.

Each report carries the latest step and total, so a client's step count never
goes backwards when the stage changes. A report's answer may ask to cancel:
that sets the job's cancel event, which the step callback polls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from ourvidz.genworker.errors import Cancelled
from ourvidz.v1 import job_pb2

log = logging.getLogger(__name__)

ENCODING_TEXT = "encoding_text"
DENOISING = "denoising"
DECODING = "decoding"
ENCODING_VIDEO = "encoding_video"
UPLOADING = "uploading"
STAGES = (ENCODING_TEXT, DENOISING, DECODING, ENCODING_VIDEO, UPLOADING)


def no_stage(name: str, total: int | None = None) -> None:
    """An `on_stage` that listens to nothing."""


def step_callback(
    on_step: Callable[[int, int], None],
    should_cancel: Callable[[], bool],
    on_stage: Callable[..., None] = no_stage,
    on_latents: Callable[[int, int, object], None] | None = None,
):
    """A diffusers `callback_on_step_end`: stops the run at the next step when
    `should_cancel()` (raising `Cancelled` decodes nothing and leaves the
    pipeline reusable), reports each step 1-based, hands the step's latents
    to `on_latents(step, total, latents)` where given (previews), and
    announces "decoding" after the last one."""

    def callback(pipe, i, t, kwargs):
        if should_cancel():
            raise Cancelled()
        if on_latents is not None and kwargs.get("latents") is not None:
            on_latents(i + 1, pipe.num_timesteps, kwargs["latents"])
        on_step(i + 1, pipe.num_timesteps)
        if i + 1 == pipe.num_timesteps:
            on_stage(DECODING)
        return kwargs

    return callback


_DONE = None


class ProgressReporter:
    def __init__(
        self,
        # send(progress) or, with a preview, send(progress, preview_png)
        send: Callable[..., Awaitable[bool]],
        cancel: threading.Event,
        interval_seconds: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._send = send
        self._cancel = cancel
        self._interval = interval_seconds
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._lock = threading.Lock()
        self._stage = ""
        self._step = 0
        self._total = 0
        self._last = float("-inf")
        self._task = loop.create_task(self._run())

    def stage(self, name: str, total: int | None = None) -> None:
        """Enter stage `name` (sent at once unless it is the current one);
        `total` sets the step count the job will report."""
        with self._lock:
            if total is not None:
                self._total = total
            if name == self._stage:
                return
            self._stage = name
            self._enqueue()

    def step(self, step: int, total: int) -> None:
        """A finished denoising step (1-based), from the pipeline's thread."""
        now = time.monotonic()
        with self._lock:
            if (self._stage, self._step) == (DENOISING, step):
                return  # sent with its preview already
            changed = self._stage != DENOISING
            self._stage, self._step, self._total = DENOISING, step, total
            if changed or step in (1, total) or now - self._last >= self._interval:
                self._last = now
                self._enqueue()

    def preview(self, step: int, total: int, png: bytes) -> None:
        """A preview image of denoising step `step`, sent at once with that
        step (which `step` then does not send again)."""
        with self._lock:
            self._stage, self._step, self._total = DENOISING, step, total
            self._last = time.monotonic()
            self._enqueue(png)

    def _enqueue(self, preview: bytes = b"") -> None:
        progress = job_pb2.Progress(step=self._step, total=self._total, stage=self._stage)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (progress, preview))

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not _DONE:
            progress, preview = item
            try:
                if await (self._send(progress, preview) if preview else self._send(progress)):
                    self._cancel.set()
            except Exception as exc:  # progress is best effort; the job goes on
                log.warning("progress report failed: %s", exc)

    async def close(self) -> None:
        """Send what is queued, then stop."""
        self._queue.put_nowait(_DONE)
        await self._task
