"""Loading the WAN 2.1 text-to-video pipeline: the presets and a local folder.

- `tiny`: the real diffusers/transformers classes (`WanPipeline`,
  `WanTransformer3DModel`, `AutoencoderKLWan`, `UMT5EncoderModel`) at tiny
  widths with seeded random weights and an offline tokenizer (tests and the
  dev stack; fast on a CPU).
- `full-random`: WAN 2.1 T2V 1.3B's full architecture with the UMT5-XXL
  encoder, random weights built directly on the target device (GPU
  benchmarks: the same compute as the real model).
- a path: a diffusers folder (`WanPipeline.from_pretrained`, local files only).

The presets run UniPC with flow matching and flow shift 5.0; a folder runs the
scheduler it ships (that one where it has none). The transformer and the text
encoder run in the bundle's dtype, the VAE in float32 as diffusers recommends
for the WAN VAE (in bf16 its decode loses detail; it is a small share of the
weights). Hub access is always off: nothing here may reach the network.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ourvidz import provenance
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
from services.wan import configs, tokenizer

log = logging.getLogger(__name__)

TINY = "tiny"
FULL_RANDOM = "full-random"


@dataclass
class PipeBundle:
    """The loaded pipeline; `lock` keeps one generation at a time on the device.
    `dtype` is the transformer's and the text encoder's; the VAE is float32."""

    pipe: object  # WanPipeline
    preset: str
    device: str
    dtype: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What every job of this load is rendered with (`ourvidz.provenance`).
    provenance: object = None  # job_pb2.Provenance


def scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**configs.scheduler_kwargs())


def _assemble(transformer, vae, text_encoder):
    from diffusers import WanPipeline

    return WanPipeline(
        tokenizer=tokenizer.t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler(),
    )


def build_tiny(seed: int = 0):
    """The tiny preset on the CPU in fp32; each module from its own seed so a
    change in one leaves the others' weights alone."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    text_kwargs = configs.tiny_text_kwargs(tokenizer.vocab_size())
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**configs.tiny_transformer_kwargs(text_kwargs["d_model"]))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(**configs.tiny_vae_kwargs())
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(UMT5Config(**text_kwargs))
    return _assemble(transformer, vae, text_encoder.eval())


def build_full_random(device: str, dtype: str):
    """WAN 2.1 T2V 1.3B with the UMT5-XXL encoder, random weights initialised
    directly on `device` in `dtype`, the VAE in float32 (no host copy, no meta
    tensors left behind)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        transformer = WanTransformer3DModel(**configs.full_transformer_kwargs())
        text_encoder = UMT5EncoderModel(UMT5Config(**configs.full_text_kwargs()))
    with torch.device(device), default_dtype("float32"):
        vae = AutoencoderKLWan(**configs.full_vae_kwargs())
    return _assemble(transformer, vae, text_encoder.eval())


def count_full_parameters() -> dict[str, int]:
    """Parameter counts of the full architecture, built on the meta device."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        modules = {
            "transformer": WanTransformer3DModel(**configs.full_transformer_kwargs()),
            "vae": AutoencoderKLWan(**configs.full_vae_kwargs()),
            "text_encoder": UMT5EncoderModel(UMT5Config(**configs.full_text_kwargs())),
        }
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}


def load_local(path: str | Path, dtype: str):
    """A WAN diffusers folder (model_index.json with transformer, vae,
    text_encoder, tokenizer and, optionally, scheduler), from local files
    only; the VAE in float32, the rest in `dtype`."""
    from diffusers import WanPipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"model {str(path)!r} is neither a preset (tiny, full-random) nor a diffusers "
            "folder with a model_index.json"
        )
    # The folder's own scheduler where it ships one (its sampler and flow
    # shift go with its weights); WAN 2.1 at 480p's UniPC otherwise.
    kwargs = {} if has_scheduler(path) else {"scheduler": scheduler()}
    return WanPipeline.from_pretrained(
        path,
        dtype={"default": DTYPES[dtype], "vae": torch.float32},
        local_files_only=True,
        **kwargs,
    )


def has_scheduler(path: Path) -> bool:
    """Whether a diffusers folder names a scheduler and has its config."""
    index = json.loads((path / "model_index.json").read_text())
    entry = index.get("scheduler")
    named = isinstance(entry, list) and len(entry) == 2 and entry[1] is not None
    return named and (path / "scheduler" / "scheduler_config.json").is_file()


def load(
    preset: str = TINY,
    *,
    device: str = "auto",
    dtype: str = "auto",
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    compile: bool = False,
    seed: int = 0,
) -> PipeBundle:
    """Load a preset or a local folder, ready to generate. VAE tiling decodes
    a video in overlapping tiles and slicing one sample at a time: both trade
    a little speed for much less peak memory at 480p and up."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if preset == TINY:
        pipe = build_tiny(seed)
        digest = provenance.preset_digest(TINY, seed, _config(pipe))
    elif preset == FULL_RANDOM:
        pipe = build_full_random(device, dtype)
        digest = provenance.preset_digest(FULL_RANDOM, 0, _config(pipe))
    else:
        pipe = load_local(preset, dtype)
        digest = provenance.folder_digest(preset)
    if pipe.transformer.device.type != torch.device(device).type:
        pipe.to(device)
    cast_like_loading(pipe.transformer, dtype)
    cast_like_loading(pipe.text_encoder, dtype)
    cast_like_loading(pipe.vae, "float32")
    use_tf32(device)
    own_aligned_memory(*modules_of(pipe))  # a folder's output = the same weights' in memory
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()
    pipe.text_encoder.config._attn_implementation = "sdpa"
    pipe.set_progress_bar_config(disable=True)
    if compile:
        pipe.transformer = torch.compile(pipe.transformer)
    log.info(
        "wan model loaded",
        extra={"preset": preset, "device": device, "dtype": dtype, "weights_digest": digest},
    )
    return PipeBundle(
        pipe=pipe,
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
    return provenance.modules_config(pipe, ("transformer", "vae", "text_encoder", "scheduler"))
