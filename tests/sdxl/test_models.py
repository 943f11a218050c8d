"""The presets: architecture, offline tokenizers, saving and loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ourvidz import tokenizers
from services.sdxl import configs, generate, models

ROOT = Path(__file__).resolve().parents[2]


def test_tokenizer_has_every_byte_and_is_deterministic():
    vocab, _ = tokenizers.vocabulary()
    alphabet = tokenizers.bytes_to_unicode()
    assert len(set(alphabet)) == 256
    assert all(ch in vocab and ch + "</w>" in vocab for ch in alphabet)
    a, b = tokenizers.clip_tokenizer(), tokenizers.clip_tokenizer()
    text = "a portrait photo of a cat, 日本語 ünïcode 🙂"
    ids = a(text).input_ids
    assert ids == b(text).input_ids
    assert ids[0] == tokenizers.bos_id() and ids[-1] == tokenizers.eos_id()
    assert a.model_max_length == 77
    padded = a(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77


def test_tokenizer_is_identical_in_another_process():
    code = (
        "from ourvidz import tokenizers;"
        "print(tokenizers.clip_tokenizer()('a cat in the snow, 8k').input_ids,"
        " len(tokenizers.vocabulary()[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    here = tokenizers.clip_tokenizer()("a cat in the snow, 8k").input_ids
    assert out == f"{here} {len(tokenizers.vocabulary()[1])}"


def test_tiny_has_sdxl_conditioning_and_latent_geometry(tiny_bundle):
    pipe = tiny_bundle.txt2img
    unet = pipe.unet.config
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert unet.addition_embed_type == "text_time"
    hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.cross_attention_dim == hidden
    assert (
        unet.projection_class_embeddings_input_dim
        == 6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    )
    assert unet.down_block_types[0] == "DownBlock2D"  # no attention at full latent size
    assert pipe.vae_scale_factor == 8
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.watermark is None
    assert tiny_bundle.img2img.unet is pipe.unet  # from_pipe shares modules
    assert (tiny_bundle.device, tiny_bundle.dtype) == ("cpu", "float32")


def test_full_random_architecture_parameter_counts():
    counts = models.count_full_parameters()
    assert counts["unet"] == 2_567_463_684
    assert round(counts["vae"] / 1e6, 1) == 83.7
    assert round(counts["text_encoder"] / 1e6, 1) == 123.1
    assert round(counts["text_encoder_2"] / 1e6, 1) == 694.7
    assert configs.full_unet_kwargs()["cross_attention_dim"] == 2048
    assert configs.full_unet_kwargs()["projection_class_embeddings_input_dim"] == 2816


def test_device_and_dtype_resolution():
    assert models.resolve_dtype("auto", "cuda") == "bfloat16"
    assert models.resolve_dtype("auto", "cpu") == "float32"
    assert models.resolve_dtype("float16", "cuda") == "float16"


def test_saved_folder_loads_back_with_identical_output(tiny_bundle, tmp_path, make_task):
    tiny_bundle.txt2img.save_pretrained(tmp_path / "sdxl")
    loaded = models.load(str(tmp_path / "sdxl"), device="cpu", dtype="float32")
    task = make_task(seed=99)
    noop = lambda *a: None  # noqa: E731
    first = generate.render(tiny_bundle, task, None, noop, lambda: False)
    second = generate.render(loaded, task, None, noop, lambda: False)
    assert first[0].png_bytes == second[0].png_bytes
    assert (
        loaded.txt2img.tokenizer("a cat").input_ids
        == tiny_bundle.txt2img.tokenizer("a cat").input_ids
    )


def test_unknown_model_path_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="neither a preset"):
        models.load(str(tmp_path / "missing.bin"), device="cpu")


def test_load_names_the_weights_scheduler_and_versions(tiny_bundle):
    import re

    p = tiny_bundle.provenance
    assert re.fullmatch(r"[0-9a-f]{64}", p.weights_digest)
    assert p.preset == "tiny" and p.scheduler == "EulerDiscreteScheduler"
    assert '"num_train_timesteps"' in p.scheduler_config_json
    assert (p.dtype, p.device) == ("float32", "cpu")
    assert p.diffusers_version and p.transformers_version and p.torch_version
    # A second load of the same preset names the same weights; another seed others.
    assert models.load("tiny", device="cpu", dtype="float32").provenance == p
    other = models.load("tiny", device="cpu", dtype="float32", seed=1).provenance
    assert other.weights_digest != p.weights_digest


def test_a_saved_folder_digest_changes_with_a_file(tiny_bundle, tmp_path):
    from ourvidz import provenance

    folder = tmp_path / "sdxl"
    tiny_bundle.txt2img.save_pretrained(folder)
    loaded = models.load(str(folder), device="cpu", dtype="float32")
    digest = loaded.provenance.weights_digest
    assert digest == provenance.folder_digest(folder) != tiny_bundle.provenance.weights_digest
    assert loaded.provenance.preset == "sdxl"
    assert models.load(str(folder), device="cpu", dtype="float32").provenance == loaded.provenance
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("}", ', "note": 1}', 1))
    assert provenance.folder_digest(folder) != digest
