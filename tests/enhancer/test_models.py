"""The tiny Qwen2 preset: the offline tokenizer, seeded generation, streaming,
deadlines and a save/reload round trip; the full-size architecture counted on
the meta device."""

from __future__ import annotations

import threading

import pytest

from services.enhancer import models

MESSAGES = [
    {"role": "system", "content": "You write prompts."},
    {"role": "user", "content": "a cat on a street at night"},
]


@pytest.fixture(scope="module")
def lm():
    return models.load("tiny", device="cpu", dtype="float32")


def test_tokenizer_is_the_same_in_every_build():
    a, b = models.qwen_tokenizer(), models.qwen_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert len(a) <= models.TINY_VOCAB_SIZE
    assert a.eos_token == "<|im_end|>"
    for token in models.SPECIAL_TOKENS:
        assert a.convert_tokens_to_ids(token) != a.unk_token_id or token == a.unk_token


def test_tokenizer_encodes_any_text_and_words_whole():
    tok = models.qwen_tokenizer()
    text = "Ünïcödé ✓ 猫 — a cat\tat night"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.tokenize(" a cat at night") == ["Ġa", "Ġcat", "Ġat", "Ġnight"]


def test_chat_template_is_chatml(lm):
    text = lm.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou write prompts.<|im_end|>\n"
        "<|im_start|>user\na cat on a street at night<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = models.encode_chat(lm, MESSAGES)["input_ids"][0].tolist()
    assert ids.count(lm.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_same_seed_same_text_other_seed_other_text(lm):
    s = models.Sampling(temperature=0.7, top_p=0.9, max_new_tokens=32, seed=7, min_new_tokens=32)
    a = models.generate(lm, MESSAGES, s)
    b = models.generate(lm, MESSAGES, s)
    c = models.generate(lm, MESSAGES, models.Sampling(0.7, 0.9, 32, 8, min_new_tokens=32))
    assert a == b
    assert a.tokens_out == 32 and a.tokens_in > 10
    assert c.text != a.text


def test_min_new_tokens_forces_long_outputs(lm):
    s = models.Sampling(0.7, 0.9, max_new_tokens=120, seed=1, min_new_tokens=120)
    assert models.generate(lm, MESSAGES, s).tokens_out == 120


def test_deadline_and_cancel_stop_a_generation(lm):
    s = models.Sampling(0.7, 0.9, max_new_tokens=200, seed=1, min_new_tokens=200)
    with pytest.raises(models.GenerationTimeout):
        models.generate(lm, MESSAGES, s, timeout_seconds=0.0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(models.GenerationCancelled):
        models.generate(lm, MESSAGES, s, cancel=cancel)


def test_stream_gives_the_same_answer_as_generate(lm):
    s = models.Sampling(0.7, 0.9, max_new_tokens=24, seed=3, min_new_tokens=24)
    items = list(models.stream(lm, MESSAGES, s, threading.Event()))
    *deltas, final = items
    assert isinstance(final, models.Generated)
    assert all(isinstance(d, str) and d for d in deltas) and len(deltas) > 1
    assert "".join(deltas) == final.text
    whole = models.generate(lm, MESSAGES, s)
    assert final.tokens_out == whole.tokens_out == 24
    assert final.text.strip() == whole.text.strip()


def test_a_saved_model_reloads_from_its_folder(lm, tmp_path):
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = models.load(str(tmp_path), device="cpu", dtype="float32")
    assert again.name == tmp_path.name
    s = models.Sampling(0.7, 0.9, max_new_tokens=16, seed=5, min_new_tokens=16)
    assert models.generate(again, MESSAGES, s) == models.generate(lm, MESSAGES, s)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="neither a preset"):
        models.load("/no/such/folder", device="cpu")


def test_full_size_architecture_is_qwen25_7b():
    assert models.count_full_parameters() == 7_615_616_512


def test_bench_times_the_requested_tokens():
    from services.enhancer import bench

    times = bench.run(models.TINY, tokens=8, repeat=2, device="cpu", dtype="float32")
    assert len(times) == 2 and all(t > 0 for t in times)


def test_a_real_clip_tokenizer_folder_counts_like_the_offline_one(tmp_path):
    from ourvidz import tokenizers
    from services.enhancer.service import TokenCounter

    tokenizers.clip_tokenizer().save_pretrained(tmp_path)
    text = "a red fox, snow, golden hour, highly detailed"
    assert TokenCounter(str(tmp_path)).clip_tokens(text) == TokenCounter().clip_tokens(text)
    assert TokenCounter().clip_tokens("") == 2  # the start and end tokens
