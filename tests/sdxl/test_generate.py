"""Generation on the tiny pipeline: images, seeds, progress, cancellation,
references."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ourvidz import catalog
from ourvidz.v1 import job_pb2
from services.sdxl import generate


def _noop(*args):
    return None


def _never():
    return False


def _decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_batch_gives_pngs_of_the_size_with_per_index_seeds(tiny_bundle, make_task):
    task = make_task(num_images=3, width=128, height=64, seed=2**32 - 2)
    images = generate.render(tiny_bundle, task, None, _noop, _never)
    assert [im.index for im in images] == [0, 1, 2]
    assert [im.seed for im in images] == [2**32 - 2, 2**32 - 1, 0]  # (seed + index) mod 2^32
    for im in images:
        assert im.png_bytes.startswith(b"\x89PNG\r\n\x1a\n")
        decoded = _decode(im.png_bytes)
        assert decoded.size == (128, 64) == (im.width, im.height)
        assert decoded.mode == "RGB"
    assert len({im.png_bytes for im in images}) == 3


def test_same_seed_gives_identical_bytes(tiny_bundle, make_task):
    task = make_task(num_images=1, seed=7)
    a = generate.render(tiny_bundle, task, None, _noop, _never)
    b = generate.render(tiny_bundle, task, None, _noop, _never)
    c = generate.render(tiny_bundle, make_task(num_images=1, seed=8), None, _noop, _never)
    assert a[0].png_bytes == b[0].png_bytes
    assert a[0].png_bytes != c[0].png_bytes


def test_progress_rises_to_the_step_count(tiny_bundle, make_task):
    seen = []
    generate.render(tiny_bundle, make_task(steps=4), None, lambda s, t: seen.append((s, t)), _never)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_stops_at_the_next_step_and_pipeline_stays_usable(tiny_bundle, make_task):
    task = make_task(steps=4, seed=5)
    seen = []
    with pytest.raises(generate.Cancelled):
        generate.render(
            tiny_bundle, task, None, lambda s, t: seen.append(s), lambda: len(seen) >= 2
        )
    assert seen == [1, 2]
    before = generate.render(tiny_bundle, task, None, _noop, _never)
    again = generate.render(tiny_bundle, task, None, _noop, _never)
    assert before[0].png_bytes == again[0].png_bytes


def test_cancel_before_start_runs_nothing(tiny_bundle, make_task):
    seen = []
    with pytest.raises(generate.Cancelled):
        generate.render(tiny_bundle, make_task(), None, lambda s, t: seen.append(s), lambda: True)
    assert seen == []


def test_reference_runs_img2img_with_the_catalog_strength(tiny_bundle, make_task):
    reference = Image.new("RGB", (300, 200), (200, 30, 30))
    task = make_task(
        steps=10,
        num_images=3,
        reference=job_pb2.Reference(
            type=job_pb2.REFERENCE_TYPE_COMPOSITION,
            strength=0.6,
            bucket="reference-images",
            key="u/r.png",
        ),
    )
    strength, boost = catalog.reference_settings("composition", 0.6)
    seen = []
    images = generate.render(tiny_bundle, task, reference, lambda s, t: seen.append((s, t)), _never)
    expected = int(10 * strength)
    assert seen == [(i, expected) for i in range(1, expected + 1)]
    assert [_decode(im.png_bytes).size for im in images] == [(64, 64)] * 3
    plan = generate.plan(task, with_reference=True)
    assert plan.strength == strength
    assert plan.guidance_scale == pytest.approx(6.0 + boost)


@pytest.mark.parametrize(
    ("ref_type", "name"),
    [
        (job_pb2.REFERENCE_TYPE_STYLE, "style"),
        (job_pb2.REFERENCE_TYPE_COMPOSITION, "composition"),
        (job_pb2.REFERENCE_TYPE_CHARACTER, "character"),
    ],
)
def test_reference_type_maps_to_catalog_settings(make_task, ref_type, name):
    task = make_task(reference=job_pb2.Reference(type=ref_type, strength=0.9, key="k"))
    plan = generate.plan(task, with_reference=True)
    strength, boost = catalog.reference_settings(name, 0.9)
    assert (plan.strength, plan.guidance_scale) == (strength, pytest.approx(6.0 + boost))


def test_task_defaults_come_from_the_catalog(make_task):
    plan = generate.plan(make_task(steps=0, guidance_scale=0.0, job_type="sdxl_image_high"), False)
    assert (plan.steps, plan.guidance_scale, plan.strength) == (25, 7.5, None)


@pytest.mark.parametrize(
    "overrides", [{"width": 100}, {"height": 0}, {"num_images": 2}, {"job_type": "x", "steps": 0}]
)
def test_tasks_the_model_cannot_run_are_value_errors(tiny_bundle, make_task, overrides):
    with pytest.raises(ValueError):
        generate.render(tiny_bundle, make_task(**overrides), None, _noop, _never)


async def test_stages_are_spans_of_the_job_in_hand_from_the_render_thread(tiny_bundle, make_task):
    from ourvidz import telemetry

    with telemetry.capture() as exporter:
        with telemetry.job(
            "sdxl", "sdxl.job", None, job_id="job-1", job_type="sdxl_image_fast", attempt=2
        ) as job:
            await generate.render_async(tiny_bundle, make_task(), None, _noop, _never)
        stages = [s for s in exporter.get_finished_spans() if s.name != "sdxl.job"]
    assert [s.name for s in stages] == ["sdxl.encode_text", "sdxl.denoise", "sdxl.decode"]
    for span in stages:
        assert span.parent.span_id == job.span.get_span_context().span_id
        assert (span.attributes["job.id"], span.attributes["job.attempt"]) == ("job-1", 2)


def _pixels(png: bytes):
    import numpy as np

    return np.asarray(_decode(png), dtype=np.int16)


def _jobs(make_task):
    """Three jobs of one batch key: other prompts, seeds and image counts, one
    without a negative prompt."""
    return [
        make_task(job_id="a", prompt="a red cat", seed=5, num_images=1),
        make_task(job_id="b", prompt="a blue dog", seed=99, num_images=3, negative_prompt=""),
        make_task(job_id="c", prompt="a green bird", seed=7, num_images=1),
    ]


@pytest.mark.parametrize("max_images", [None, 2])
def test_a_batch_of_jobs_gives_each_job_its_images_alone(tiny_bundle, make_task, max_images):
    tasks = _jobs(make_task)
    alone = [generate.render(tiny_bundle, task, None, _noop, _never) for task in tasks]
    steps, rows = [], []
    together = generate.render_batch(
        tiny_bundle,
        tasks,
        lambda step, total: steps.append((step, total)),
        _never,
        on_latents=[None, lambda s, t, latents: rows.append((s, latents.shape[0])), None],
        max_images=max_images,
    )
    calls = 1 if max_images is None else 3  # 5 images in calls of at most 2
    assert steps == [(s, 3 * calls) for s in range(1, 3 * calls + 1)]
    # Job b's own rows of each step's latents (its previews): all 3 in one
    # call; 1 then 2 in calls of two (a|b, b|b, c).
    per_call = [3] if max_images is None else [1, 2]
    assert [n for _, n in rows] == [n for n in per_call for _ in range(3)]
    for images, expected in zip(together, alone, strict=True):
        assert [(i.index, i.seed) for i in images] == [(i.index, i.seed) for i in expected]
        for got, want in zip(images, expected, strict=True):
            assert abs(_pixels(got.png_bytes) - _pixels(want.png_bytes)).max() <= 1


def test_a_batch_of_jobs_needs_one_size_steps_and_guidance(tiny_bundle, make_task):
    tasks = [make_task(job_id="a"), make_task(job_id="b", steps=4)]
    with pytest.raises(ValueError, match="same size, steps and guidance"):
        generate.render_batch(tiny_bundle, tasks, _noop, _never)
