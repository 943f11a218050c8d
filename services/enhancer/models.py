"""The Qwen2.5 instruct model: presets, loading, and seeded generation through
its chat template.

- `tiny`: the real `Qwen2ForCausalLM` at a tiny width with seeded random
  weights and a `Qwen2Tokenizer` built in memory (tests and the dev stack).
- `full-random`: Qwen2.5-7B-Instruct's architecture with random bf16 weights,
  built directly on the device (GPU timing only: the same compute as the real
  model, meaningless text).
- a path: a local folder with a Qwen2.5 instruct model (`from_pretrained`).

Hub access is always off. One generation at a time per replica (`lock`); the
global torch seed is set under that lock, so the same messages, settings and
seed give the same text.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch

from ourvidz import tokenizers
from ourvidz.devices import (
    DTYPES,
    default_dtype,
    own_aligned_memory,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)

TINY = "tiny"
FULL_RANDOM = "full-random"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
TINY_VOCAB_SIZE = 2048

# ChatML, as Qwen2.5 instruct models use it (without the tool-calling parts).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Words whose merges make prompts and chat tokenise into words in the tiny tokenizer.
EXTRA_WORDS = (
    "you are is be it this that what how why please write describe prompt prompts enhance "
    "enhanced scene subject motion camera pan zoom tracking slow fast moving moves move "
    "turns flying flies glowing glow shadows shadow atmosphere mood composition color colors "
    "colour palette texture textures cinematic dramatic vivid rich one paragraph descriptors "
    "comma separated visual only no sentences user assistant system hello yes"
).split()


class GenerationTimeout(Exception):
    """The generation ran past its deadline."""


class GenerationCancelled(Exception):
    """The generation was asked to stop (the caller went away or we shut down)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    min_new_tokens: int = 0


@dataclass(frozen=True)
class Generated:
    text: str
    tokens_in: int
    tokens_out: int


@dataclass
class LoadedModel:
    model: object  # a transformers causal LM
    tokenizer: object
    preset: str
    device: str
    dtype: str
    # One generation at a time; the tokenizer's own lock for encoding from any thread.
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        """What analytics record as the model: the preset or the folder's name."""
        if self.preset in (TINY, FULL_RANDOM):
            return f"qwen2.5-{self.preset}"
        return Path(self.preset).name or self.preset


# --- the offline tokenizer -------------------------------------------------------------


@cache
def _vocabulary() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """(vocab, merges) of the tiny tokenizer in a fixed order: every byte of the
    byte-level alphabet, then merges of a fixed word list with the leading space
    ("Ġ") that Qwen's pre-tokenizer keeps on words inside a text."""
    alphabet = tokenizers.bytes_to_unicode()
    space = alphabet[ord(" ")]
    tokens: list[str] = list(alphabet)
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys([*tokenizers.WORDS, *EXTRA_WORDS]):
        tokenizers.add_merges(list(space + word), tokens, merges)
    return tuple((tok, i) for i, tok in enumerate(tokens)), tuple(merges)


def qwen_tokenizer():
    """A fresh Qwen2Tokenizer over the offline vocabulary, with ChatML."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _vocabulary()
    tok = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=END_OF_TEXT,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
    )
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


# --- configs and builders -------------------------------------------------------------


def tiny_config(vocab_size: int = TINY_VOCAB_SIZE):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )


def full_config():
    """Qwen2.5-7B-Instruct's published configuration."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def _generation_ids(model, tok) -> None:
    ids = tok.convert_tokens_to_ids([IM_END, END_OF_TEXT])
    model.generation_config.eos_token_id = ids
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids(END_OF_TEXT)
    model.generation_config.bos_token_id = None


def build_tiny(seed: int = 0):
    """(model, tokenizer) of the tiny preset: fp32 on the CPU, seeded weights."""
    from transformers import Qwen2ForCausalLM

    tok = qwen_tokenizer()
    if len(tok) > TINY_VOCAB_SIZE:
        raise RuntimeError(f"the tiny vocabulary ({len(tok)}) outgrew {TINY_VOCAB_SIZE}")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config())
    _generation_ids(model, tok)
    return model, tok


def build_full_random(device: str, dtype: str):
    """Qwen2.5-7B at full size with random weights, initialised on `device` in
    `dtype` (no host copy, no meta tensors left behind)."""
    from transformers import Qwen2ForCausalLM

    tok = qwen_tokenizer()
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = Qwen2ForCausalLM(full_config())
    _generation_ids(model, tok)
    return model, tok


def count_full_parameters() -> int:
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(full_config())
    return sum(p.numel() for p in model.parameters())


def load_local(path: str | Path, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ValueError(
            f"model {str(path)!r} is neither a preset (tiny, full-random) nor a local folder"
        )
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHAT_TEMPLATE
    return model, tok


def load(
    preset: str = TINY, *, device: str = "auto", dtype: str = "auto", seed: int = 0
) -> LoadedModel:
    """Load a preset or a local folder, ready to generate."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if preset == TINY:
        model, tok = build_tiny(seed)
    elif preset == FULL_RANDOM:
        model, tok = build_full_random(device, dtype)
    else:
        model, tok = load_local(preset, dtype)
    if model.device.type != torch.device(device).type:
        model.to(device)
    if model.dtype != DTYPES[dtype]:
        model.to(dtype=DTYPES[dtype])
    own_aligned_memory(model)  # a folder's output = the same weights' in memory
    model.eval()
    log.info("enhancer model loaded", extra={"preset": preset, "device": device, "dtype": dtype})
    return LoadedModel(model=model, tokenizer=tok, preset=preset, device=device, dtype=dtype)


# --- generation --------------------------------------------------------------------------


class _Stop:
    """A stopping criterion: the deadline passed or the caller cancelled.
    Remembers why, so the caller can tell a timeout from a finished text."""

    def __init__(self, deadline: float | None, cancel: threading.Event | None) -> None:
        self.deadline = deadline
        self.cancel = cancel
        self.reason = ""

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        if self.cancel is not None and self.cancel.is_set():
            self.reason = "cancelled"
        elif self.deadline is not None and time.monotonic() > self.deadline:
            self.reason = "timeout"
        stop = bool(self.reason)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    def raise_if_stopped(self) -> None:
        if self.reason == "timeout":
            raise GenerationTimeout("the generation ran past its deadline")
        if self.reason == "cancelled":
            raise GenerationCancelled("the generation was cancelled")


def encode_chat(lm: LoadedModel, messages: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    with lm.tokenizer_lock:
        text = lm.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        enc = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return {k: v.to(lm.device) for k, v in enc.items()}


def count_tokens(lm: LoadedModel, text: str) -> int:
    """Tokens of `text` under the model's tokenizer (no special tokens)."""
    with lm.tokenizer_lock:
        return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def _generate_kwargs(lm: LoadedModel, inputs, sampling: Sampling, stop: _Stop) -> dict:
    from transformers import StoppingCriteriaList

    kwargs = {
        **inputs,
        "max_new_tokens": sampling.max_new_tokens,
        "stopping_criteria": StoppingCriteriaList([stop]),
        "pad_token_id": lm.model.generation_config.pad_token_id,
    }
    if sampling.min_new_tokens:
        kwargs["min_new_tokens"] = min(sampling.min_new_tokens, sampling.max_new_tokens)
    if sampling.temperature > 0:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None)
    return kwargs


def generate(
    lm: LoadedModel,
    messages: list[dict[str, str]],
    sampling: Sampling,
    *,
    timeout_seconds: float | None = None,
    cancel: threading.Event | None = None,
) -> Generated:
    """The assistant's answer to `messages`; blocking (call it from a thread).
    Raises GenerationTimeout past `timeout_seconds` (the wait for the lock
    counts), GenerationCancelled when `cancel` is set."""
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    stop = _Stop(deadline, cancel)
    inputs = encode_chat(lm, messages)
    tokens_in = int(inputs["input_ids"].shape[1])
    with _locked(lm.lock, deadline), torch.inference_mode():
        torch.manual_seed(sampling.seed)
        out = lm.model.generate(**_generate_kwargs(lm, inputs, sampling, stop))
    stop.raise_if_stopped()
    new = out[0, tokens_in:]
    text = lm.tokenizer.decode(new, skip_special_tokens=True)
    return Generated(text=text, tokens_in=tokens_in, tokens_out=_count_new(lm, new))


def stream(
    lm: LoadedModel,
    messages: list[dict[str, str]],
    sampling: Sampling,
    cancel: threading.Event,
    *,
    timeout_seconds: float | None = None,
) -> Iterator[str | Generated]:
    """Text deltas of the answer as they are generated, then one `Generated`
    with the whole text and the token counts. Blocking: iterate in a thread.
    Setting `cancel` stops the generation at its next token."""
    from transformers import TextIteratorStreamer

    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    stop = _Stop(deadline, cancel)
    inputs = encode_chat(lm, messages)
    tokens_in = int(inputs["input_ids"].shape[1])
    streamer = TextIteratorStreamer(
        lm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=1.0
    )
    result: dict = {}

    def run() -> None:
        try:
            with _locked(lm.lock, deadline), torch.inference_mode():
                torch.manual_seed(sampling.seed)
                result["out"] = lm.model.generate(
                    **_generate_kwargs(lm, inputs, sampling, stop), streamer=streamer
                )
        except BaseException as exc:
            result["error"] = exc
            streamer.end()

    thread = threading.Thread(target=run, name="enhancer-chat", daemon=True)
    thread.start()
    pieces: list[str] = []
    try:
        while True:
            try:
                piece = next(streamer)
            except StopIteration:
                break
            except Exception:  # queue.Empty: no token within the streamer's timeout
                if not thread.is_alive() and streamer.text_queue.empty():
                    break
                continue
            if piece:
                pieces.append(piece)
                yield piece
    finally:
        if thread.is_alive():
            cancel.set()
        thread.join()
    if "error" in result:
        raise result["error"]
    stop.raise_if_stopped()
    new = result["out"][0, tokens_in:]
    yield Generated(text="".join(pieces), tokens_in=tokens_in, tokens_out=_count_new(lm, new))


def _count_new(lm: LoadedModel, new: torch.Tensor) -> int:
    """Generated tokens without the padding after an early stop."""
    pad = lm.model.generation_config.pad_token_id
    ids = new.tolist()
    while ids and ids[-1] == pad:
        ids.pop()
    return len(ids)


@contextlib.contextmanager
def _locked(lock: threading.Lock, deadline: float | None):
    wait = -1 if deadline is None else max(deadline - time.monotonic(), 0.0)
    if not lock.acquire(timeout=wait):
        raise GenerationTimeout("the model stayed busy past the deadline")
    try:
        yield
    finally:
        lock.release()
