"""Architecture configs of the WAN 2.1 text-to-video presets.

`full_*`: WAN 2.1 T2V 1.3B as published (transformer, VAE, UMT5-XXL encoder),
for random-weight GPU timing. `tiny_*`: the same classes at tiny widths with
the real latent geometry (8x spatial, 4x temporal downsampling, 16 latent
channels, patch 1x2x2), so sizes and frame counts behave as in the real model.
"""

from __future__ import annotations

# The real model's RoPE table covers 1024 positions per axis; tiny keeps it
# (a smaller table crashes at 480x832).
ROPE_MAX_SEQ_LEN = 1024
UMT5_VOCAB = 256_384  # google/umt5-xxl


def scheduler_kwargs() -> dict:
    """UniPC with flow matching and flow shift 5.0 (WAN 2.1 at 480p)."""
    return {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 5.0}


def full_transformer_kwargs() -> dict:
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 12,
        "attention_head_dim": 128,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": 8960,
        "num_layers": 30,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": ROPE_MAX_SEQ_LEN,
    }


def tiny_transformer_kwargs(text_dim: int) -> dict:
    return {
        **full_transformer_kwargs(),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "text_dim": text_dim,
        "freq_dim": 32,
        "ffn_dim": 32,
        "num_layers": 2,
    }


def full_vae_kwargs() -> dict:
    """AutoencoderKLWan's defaults are the WAN 2.1 VAE."""
    return {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    }


def tiny_vae_kwargs() -> dict:
    return {**full_vae_kwargs(), "base_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1}


def full_text_kwargs(vocab_size: int = UMT5_VOCAB) -> dict:
    """The UMT5-XXL encoder (WAN's text encoder)."""
    return {
        "vocab_size": vocab_size,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.0,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def tiny_text_kwargs(vocab_size: int) -> dict:
    return {
        **full_text_kwargs(vocab_size),
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
    }
