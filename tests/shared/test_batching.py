"""Which jobs may share a denoising batch, how a batch travels on the queue,
and what a batch's message gets from its jobs."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from ourvidz import batching, queue
from ourvidz.genworker.loop import ACK, NAK, TERM, Settle, combine
from ourvidz.settings import CommonSettings
from ourvidz.v1 import job_pb2, queue_pb2


def _task(**fields) -> queue_pb2.GenerationTask:
    base = {
        "job_id": "j1",
        "job_type": "sdxl_image_fast",
        "prompt": "a cat",
        "num_images": 1,
        "width": 1024,
        "height": 1024,
        "num_frames": 1,
        "steps": 15,
        "guidance_scale": 6.0,
    }
    return queue_pb2.GenerationTask(**{**base, **fields})


def test_jobs_of_one_type_size_steps_and_guidance_share_a_key():
    key = batching.batch_key(_task())
    assert key == ("sdxl_image_fast", 1024, 1024, 15, 6.0)
    # Prompts, seeds and image counts may differ; steps and guidance left
    # at zero are the catalog's.
    other = _task(job_id="j2", prompt="a dog", seed=9, num_images=6, steps=0, guidance_scale=0)
    assert batching.batch_key(other) == key
    assert batching.batch_key(_task(num_frames=0)) == key


@pytest.mark.parametrize(
    "fields",
    [
        {"width": 512},
        {"height": 768},
        {"steps": 20},
        {"guidance_scale": 7.5},
        {"job_type": "sdxl_image_high"},
    ],
)
def test_any_other_setting_is_another_key(fields):
    assert batching.batch_key(_task(**fields)) not in (None, batching.batch_key(_task()))


@pytest.mark.parametrize(
    "task",
    [
        _task(reference=job_pb2.Reference(bucket="reference-images", key="u/r.png")),
        _task(job_type="image_fast"),
        _task(job_type="video_fast", num_frames=81),
        _task(job_type="no_such_type"),
    ],
)
def test_references_wan_and_unknown_types_run_alone(task):
    assert batching.batch_key(task) is None


def test_the_key_works_from_a_job_rows_fields():
    key = batching.batch_key_of(
        job_type="sdxl_image_fast",
        width=1024,
        height=1024,
        steps=15,
        guidance_scale=6.000000238418579,  # a float32's 6.0 read back as a double
        has_reference=False,
    )
    assert key == batching.batch_key(_task())


def test_groups_hold_jobs_of_one_key_up_to_the_image_budget():
    a, b, c, d = (_task(job_id=f"a{i}", num_images=n) for i, n in enumerate((1, 3, 3, 1)))
    high = _task(job_id="h", job_type="sdxl_image_high", steps=25, guidance_scale=7.5)
    big = _task(job_id="big", num_images=6)
    ref = _task(job_id="r", reference=job_pb2.Reference(key="u/r.png"))
    grouped = batching.groups([a, high, b, ref, c, d, big], max_images=6)
    assert [[t.job_id for t in g] for g in grouped] == [
        ["a0", "a1"],  # 1 + 3 images; a2's 3 more would be 7
        ["h"],
        ["r"],
        ["a2", "a3"],
        ["big"],
    ]
    assert batching.groups([big], max_images=4) == [[big]]  # too big alone: still runs


def test_the_image_budget_is_a_shared_setting():
    assert batching.SDXL_BATCH_MAX_IMAGES == 6
    assert CommonSettings().sdxl_batch_max_images == 6
    assert CommonSettings(sdxl_batch_max_images=12).sdxl_batch_max_images == 12


def test_a_batch_travels_as_one_message_on_its_first_jobs_subject():
    tasks = [_task(job_id="a1"), _task(job_id="b2", prompt="a dog")]
    subject, payload, headers = queue.batch_message(tasks, {"Nats-Msg-Id": "m"})
    assert subject == "tasks.sdxl.fast.a1"
    assert headers == {"Nats-Msg-Id": "m", queue.TASK_KIND_HEADER: queue.BATCH_KIND}
    assert queue.is_batch(headers)
    assert queue.decode_tasks(payload, headers) == tasks
    # A single task is a message without the header.
    single = tasks[0].SerializeToString()
    assert not queue.is_batch(None) and not queue.is_batch({"Nats-Msg-Id": "a1"})
    assert queue.decode_tasks(single, {}) == [tasks[0]]
    with pytest.raises(DecodeError):
        queue.decode_tasks(b"\xff\xfe", headers)
    with pytest.raises(ValueError):
        queue.batch_message([])


@pytest.mark.parametrize(
    "settles, combined",
    [
        ([Settle(ACK), Settle(ACK)], Settle(ACK)),
        ([Settle(ACK), Settle(TERM)], Settle(ACK)),
        ([Settle(TERM), Settle(TERM)], Settle(TERM)),
        ([Settle(ACK), Settle(NAK, 5.0), Settle(NAK, 0.5)], Settle(NAK, 0.5)),
        ([Settle(NAK, 15.0), Settle(NAK)], Settle(NAK)),
        ([], Settle(ACK)),
    ],
)
def test_a_batchs_message_is_nakd_when_one_job_must_run_again(settles, combined):
    assert combine(settles) == combined
