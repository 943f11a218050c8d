"""The generation workers' shared parts that need no model: progress by stage
and step, the sorting of failures, and the JetStream loop's resilience."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
import torch

from ourvidz import keys, queue
from ourvidz.genworker import InvalidReference, ProgressReporter, classify
from ourvidz.genworker.errors import device_broken, out_of_memory
from ourvidz.genworker.loop import LoopConfig, Worker
from ourvidz.genworker.memory import low_memory_decode, memory_fallbacks
from ourvidz.settings import WorkerKeySettings
from ourvidz.v1 import queue_pb2
from tests.conftest import WORKER_KEY, WORKER_SIGNER


async def _report(steps, stages_before=(), stages_after=(), *, interval=1000.0, cancel_on=None):
    sent = []
    cancel = threading.Event()

    async def send(progress) -> bool:
        sent.append((progress.stage, progress.step, progress.total))
        return cancel_on is not None and progress.step >= cancel_on

    reporter = ProgressReporter(send, cancel, interval, asyncio.get_running_loop())

    def work() -> None:  # the pipeline's thread
        for name, total in stages_before:
            reporter.stage(name, total)
        for step in steps:
            reporter.step(step, len(steps))
        for name, total in stages_after:
            reporter.stage(name, total)

    await asyncio.to_thread(work)
    await reporter.close()
    return sent, cancel


async def test_stage_changes_go_at_once_and_steps_are_throttled():
    sent, _ = await _report(
        range(1, 11),
        stages_before=[("encoding_text", 10)],
        stages_after=[("decoding", None), ("decoding", None), ("encoding_video", None)],
    )
    assert sent == [
        ("encoding_text", 0, 10),
        ("denoising", 1, 10),  # the first step, a change of stage too
        ("denoising", 10, 10),  # the last step, whatever the interval
        ("decoding", 10, 10),  # the step count never goes back
        ("encoding_video", 10, 10),
    ]


async def test_without_throttle_every_step_is_sent():
    sent, _ = await _report(range(1, 5), interval=0)
    assert [step for _, step, _ in sent] == [1, 2, 3, 4]


async def test_an_answer_asking_to_cancel_sets_the_event():
    _, cancel = await _report(range(1, 4), interval=0, cancel_on=2)
    assert cancel.is_set()


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, None, None, details="nope")


@pytest.mark.parametrize(
    ("exc", "retry", "code"),
    [
        (InvalidReference("cannot use it"), False, "INVALID_REFERENCE"),
        (ValueError("bad size"), False, "INVALID_TASK"),
        (_RpcError(grpc.StatusCode.UNAVAILABLE), True, "UNAVAILABLE"),
        (_RpcError(grpc.StatusCode.INVALID_ARGUMENT), False, "REJECTED"),
        (ConnectionError("down"), True, "STORAGE_UNAVAILABLE"),
        (RuntimeError("boom"), True, "INTERNAL"),
    ],
)
def test_failures_are_sorted_into_retry_or_give_up(exc, retry, code):
    verdict = classify(exc)
    assert (verdict.retry, verdict.code) == (retry, code)


_STICKY = [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA"),
    RuntimeError("CUDA error: unspecified launch failure (cudaErrorLaunchFailure)"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx(...)`"),
]
_OOM = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    torch.cuda.OutOfMemoryError("CUDA out of memory."),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
]


@pytest.mark.parametrize("exc", _STICKY)
def test_a_sticky_cuda_error_is_a_broken_device(exc):
    assert device_broken(exc) and not out_of_memory(exc)
    assert classify(exc).code == "DEVICE_FAILED"
    wrapped = RuntimeError("the pipeline failed")
    wrapped.__cause__ = exc
    assert device_broken(wrapped)


@pytest.mark.parametrize("exc", _OOM)
def test_out_of_memory_is_told_apart(exc):
    assert out_of_memory(exc) and not device_broken(exc)
    assert (classify(exc).retry, classify(exc).code) == (False, "OUT_OF_MEMORY")


def test_other_errors_are_neither():
    for exc in (RuntimeError("boom"), ValueError("memory access"), ConnectionError("down")):
        assert not device_broken(exc) and not out_of_memory(exc)


def test_the_memory_fallbacks_slice_the_decode_then_halve_the_batch():
    described = [m.describe() for m in memory_fallbacks(6)]
    assert described == [
        "VAE slicing and tiling",
        "VAE slicing and tiling + batches of 3",
        "VAE slicing and tiling + batches of 2",
        "VAE slicing and tiling + batches of 1",
    ]
    assert [m.max_batch for m in memory_fallbacks(1)] == [None]
    assert [m.max_batch for m in memory_fallbacks(0)] == [None]


def test_low_memory_decode_restores_the_vae():
    class Vae:
        use_slicing = False
        use_tiling = True  # already on: stays on

        def enable_slicing(self):
            self.use_slicing = True

        def disable_slicing(self):
            self.use_slicing = False

        def enable_tiling(self):
            self.use_tiling = True

        def disable_tiling(self):
            self.use_tiling = False

    vae = Vae()
    with low_memory_decode(vae):
        assert (vae.use_slicing, vae.use_tiling) == (True, True)
    assert (vae.use_slicing, vae.use_tiling) == (False, True)
    with low_memory_decode(vae, enabled=False):
        assert not vae.use_slicing
    with low_memory_decode(None):  # a stand-in pipeline without a VAE
        pass


def test_loop_config_reads_the_family_prefixed_settings():
    class FamSettings(WorkerKeySettings):
        fam_worker_id: str = "w-1"
        fam_ack_wait_seconds: float = 7.0
        fam_retry_backoff_seconds: tuple[float, ...] = (1.0,)
        fam_dependency_wait_seconds: float = 42.0
        fam_dependency_nak_seconds: float = 3.0
        fam_progress_interval_seconds: float = 0.25
        fam_fetch_timeout_seconds: float = 0.5
        fam_shutdown_grace_seconds: float = 9.0
        fam_preview_every_steps: int = 3
        fam_preview_min_seconds: float = 0.75
        fam_preview_max_bytes: int = 5000

    config = LoopConfig.from_settings(
        "fam", FamSettings(worker_key=keys.private_pem(WORKER_KEY).decode())
    )
    assert (config.family, config.worker_id, config.ack_wait_seconds) == ("fam", "w-1", 7.0)
    assert (config.dependency_wait_seconds, config.dependency_nak_seconds) == (42.0, 3.0)
    assert config.retry_backoff_seconds == (1.0,) and config.shutdown_grace_seconds == 9.0
    assert config.signer.kid == WORKER_SIGNER.kid
    assert (config.preview_every_steps, config.preview_min_seconds) == (3, 0.75)
    assert config.preview_max_bytes == 5000


async def test_a_failure_while_handling_a_task_neither_ends_the_loop_nor_loses_the_task(infra):
    # Settling a message can fail (NATS away at that moment); the loop must go
    # on with the next task and the failed one must come back.
    nc, js = await queue.connect(infra.nats_url, name="genworker-loop-test")
    config = LoopConfig(
        family="looptest",
        worker_id="w-loop",
        signer=WORKER_SIGNER,
        ack_wait_seconds=30.0,
        retry_backoff_seconds=(0.0,),
        fetch_timeout_seconds=0.2,
    )
    worker = Worker(config, family=None, nc=nc, js=js, store=None, jobs=None)
    try:
        await worker.declare()
        seen: list[tuple[str, int]] = []

        async def handle(msg) -> None:
            task = queue_pb2.GenerationTask.FromString(msg.data)
            seen.append((task.job_id, msg.metadata.num_delivered))
            if len(seen) == 1:
                raise RuntimeError("the connection dropped while settling")
            await msg.ack_sync()
            if len(seen) == 3:
                worker.stop()

        worker.handle = handle
        for job_id in ("job-a", "job-b"):
            task = queue_pb2.GenerationTask(job_id=job_id, user_id="u")
            subject = queue.job_task_subject(queue.task_subject("looptest", "fast"), job_id)
            await js.publish(subject, task.SerializeToString())
        await asyncio.wait_for(worker.run(), 30)
        assert sorted(seen) == [("job-a", 1), ("job-a", 2), ("job-b", 1)]
    finally:
        await worker.unsubscribe()
        await nc.close()


async def test_tasks_on_an_earlier_versions_subject_are_cleared_at_declare(infra):
    # An earlier version published on `tasks.<family>.<priority>` itself, which
    # no consumer matches now; Jobs' reconciler publishes those jobs again.
    nc, js = await queue.connect(infra.nats_url, name="genworker-legacy-test")
    config = LoopConfig(family="legacytest", worker_id="w-legacy", signer=WORKER_SIGNER)
    worker = Worker(config, family=None, nc=nc, js=js, store=None, jobs=None)
    try:
        await queue.declare_streams(js)
        legacy = queue.task_subject("legacytest", "fast")
        current = queue.job_task_subject(legacy, "job-1")
        await js.publish(legacy, b"old")
        await js.publish(current, b"new")
        await worker.declare()
        assert await queue.task_held(js, [legacy, current]) == {current}
    finally:
        await worker.unsubscribe()
        await js.purge_stream(queue.TASKS_STREAM, subject="tasks.legacytest.>")
        await js.delete_consumer(queue.TASKS_STREAM, queue.consumer_name("legacytest"))
        await nc.close()


async def test_a_service_that_ends_on_its_own_exits_with_its_status():
    # A worker whose device failed ends its task with a non-zero `exit_code`:
    # the process stops the service and exits with that status.
    import signal

    from ourvidz import runtime

    class Service:
        exit_code = 70
        stopped = False

        def __init__(self) -> None:
            self.task = asyncio.create_task(asyncio.sleep(0))

        async def stop(self) -> None:
            self.stopped = True

    service = None

    async def start(settings):
        nonlocal service
        service = Service()
        return service

    try:
        assert await runtime.serve_until_signalled(start, None, "svc") == 70
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    assert service.stopped
