"""Shared fixtures of the WAN tests: one tiny pipeline per test process (the
diffusers import alone costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_wan():
    from services.wan import models

    return models.load("tiny", device="cpu", dtype="float32")


def _make_task(**overrides):
    from ourvidz.v1 import queue_pb2

    fields = {
        "job_id": "job-1",
        "user_id": "user-1",
        "job_type": "video_fast",
        "prompt": "a cat walking through tall grass, tracking shot",
        "negative_prompt": "blurry, static",
        "seed": 1234,
        "num_images": 1,
        "width": 112,
        "height": 64,
        "num_frames": 9,
        "steps": 3,
        "guidance_scale": 6.5,
        "output_bucket": "video-fast",
    }
    fields.update(overrides)
    return queue_pb2.GenerationTask(**fields)


@pytest.fixture(scope="session")
def make_task():
    """A factory of WAN GenerationTasks with small, fast defaults."""
    return _make_task
