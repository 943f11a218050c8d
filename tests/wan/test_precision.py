"""Precision and seeds of the WAN worker: the transformer and the text
encoder in the bundle's dtype (diffusers' float32 modules kept as a folder
load keeps them), the VAE in float32, a folder's own scheduler, and starting
noise that does not depend on the device."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ourvidz import seeds
from ourvidz.devices import fp32_names
from services.wan import generate, models


def _noop(*args, **kwargs):
    return None


def _never():
    return False


def _dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return {name: t.dtype for name, t in tensors if t.is_floating_point()}


@pytest.fixture(scope="module")
def bf16_wan():
    return models.load("tiny", device="cpu", dtype="bfloat16")


def assert_wan_precision(pipe, dtype: torch.dtype) -> None:
    """Transformer and text encoder: every floating tensor in `dtype`, but
    those diffusers keeps in float32; the VAE: every one in float32."""
    keep = fp32_names(pipe.transformer, "bfloat16")
    assert {"time_embedder", "scale_shift_table", "rope"} <= keep
    kept = 0
    for name, got in _dtypes(pipe.transformer).items():
        want = torch.float32 if keep.intersection(name.split(".")) else dtype
        assert got == want, name
        kept += want == torch.float32
    assert kept > 0
    assert set(_dtypes(pipe.text_encoder).values()) == {dtype}
    assert set(_dtypes(pipe.vae).values()) == {torch.float32}
    assert pipe.transformer.dtype == dtype and pipe.vae.dtype == torch.float32


def test_bf16_tiny_runs_transformer_and_text_in_bf16_and_the_vae_in_fp32(bf16_wan):
    assert bf16_wan.dtype == "bfloat16"
    assert_wan_precision(bf16_wan.pipe, torch.bfloat16)
    processors = {type(p).__name__ for p in bf16_wan.pipe.transformer.attn_processors.values()}
    assert processors == {"WanAttnProcessor"}  # torch SDPA through diffusers' dispatcher
    assert bf16_wan.pipe.text_encoder.config._attn_implementation == "sdpa"


def test_bf16_folder_loads_in_the_same_precision_as_the_preset(bf16_wan, tiny_wan, tmp_path):
    tiny_wan.pipe.save_pretrained(tmp_path / "wan")
    loaded = models.load(str(tmp_path / "wan"), device="cpu", dtype="bfloat16")
    assert_wan_precision(loaded.pipe, torch.bfloat16)
    for name in ("transformer", "text_encoder", "vae"):
        assert _dtypes(getattr(loaded.pipe, name)) == _dtypes(getattr(bf16_wan.pipe, name)), name


def test_full_random_builds_in_bf16_with_an_fp32_vae():
    bundle = models.load("full-random", device="meta", dtype="bfloat16")
    assert_wan_precision(bundle.pipe, torch.bfloat16)


def test_bf16_render_decodes_with_the_fp32_vae(bf16_wan, make_task):
    task = make_task(job_type="image_fast", num_frames=1, width=32, height=32, seed=3)
    out = generate.render(bf16_wan, task, _noop, _never)
    assert out.data.startswith(b"\x89PNG") and (out.width, out.height) == (32, 32)
    assert_wan_precision(bf16_wan.pipe, torch.bfloat16)


def test_a_folder_keeps_its_own_scheduler_and_gets_unipc_without_one(tiny_wan, tmp_path):
    folder = tmp_path / "wan"
    tiny_wan.pipe.save_pretrained(folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["flow_shift"] = 3.0
    config_path.write_text(json.dumps(config))
    kept = models.load(str(folder), device="cpu", dtype="float32").pipe.scheduler
    assert (type(kept).__name__, kept.config.flow_shift) == ("UniPCMultistepScheduler", 3.0)

    config_path.unlink()
    index = json.loads((folder / "model_index.json").read_text())
    del index["scheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    default = models.load(str(folder), device="cpu", dtype="float32").pipe.scheduler
    assert type(default).__name__ == "UniPCMultistepScheduler"
    assert default.config.flow_shift == 5.0 and default.config.use_flow_sigmas


class Spy:
    """The pipeline, recording the keyword arguments of each call."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.calls: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self._pipe(**kwargs)


def test_starting_latents_come_from_a_cpu_generator_whatever_the_device(tiny_wan, make_task):
    task = make_task(num_frames=9, width=48, height=32, seed=42)
    spy = Spy(tiny_wan.pipe)
    on_cpu = generate.render(dataclasses.replace(tiny_wan, pipe=spy), task, _noop, _never)
    # The device a bundle names no longer picks the generator's device: a
    # generator made on "cuda" cannot even exist on this CPU-only torch.
    labelled = dataclasses.replace(tiny_wan, pipe=spy, device="cuda")
    on_label = generate.render(labelled, task, _noop, _never)
    assert on_cpu.data == on_label.data

    first, second = (call["latents"] for call in spy.calls)
    assert torch.equal(first, second)
    # (1, 16 channels, (9 - 1) / 4 + 1 latent frames, 32 / 8, 48 / 8), float32 as WAN draws.
    assert first.shape == (1, 16, 3, 4, 6) and first.dtype == torch.float32
    expected = torch.randn((1, 16, 3, 4, 6), generator=torch.Generator().manual_seed(42))
    assert torch.equal(first, expected)
    assert all(call["generator"].device.type == "cpu" for call in spy.calls)


def test_initial_noise_is_drawn_on_the_cpu_then_moved():
    shape = (16, 3, 4, 6)
    on_cpu = seeds.initial_noise(seeds.cpu_generators([42, 43]), shape, torch.float32)
    # A device without a generator of its own still gets the noise: it is
    # drawn on the CPU and moved.
    with pytest.raises(RuntimeError):
        torch.Generator(device="meta")
    on_meta = seeds.initial_noise(seeds.cpu_generators([42, 43]), shape, torch.bfloat16, "meta")
    assert (on_meta.device.type, on_meta.dtype, on_meta.shape) == (
        "meta",
        torch.bfloat16,
        (2, *shape),
    )
    in_bf16 = seeds.initial_noise(seeds.cpu_generators([42, 43]), shape, torch.bfloat16)
    assert torch.equal(in_bf16, on_cpu.to(torch.bfloat16))
    alone = seeds.initial_noise(seeds.cpu_generators([43]), shape, torch.float32)
    assert torch.equal(on_cpu[1:], alone)
