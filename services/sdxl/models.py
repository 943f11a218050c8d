"""Loading the SDXL pipelines: the presets and a local checkpoint.

- `tiny`: the real diffusers/transformers classes at tiny widths with seeded
  random weights and offline tokenizers (tests and the dev stack; fast on a CPU
  at the catalog's 1024x1024).
- `full-random`: SDXL base's full architecture with random weights, built
  directly on the target device (GPU benchmarks: the same compute as the real
  model).
- `control-plane` (benchmarks and tests only; refused in prod): no model.
  `ControlPlanePipeline` stands in for both pipelines: it walks the task's
  steps through the step callback without computing any, and returns flat
  images at the requested size. The worker loop, progress, uploads and
  completion are the real ones; the control-plane load bench uses it.
- a path: a single-file `.safetensors` checkpoint or a diffusers folder.

Hub access is always off: nothing here may reach the network.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from ourvidz import provenance, tokenizers
from ourvidz.devices import (
    DTYPES,
    cast_like_loading,
    default_dtype,
    modules_of,
    own_aligned_memory,
    resolve_device,
    resolve_dtype,
    use_tf32,
)
from services.sdxl import configs
from services.sdxl.presets import CONTROL_PLANE, FULL_RANDOM, TINY

log = logging.getLogger(__name__)

__all__ = ["CONTROL_PLANE", "FULL_RANDOM", "TINY", "ControlPlanePipeline", "PipeBundle", "load"]


@dataclass
class PipeBundle:
    """The loaded pipelines. `img2img` shares every module with `txt2img`;
    `lock` keeps one generation at a time on the device."""

    txt2img: object  # StableDiffusionXLPipeline
    img2img: object  # StableDiffusionXLImg2ImgPipeline
    preset: str
    device: str
    dtype: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What every job of this load is rendered with (`ourvidz.provenance`).
    provenance: object = None  # job_pb2.Provenance


def _sdpa(text_encoder) -> None:
    text_encoder.config._attn_implementation = "sdpa"


def _assemble(unet, vae, text_encoder, text_encoder_2):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers.clip_tokenizer(),
        tokenizer_2=tokenizers.clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**configs.scheduler_kwargs()),
        add_watermarker=False,
    )


def build_tiny(seed: int = 0):
    """The tiny preset on the CPU in fp32; each module from its own seed so a
    change in one leaves the others' weights alone."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab = tokenizers.vocab_size()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**configs.tiny_unet_kwargs())
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**configs.tiny_vae_kwargs())
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(configs.text_config(configs.TINY_TEXT_1, vocab))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(configs.text_config(configs.TINY_TEXT_2, vocab))
    return _assemble(unet, vae, text_encoder, text_encoder_2)


def build_full_random(device: str, dtype: str):
    """SDXL base at full size with random weights, initialised directly on
    `device` in `dtype` (no host copy, no meta tensors left behind)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab = tokenizers.vocab_size()
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        unet = UNet2DConditionModel(**configs.full_unet_kwargs())
        vae = AutoencoderKL(**configs.full_vae_kwargs())
        text_encoder = CLIPTextModel(configs.text_config(configs.FULL_TEXT_1, vocab))
        text_encoder_2 = CLIPTextModelWithProjection(
            configs.text_config(configs.FULL_TEXT_2, vocab)
        )
    return _assemble(unet, vae, text_encoder, text_encoder_2)


def count_full_parameters() -> dict[str, int]:
    """Parameter counts of the full architecture, built on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab = 49408  # the real CLIP vocabulary, so counts match the published model
    with torch.device("meta"):
        modules = {
            "unet": UNet2DConditionModel(**configs.full_unet_kwargs()),
            "vae": AutoencoderKL(**configs.full_vae_kwargs()),
            "text_encoder": CLIPTextModel(configs.text_config(configs.FULL_TEXT_1, vocab)),
            "text_encoder_2": CLIPTextModelWithProjection(
                configs.text_config(configs.FULL_TEXT_2, vocab)
            ),
        }
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}


class ControlPlanePipeline:
    """The `control-plane` preset's stand-in for `StableDiffusionXLPipeline`
    and its img2img twin: called as they are by `generate.render`, it encodes
    no text, runs no denoising step and decodes nothing.

    It calls `callback_on_step_end(self, i, t, {})` once per step it would have
    run (`num_inference_steps`, or the share `strength` leaves for img2img, as
    diffusers does), with `self.num_timesteps` set, so progress, stages and
    cancellation go exactly as with a model. Each image is one flat colour
    drawn from its own generator: the same seed gives the same PNG."""

    def __init__(self) -> None:
        self.num_timesteps = 0

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        num_inference_steps: int = 1,
        num_images_per_prompt: int = 1,
        generator=None,
        callback_on_step_end=None,
        width: int | None = None,
        height: int | None = None,
        image=None,
        strength: float | None = None,
        **_ignored,
    ):
        from PIL import Image

        steps = num_inference_steps
        if strength is not None:
            steps = min(int(num_inference_steps * strength), num_inference_steps)
        self.num_timesteps = steps
        for i in range(steps):
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, steps - i, {})
        if image is not None:
            width, height = image.size
        # One image per prompt of a list (a batch of several jobs), as diffusers.
        count = num_images_per_prompt * (len(prompt) if isinstance(prompt, list) else 1)
        if not isinstance(generator, list):
            generator = [generator] * count
        images = []
        for index in range(count):
            drawn = torch.randint(0, 256, (3,), generator=generator[index])
            colour = tuple(int(c) for c in drawn)
            images.append(Image.new("RGB", (width or 64, height or 64), colour))
        return SimpleNamespace(images=images)

    def set_progress_bar_config(self, **_ignored) -> None:
        pass


def load_control_plane() -> PipeBundle:
    """The `control-plane` preset: no weights, nothing imported from diffusers."""
    pipe = ControlPlanePipeline()
    log.warning(
        "sdxl preset %r loaded: no model, every job renders flat images (benchmarks and "
        "tests only)",
        CONTROL_PLANE,
    )
    return PipeBundle(
        txt2img=pipe,
        img2img=pipe,
        preset=CONTROL_PLANE,
        device="cpu",
        dtype="float32",
        provenance=provenance.model_provenance(
            weights_digest=provenance.preset_digest(CONTROL_PLANE, 0, {}),
            preset=CONTROL_PLANE,
            pipe=pipe,
            dtype="float32",
            device="cpu",
        ),
    )


def load_local(path: str | Path, dtype: str, config_dir: str | None = None):
    """A diffusers folder (`from_pretrained`) or a single-file checkpoint
    (`from_single_file`, whose component configs and tokenizers come from
    `config_dir`, a local copy of the SDXL base repository without weights)."""
    from diffusers import StableDiffusionXLPipeline

    path = Path(path)
    torch_dtype = DTYPES[dtype]
    if path.is_dir():
        return StableDiffusionXLPipeline.from_pretrained(
            path, dtype=torch_dtype, local_files_only=True, add_watermarker=False
        )
    if path.is_file() and path.suffix in (".safetensors", ".ckpt"):
        kwargs = {"config": config_dir} if config_dir else {}
        try:
            return StableDiffusionXLPipeline.from_single_file(
                str(path),
                dtype=torch_dtype,
                local_files_only=True,
                add_watermarker=False,
                **kwargs,
            )
        except OSError as exc:
            raise ValueError(
                f"cannot load {path}: a single-file checkpoint needs SDXL_CONFIG_DIR, a local "
                "folder with the base model's configs and tokenizers (Hub access is off)"
            ) from exc
    raise ValueError(
        f"model {str(path)!r} is neither a preset (tiny, full-random, control-plane), a folder "
        "nor a .safetensors file"
    )


def img2img_of(pipe, img2img_class):
    """The image-to-image pipeline on the very modules of `pipe`, cast to
    nothing. (`from_pipe` casts the shared modules to its `dtype` argument,
    float32 unless given: a bf16 bundle's UNet, VAE and text encoders would
    all end up float32, for both pipelines.)"""
    wanted = set(inspect.signature(img2img_class.__init__).parameters)
    components = {k: v for k, v in pipe.components.items() if k in wanted}
    return img2img_class(
        **components,
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )


def load(
    preset: str = TINY,
    *,
    device: str = "auto",
    dtype: str = "auto",
    compile: bool = False,
    config_dir: str | None = None,
    seed: int = 0,
) -> PipeBundle:
    """Load a preset or a local checkpoint, ready to generate."""
    if preset == CONTROL_PLANE:
        return load_control_plane()
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if preset == TINY:
        pipe = build_tiny(seed)
        digest = provenance.preset_digest(TINY, seed, _config(pipe))
    elif preset == FULL_RANDOM:
        pipe = build_full_random(device, dtype)
        digest = provenance.preset_digest(FULL_RANDOM, 0, _config(pipe))
    else:
        pipe = load_local(preset, dtype, config_dir)
        digest = provenance.folder_digest(preset)
    if pipe.unet.device.type != torch.device(device).type:
        pipe.to(device)
    for module in modules_of(pipe):
        cast_like_loading(module, dtype)
    # Every module stays in the bundle's dtype, the VAE too: a VAE whose config
    # asks for `force_upcast` is upcast for the decode only (`generate.decode`,
    # the pipelines' own decode and img2img's encode do it and cast it back).
    use_tf32(device)
    own_aligned_memory(*modules_of(pipe))  # a folder's output = the same weights' in memory
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        _sdpa(encoder)
    pipe.set_progress_bar_config(disable=True)
    if compile:
        pipe.unet = torch.compile(pipe.unet)
    img2img = img2img_of(pipe, StableDiffusionXLImg2ImgPipeline)
    img2img.set_progress_bar_config(disable=True)
    log.info(
        "sdxl model loaded",
        extra={"preset": preset, "device": device, "dtype": dtype, "weights_digest": digest},
    )
    return PipeBundle(
        txt2img=pipe,
        img2img=img2img,
        preset=preset,
        device=device,
        dtype=dtype,
        provenance=provenance.model_provenance(
            weights_digest=digest, preset=preset, pipe=pipe, dtype=dtype, device=device
        ),
    )


def _config(pipe) -> dict:
    """What fixes a random preset's weights besides its seed: its modules'
    configurations, read before loading casts or tunes them."""
    return provenance.modules_config(
        pipe, ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
    )
