"""Precision and seeds of the SDXL worker: every module of both pipelines
in the bundle's dtype (the img2img pipeline shares them and casts nothing),
SDPA attention, and starting noise that does not depend on the device."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ourvidz import seeds
from ourvidz.v1 import job_pb2
from services.sdxl import generate, models

MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")

# Largest pixel difference (of 255) measured between an image of a 3-image
# batch and its one-image rerun on this CPU: 1 in float32 (batched kernels
# round differently), 0 in bfloat16; at 64x64 and 256x256, text-to-image
# and image-to-image alike. The starting noise itself is identical.
BATCH_TOLERANCE = 1


def _noop(*args):
    return None


def _never():
    return False


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)


def _reference_image() -> Image.Image:
    image = Image.new("RGB", (96, 80), (200, 30, 30))
    image.paste((20, 180, 60), (0, 0, 40, 40))
    return image


def _reference():
    return job_pb2.Reference(type=job_pb2.REFERENCE_TYPE_STYLE, strength=0.5, key="u/r.png")


@pytest.fixture(scope="module")
def bf16_bundle():
    return models.load("tiny", device="cpu", dtype="bfloat16")


def assert_every_module_in(bundle, dtype: torch.dtype) -> None:
    """Every floating parameter and buffer of both pipelines' modules in
    `dtype`, and the two pipelines on the same module objects."""
    for name in MODULES:
        for pipe in (bundle.txt2img, bundle.img2img):
            module = getattr(pipe, name)
            tensors = [*module.named_parameters(), *module.named_buffers()]
            wrong = [n for n, t in tensors if t.is_floating_point() and t.dtype != dtype]
            assert tensors and not wrong, (type(pipe).__name__, name, wrong[:5])
        assert getattr(bundle.img2img, name) is getattr(bundle.txt2img, name)
    assert bundle.dtype == str(dtype).removeprefix("torch.")


def assert_sdpa(bundle, attending: tuple[str, ...]) -> None:
    """torch's scaled-dot-product attention in every attention layer."""
    for pipe in (bundle.txt2img, bundle.img2img):
        for name in attending:
            processors = getattr(pipe, name).attn_processors.values()
            assert {type(p).__name__ for p in processors} == {"AttnProcessor2_0"}, name
        for name in ("text_encoder", "text_encoder_2"):
            assert getattr(pipe, name).config._attn_implementation == "sdpa"


def test_bf16_tiny_keeps_both_pipelines_in_bf16_with_sdpa(bf16_bundle):
    assert_every_module_in(bf16_bundle, torch.bfloat16)
    assert_sdpa(bf16_bundle, ("unet",))  # the tiny VAE has no attention
    assert type(bf16_bundle.img2img).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert bf16_bundle.img2img.watermark is None
    assert bf16_bundle.img2img.config.force_zeros_for_empty_prompt


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_full_random_keeps_the_model_dtype_in_every_module_the_vae_too(dtype):
    bundle = models.load("full-random", device="meta", dtype=dtype)
    assert bundle.txt2img.vae.config.force_upcast  # upcast at decode, not at load
    assert_every_module_in(bundle, getattr(torch, dtype))
    assert_sdpa(bundle, ("unet", "vae"))


def test_bf16_folder_load_keeps_both_pipelines_in_bf16(tiny_bundle, tmp_path):
    tiny_bundle.txt2img.save_pretrained(tmp_path / "sdxl")
    loaded = models.load(str(tmp_path / "sdxl"), device="cpu", dtype="bfloat16")
    assert_every_module_in(loaded, torch.bfloat16)


def test_bf16_renders_leave_every_module_in_bf16(bf16_bundle, make_task):
    vae = bf16_bundle.txt2img.vae
    vae.register_to_config(force_upcast=True)  # as the real SDXL VAE: img2img upcasts to encode
    try:
        for reference in (None, _reference_image()):
            task = make_task(num_images=3, seed=5, reference=_reference() if reference else None)
            images = generate.render(bf16_bundle, task, reference, _noop, _never)
            assert [(im.width, im.height) for im in images] == [(64, 64)] * 3
    finally:
        vae.register_to_config(force_upcast=False)
    assert_every_module_in(bf16_bundle, torch.bfloat16)


class Spy:
    """A pipeline, recording the keyword arguments of each call."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.calls: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self._pipe(**kwargs)


def test_txt2img_starts_from_cpu_drawn_noise_of_each_image_seed(tiny_bundle, make_task):
    spy = Spy(tiny_bundle.txt2img)
    bundle = dataclasses.replace(tiny_bundle, txt2img=spy)
    task = make_task(num_images=3, seed=42, width=128, height=64)
    on_cpu = generate.render(bundle, task, None, _noop, _never)
    # The device a bundle names no longer picks the generators' device: a
    # generator made on "cuda" cannot even exist on this CPU-only torch.
    labelled = generate.render(
        dataclasses.replace(bundle, device="cuda"), task, None, _noop, _never
    )
    assert [im.png_bytes for im in on_cpu] == [im.png_bytes for im in labelled]

    latents = spy.calls[0]["latents"]
    assert latents.shape == (3, 4, 8, 16) and latents.dtype == torch.float32
    for i, seed in enumerate((42, 43, 44)):
        noise = torch.randn((1, 4, 8, 16), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(latents[i : i + 1], noise)
    assert torch.equal(spy.calls[1]["latents"], latents)
    assert all(g.device.type == "cpu" for g in spy.calls[0]["generator"])


def test_a_seed_starts_from_the_same_noise_in_bf16(tiny_bundle, bf16_bundle, make_task):
    task = make_task(num_images=3, seed=42)
    drawn = {}
    for bundle in (tiny_bundle, bf16_bundle):
        spy = Spy(bundle.txt2img)
        generate.render(dataclasses.replace(bundle, txt2img=spy), task, None, _noop, _never)
        drawn[bundle.dtype] = spy.calls[0]["latents"]
    assert drawn["bfloat16"].dtype == torch.bfloat16
    assert torch.equal(drawn["bfloat16"], drawn["float32"].to(torch.bfloat16))


def test_img2img_draws_from_cpu_generators(tiny_bundle, make_task):
    spy = Spy(tiny_bundle.img2img)
    bundle = dataclasses.replace(tiny_bundle, img2img=spy, device="cuda")
    task = make_task(num_images=3, seed=42, reference=_reference())
    generate.render(bundle, task, _reference_image(), _noop, _never)
    (call,) = spy.calls
    assert "latents" not in call  # img2img's latents are the reference's, noised
    generators = call["generator"]
    assert [g.device.type for g in generators] == ["cpu"] * 3
    # Each generator was seeded with its image's seed (and has drawn since).
    assert [g.initial_seed() for g in generators] == [42, 43, 44]


@pytest.mark.parametrize("with_reference", [False, True])
def test_a_batched_image_matches_its_one_image_rerun(tiny_bundle, make_task, with_reference):
    reference = _reference_image() if with_reference else None
    extra = {"reference": _reference(), "steps": 6} if with_reference else {}
    batch = generate.render(
        tiny_bundle, make_task(num_images=3, seed=1000, **extra), reference, _noop, _never
    )
    for i in (1, 2):
        alone = generate.render(
            tiny_bundle, make_task(num_images=1, seed=1000 + i, **extra), reference, _noop, _never
        )
        assert alone[0].seed == batch[i].seed
        diff = np.abs(_pixels(batch[i].png_bytes) - _pixels(alone[0].png_bytes)).max()
        assert diff <= BATCH_TOLERANCE
    # Different seeds, different images: the tolerance is not what makes them equal.
    other = np.abs(_pixels(batch[1].png_bytes) - _pixels(batch[2].png_bytes)).max()
    assert other > 10 * BATCH_TOLERANCE


def test_initial_noise_rows_are_the_single_image_draws():
    shape = (4, 8, 8)
    batch = seeds.initial_noise(seeds.cpu_generators([7, 8, 9]), shape, torch.float32)
    for i, seed in enumerate((7, 8, 9)):
        alone = seeds.initial_noise(seeds.cpu_generators([seed]), shape, torch.float32)
        assert torch.equal(batch[i : i + 1], alone)
