"""The generation workers' shared parts that need no model: progress by stage
and step, and the sorting of failures."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from ourvidz.genworker import InvalidReference, ProgressReporter, classify
from ourvidz.genworker.loop import LoopConfig
from ourvidz.settings import CommonSettings


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


def test_loop_config_reads_the_family_prefixed_settings():
    class FamSettings(CommonSettings):
        fam_worker_id: str = "w-1"
        fam_ack_wait_seconds: float = 7.0
        fam_max_attempts: int = 2
        fam_retry_backoff_seconds: tuple[float, ...] = (1.0,)
        fam_progress_interval_seconds: float = 0.25
        fam_fetch_timeout_seconds: float = 0.5
        fam_shutdown_grace_seconds: float = 9.0

    config = LoopConfig.from_settings("fam", FamSettings())
    assert (config.family, config.worker_id, config.ack_wait_seconds, config.max_attempts) == (
        "fam",
        "w-1",
        7.0,
        2,
    )
    assert config.retry_backoff_seconds == (1.0,) and config.shutdown_grace_seconds == 9.0
