"""The presets: the real WAN classes and scheduler, the offline tokenizer,
saving and loading a folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.wan import configs, generate, models, tokenizer

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_is_the_real_wan_pipeline_with_unipc_flow_shift_5(tiny_wan):
    pipe = tiny_wan.pipe
    assert type(pipe).__name__ == "WanPipeline"
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    assert type(pipe.vae).__name__ == "AutoencoderKLWan"
    assert type(pipe.text_encoder).__name__ == "UMT5EncoderModel"
    assert type(pipe.tokenizer).__name__ == "T5Tokenizer"
    scheduler = pipe.scheduler
    assert type(scheduler).__name__ == "UniPCMultistepScheduler"
    assert scheduler.config.prediction_type == "flow_prediction"
    assert scheduler.config.use_flow_sigmas and scheduler.config.flow_shift == 5.0
    assert pipe.transformer.config.rope_max_seq_len == 1024
    assert pipe.transformer.config.text_dim == pipe.text_encoder.config.d_model
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)
    assert (tiny_wan.device, tiny_wan.dtype) == ("cpu", "float32")


def test_tokenizer_is_deterministic_and_covers_ascii():
    tok = tokenizer.t5_tokenizer()
    ids = tok("a cinematic shot of a cat, 8K!").input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert tok.unk_token_id not in ids
    assert len(tok) == tokenizer.vocab_size()
    code = (
        "from services.wan import tokenizer;"
        "print(tokenizer.t5_tokenizer()('a cinematic shot of a cat, 8K!').input_ids)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == str(ids)


def test_device_and_dtype_resolution():
    assert models.resolve_dtype("auto", "cuda") == "bfloat16"
    assert models.resolve_dtype("auto", "cpu") == "float32"
    with pytest.raises(ValueError, match="unknown dtype"):
        models.resolve_dtype("int8", "cpu")


def test_saved_folder_loads_back_with_identical_output(tiny_wan, tmp_path, make_task):
    tiny_wan.pipe.save_pretrained(tmp_path / "wan")
    loaded = models.load(str(tmp_path / "wan"), device="cpu", dtype="float32", vae_tiling=True)
    task = make_task(job_type="image_fast", num_frames=1, width=32, height=32, seed=99)
    noop = lambda *a, **k: None  # noqa: E731
    first = generate.render(tiny_wan, task, noop, lambda: False)
    second = generate.render(loaded, task, noop, lambda: False)
    assert first.data == second.data
    assert type(loaded.pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert loaded.pipe.tokenizer("a cat").input_ids == tiny_wan.pipe.tokenizer("a cat").input_ids


def test_unknown_model_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="neither a preset"):
        models.load(str(tmp_path / "missing"), device="cpu")


@pytest.mark.slow
def test_full_random_architecture_parameter_counts():
    counts = models.count_full_parameters()
    assert counts["transformer"] == 1_418_996_800
    assert round(counts["vae"] / 1e6, 1) == 126.9
    assert counts["text_encoder"] == 5_680_910_336
    assert configs.full_text_kwargs()["vocab_size"] == configs.UMT5_VOCAB


def test_load_names_the_weights_and_a_second_load_the_same(tiny_wan):
    import re

    p = tiny_wan.provenance
    assert re.fullmatch(r"[0-9a-f]{64}", p.weights_digest)
    assert (p.preset, p.scheduler) == ("tiny", "UniPCMultistepScheduler")
    assert '"flow_shift": 5.0' in p.scheduler_config_json
    assert (p.dtype, p.device) == ("float32", "cpu")
    assert models.load("tiny", device="cpu", dtype="float32").provenance == p
