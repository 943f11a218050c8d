"""Generation on the tiny WAN pipeline: MP4 and thumbnail, single-frame
images, seeds, stages, cancellation, and the checks behind Jobs' own."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from ourvidz.genworker import Cancelled, InvalidReference, InvalidTask
from ourvidz.settings import CatalogLimits
from ourvidz.v1 import job_pb2
from services.wan import generate


def _noop(*args, **kwargs):
    return None


def _never():
    return False


def decode_mp4(data: bytes) -> tuple[list[np.ndarray], object]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.format.name, stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames, info


def decode_png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_video_is_an_h264_mp4_of_the_requested_frames_and_size(tiny_wan, make_task):
    out = generate.render(tiny_wan, make_task(num_frames=9, width=112, height=64), _noop, _never)
    frames, (codec, pix_fmt, rate) = decode_mp4(out.data)
    assert (codec, pix_fmt, rate) == ("h264", "yuv420p", 16)
    assert len(frames) == 9 == out.num_frames
    assert frames[0].shape == (64, 112, 3)
    assert (out.content_type, out.width, out.height, out.seed) == ("video/mp4", 112, 64, 1234)
    thumb = decode_png(out.thumbnail_png)
    assert (thumb.size, thumb.mode) == ((112, 64), "RGB")
    # The thumbnail is the middle frame, close to what the video shows there.
    diff = np.abs(np.asarray(thumb, dtype=int) - frames[4].astype(int)).mean()
    assert diff < 8


def test_image_type_gives_one_png_frame(tiny_wan, make_task):
    task = make_task(job_type="image_fast", num_frames=0, width=64, height=64)
    out = generate.render(tiny_wan, task, _noop, _never)
    assert (out.content_type, out.num_frames, out.thumbnail_png) == ("image/png", 1, None)
    assert decode_png(out.data).size == (64, 64)


def test_same_seed_gives_identical_output(tiny_wan, make_task):
    a = generate.render(tiny_wan, make_task(seed=7), _noop, _never)
    b = generate.render(tiny_wan, make_task(seed=7), _noop, _never)
    c = generate.render(tiny_wan, make_task(seed=8), _noop, _never)
    assert a.data == b.data and a.thumbnail_png == b.thumbnail_png
    assert a.data != c.data


def test_seed_is_taken_mod_2_32(tiny_wan, make_task):
    task = make_task(job_type="image_fast", num_frames=1, width=32, height=32, seed=2**32 + 5)
    assert generate.render(tiny_wan, task, _noop, _never).seed == 5


def test_stages_and_steps_are_reported_in_order(tiny_wan, make_task):
    seen = []
    generate.render(
        tiny_wan,
        make_task(steps=4),
        lambda step, total: seen.append(("denoising", step, total)),
        _never,
        lambda name, total=None: seen.append((name, total)),
    )
    assert seen == [
        ("encoding_text", 4),
        *[("denoising", i, 4) for i in range(1, 5)],
        ("decoding", None),
        ("encoding_video", None),
    ]


def test_cancel_stops_at_the_next_step_and_pipeline_stays_usable(tiny_wan, make_task):
    task = make_task(steps=4, seed=5)
    seen = []
    with pytest.raises(Cancelled):
        generate.render(tiny_wan, task, lambda s, t: seen.append(s), lambda: len(seen) >= 2)
    assert seen == [1, 2]
    first = generate.render(tiny_wan, task, _noop, _never)
    again = generate.render(tiny_wan, task, _noop, _never)
    assert first.data == again.data


def test_cancel_before_start_runs_nothing(tiny_wan, make_task):
    seen = []
    with pytest.raises(Cancelled):
        generate.render(tiny_wan, make_task(), lambda s, t: seen.append(s), lambda: True)
    assert seen == []


def test_reference_image_is_refused_as_text_to_video(tiny_wan, make_task):
    task = make_task(
        reference=job_pb2.Reference(
            type=job_pb2.REFERENCE_TYPE_STYLE, bucket="reference-images", key="u/r.png"
        )
    )
    with pytest.raises(InvalidReference, match="text-to-video") as caught:
        generate.render(tiny_wan, task, _noop, _never)
    assert caught.value.code == "INVALID_REFERENCE"
    assert "(tiny)" in caught.value.message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"width": 100}, "width"),
        ({"height": 0}, "height"),
        ({"num_frames": 10}, "num_frames"),
        ({"job_type": "image_fast", "num_frames": 5}, "num_frames"),
        ({"job_type": "sdxl_image_fast"}, "job_type"),
    ],
)
def test_tasks_wan_cannot_run_fail_for_good_naming_the_field(tiny_wan, make_task, overrides, field):
    with pytest.raises(InvalidTask, match=field) as caught:
        generate.render(tiny_wan, make_task(**overrides), _noop, _never)
    assert caught.value.code == "INVALID_TASK"


def test_catalog_limits_are_checked_where_given(make_task):
    limits = CatalogLimits(wan_min_size=64, wan_max_size=128, wan_max_frames=17)
    assert generate.plan(make_task(num_frames=17), limits=limits).num_frames == 17
    for overrides, field in (
        ({"num_frames": 21}, "num_frames must be at most 17"),
        ({"width": 144}, "width must be between 64 and 128"),
        ({"height": 48}, "height must be between 64 and 128"),
    ):
        with pytest.raises(InvalidTask, match=field):
            generate.plan(make_task(**overrides), limits=limits)


def test_task_defaults_come_from_the_catalog(make_task):
    plan = generate.plan(
        make_task(steps=0, guidance_scale=0.0, num_frames=0, job_type="video_high")
    )
    assert (plan.steps, plan.guidance_scale, plan.num_frames, plan.fps) == (50, 7.5, 81, 16)
    image = generate.plan(
        make_task(steps=0, guidance_scale=0.0, job_type="image_fast", num_frames=0)
    )
    assert (image.video, image.steps, image.guidance_scale, image.num_frames) == (
        False,
        25,
        6.5,
        1,
    )


@pytest.mark.parametrize(
    ("overrides", "stages"),
    [
        ({}, ["wan.encode_text", "wan.denoise", "wan.decode", "wan.encode_video"]),
        (
            {"job_type": "image_fast", "num_frames": 1, "width": 32, "height": 32},
            ["wan.encode_text", "wan.denoise", "wan.decode"],
        ),
    ],
)
def test_each_stage_is_a_span(tiny_wan, make_task, overrides, stages):
    from ourvidz import telemetry

    with telemetry.capture() as exporter:
        generate.render(tiny_wan, make_task(**overrides), _noop, _never)
        names = [s.name for s in exporter.get_finished_spans()]
    assert names == stages


def test_a_low_memory_retry_decodes_in_tiles_and_restores_the_vae(tiny_wan, make_task):
    from ourvidz.genworker.memory import MemoryFallback

    vae = tiny_wan.pipe.vae
    seen = []
    real_decode = vae.decode

    def decode(*args, **kwargs):
        seen.append((vae.use_slicing, vae.use_tiling))
        return real_decode(*args, **kwargs)

    vae.decode = decode
    try:
        plain = generate.render(
            tiny_wan, make_task(seed=5, job_type="image_fast", num_frames=1), _noop, _never
        )
        low = generate.render(
            tiny_wan,
            make_task(seed=5, job_type="image_fast", num_frames=1),
            _noop,
            _never,
            memory=MemoryFallback(low_memory_decode=True),
        )
    finally:
        del vae.decode
    assert seen == [(False, False), (True, True)]
    assert (vae.use_slicing, vae.use_tiling) == (False, False)
    # Below the VAE's tile size the tiled decode is the plain one.
    assert low.data == plain.data and low.seed == plain.seed == 5
