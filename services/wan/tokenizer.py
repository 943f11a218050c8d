"""WAN's text tokenizer made offline: a real `T5Tokenizer` (what UMT5
resolves to) over an in-memory Unigram vocabulary, identical in every process.

No tokenizer files can be downloaded here. The vocabulary is built in a fixed
order from fixed lists (special tokens, every printable ASCII character with and
without the word-start marker, then common prompt words), with fixed scores,
so the same prompt always gives the same ids. Nothing is trained at run time.
"""

from __future__ import annotations

import string
from functools import cache

from transformers import T5Tokenizer

from ourvidz.tokenizers import WORDS as PROMPT_WORDS

SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5/UMT5
WORD_START = "\u2581"  # sentencepiece's "▁"
# Words of video prompts beyond the image words: motion, camera, time.
VIDEO_WORDS = (
    "motion moving moves slowly quickly slow fast camera pan pans panning tilt zoom "
    "tracking dolly aerial drone handheld shot scene sequence frame frames clip video "
    "flowing waves wind blowing flying falling turning dancing swimming driving "
    "timelapse cinematic smooth steady gentle dramatic sunlight shadows reflections"
).split()


@cache
def vocabulary() -> tuple[tuple[str, float], ...]:
    """(piece, score) pairs, ids in list order."""
    pieces: list[tuple[str, float]] = [(tok, 0.0) for tok in SPECIALS]
    pieces.append((WORD_START, -2.0))
    seen = {p for p, _ in pieces}
    chars = string.ascii_letters + string.digits + string.punctuation
    for ch in chars:
        for piece in (ch, WORD_START + ch):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -10.0))
    for word in (*PROMPT_WORDS, *VIDEO_WORDS):
        piece = WORD_START + word
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, -3.0))
    return tuple(pieces)


def vocab_size() -> int:
    return len(vocabulary())


def t5_tokenizer() -> T5Tokenizer:
    """A fresh tokenizer over the offline vocabulary (no sentinel tokens)."""
    return T5Tokenizer(vocab=list(vocabulary()), extra_ids=0)
