"""Architectures of the SDXL presets, written in code (nothing is downloaded).

- `tiny_*`: the real SDXL conditioning (two CLIP text encoders, pooled text
  embeddings plus six time ids through `addition_embed_type="text_time"`) and
  the real latent geometry (a 4-block VAE, 8x downsampling), at channel widths
  that run a 1024x1024 image in seconds on a CPU. Attention only runs at the
  lowest UNet resolution (1/4 of the latent side), never at 128x128 latents,
  and the VAE has no mid-block attention.
- `full_*`: the SDXL base 1.0 configuration (UNet 2.57B parameters, CLIP-L and
  OpenCLIP bigG text encoders, the SDXL VAE), for GPU benchmarks with random
  weights.
"""

from __future__ import annotations

from ourvidz import tokenizers

# SDXL's six added time ids: original size, crop top-left, target size.
TIME_IDS = 6

TINY_TEXT_1 = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
TINY_TEXT_2 = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
    "hidden_act": "gelu",
}
TINY_TIME_EMBED_DIM = 8

FULL_TEXT_1 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
FULL_TEXT_2 = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
FULL_TIME_EMBED_DIM = 256


def text_config(dims: dict, vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=tokenizers.MAX_LENGTH,
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        bos_token_id=tokenizers.bos_id(),
        eos_token_id=tokenizers.eos_id(),
        pad_token_id=tokenizers.eos_id(),
        **dims,
    )


def sdxl_conditioning(text_1: dict, text_2: dict, time_embed_dim: int) -> dict:
    """The UNet arguments that must agree with the two text encoders."""
    return {
        "cross_attention_dim": text_1["hidden_size"] + text_2["hidden_size"],
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_embed_dim,
        "projection_class_embeddings_input_dim": TIME_IDS * time_embed_dim
        + text_2["projection_dim"],
    }


def tiny_unet_kwargs() -> dict:
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (16, 32, 64),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "attention_head_dim": (2, 4, 8),
        "transformer_layers_per_block": (1, 1, 1),
        "norm_num_groups": 8,
        "use_linear_projection": True,
        **sdxl_conditioning(TINY_TEXT_1, TINY_TEXT_2, TINY_TIME_EMBED_DIM),
    }


def full_unet_kwargs() -> dict:
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "attention_head_dim": (5, 10, 20),
        "transformer_layers_per_block": (1, 2, 10),
        "norm_num_groups": 32,
        "use_linear_projection": True,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        **sdxl_conditioning(FULL_TEXT_1, FULL_TEXT_2, FULL_TIME_EMBED_DIM),
    }


def tiny_vae_kwargs() -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (8, 16, 16, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
        "mid_block_add_attention": False,
        "force_upcast": False,
    }


def full_vae_kwargs() -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
        # The SDXL VAE overflows in fp16; the pipeline upcasts it for decoding.
        "force_upcast": True,
    }


def scheduler_kwargs() -> dict:
    """SDXL base's EulerDiscreteScheduler configuration."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    }
