"""CLIP tokenizers made offline, identical in every process (SDXL's tiny and
full-random presets; the enhancer counts SDXL prompt tokens with them).

No tokenizer files can be downloaded here, so the tiny and full-random presets
build a real `CLIPTokenizer` from an in-memory vocabulary: every byte of CLIP's
byte-level alphabet (so any text encodes), its end-of-word variants, and merges
derived from a fixed word list in a fixed order. Nothing is trained at run
time, so the same prompt always gives the same ids.
"""

from __future__ import annotations

from functools import cache

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77

# Common prompt words; their merges make typical prompts tokenise into words.
WORDS = (
    "a an the of and with in on at by for to from portrait photo photograph picture image "
    "painting drawing sketch illustration render art style artwork cinematic film lighting "
    "light dark bright soft hard warm cold sunset sunrise night day morning evening golden "
    "hour blue red green yellow orange purple pink black white gray grey brown silver gold "
    "woman man girl boy person people child children cat dog horse bird fish dragon robot "
    "city street house castle forest tree trees mountain mountains river lake sea ocean beach "
    "sky cloud clouds rain snow fire water stone wood glass metal flower flowers garden field "
    "face eyes hair hands smile standing sitting walking running looking wearing dress suit "
    "detailed highly detail sharp focus high quality best masterpiece realistic photorealistic "
    "hyperrealistic ultra 4k 8k hd resolution depth bokeh background foreground close up wide "
    "angle shot view lens camera studio natural beautiful cute old young small large big "
    "tall long short fantasy science fiction futuristic ancient medieval modern vintage "
    "anime cartoon oil watercolor digital concept trending lowres blurry jpeg artifacts "
    "watermark signature text logo worst low bad anatomy deformed disfigured extra limbs "
    "fingers missing mutated poorly drawn cropped out frame merged bodies fused duplicate"
).split()


def bytes_to_unicode() -> list[str]:
    """CLIP's (GPT-2's) reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def add_merges(parts: list[str], tokens: list[str], merges: list[tuple[str, str]]) -> None:
    """Extend a BPE vocabulary so that `parts` merge left to right into one
    token: each new pair becomes a merge rule, each new piece a token, in order
    of appearance (so the same word list always gives the same ids)."""
    known = set(tokens)
    while len(parts) > 1:
        rule = (parts[0], parts[1])
        merged = parts[0] + parts[1]
        if rule not in merges:
            merges.append(rule)
        if merged not in known:
            known.add(merged)
            tokens.append(merged)
        parts = [merged, *parts[2:]]


@cache
def vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges), built in a fixed order."""
    alphabet = bytes_to_unicode()
    tokens: list[str] = [*alphabet, *(c + "</w>" for c in alphabet)]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        add_merges([*word[:-1], word[-1] + "</w>"], tokens, merges)
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def vocab_size() -> int:
    return len(vocabulary()[0])


def eos_id() -> int:
    return vocabulary()[0][EOS]


def bos_id() -> int:
    return vocabulary()[0][BOS]


def clip_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """A fresh CLIPTokenizer over the offline vocabulary. SDXL's second
    tokenizer pads with "!" (id of that byte); the first with the end token."""
    vocab, merges = vocabulary()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=MAX_LENGTH,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=pad_token,
        unk_token=EOS,
    )
