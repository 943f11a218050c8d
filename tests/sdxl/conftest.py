"""Shared fixtures of the SDXL tests: one tiny pipeline per test process (the
diffusers import alone costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_bundle():
    from services.sdxl import models

    return models.load("tiny", device="cpu", dtype="float32")


def _make_task(**overrides):
    from ourvidz.v1 import queue_pb2

    fields = {
        "job_id": "job-1",
        "user_id": "user-1",
        "job_type": "sdxl_image_fast",
        "prompt": "a portrait photo of a cat, golden hour",
        "negative_prompt": "blurry, lowres",
        "seed": 1234,
        "num_images": 1,
        "width": 64,
        "height": 64,
        "steps": 3,
        "guidance_scale": 6.0,
        "output_bucket": "sdxl-image-fast",
    }
    fields.update(overrides)
    return queue_pb2.GenerationTask(**fields)


@pytest.fixture(scope="session")
def make_task():
    """A factory of GenerationTasks with small, fast defaults."""
    return _make_task
