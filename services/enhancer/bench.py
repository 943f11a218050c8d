"""Time one enhancement-sized generation: `python -m services.enhancer.bench`.

Loads a preset (default `full-random`: Qwen2.5-7B's architecture with random
weights, bf16 on a GPU) and times `--tokens` new tokens (forced with
min_new_tokens, so an early end-of-text does not shorten the run) through the
chat template, after one warm-up. Prints one line per run and the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from services.enhancer import models

MESSAGES = [
    {"role": "system", "content": "You rewrite prompts for a text-to-video model."},
    {"role": "user", "content": "a lighthouse at dusk, waves crashing"},
]


def run(preset: str, tokens: int, repeat: int, device: str, dtype: str) -> list[float]:
    import torch

    started = time.perf_counter()
    lm = models.load(preset, device=device, dtype=dtype)
    print(
        f"loaded {lm.name} on {lm.device} in {lm.dtype}: {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    sampling = models.Sampling(0.7, 0.9, max_new_tokens=tokens, seed=42, min_new_tokens=tokens)

    def once() -> float:
        if lm.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = models.generate(lm, MESSAGES, sampling)
        if lm.device.startswith("cuda"):
            torch.cuda.synchronize()
        assert out.tokens_out == tokens, out.tokens_out
        return time.perf_counter() - t0

    once()  # warm-up
    times = []
    for _ in range(repeat):
        times.append(once())
        print(f"{tokens} new tokens: {times[-1]:.3f} s", file=sys.stderr)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.FULL_RANDOM)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    times = run(args.model, args.tokens, args.repeat, args.device, args.dtype)
    median = statistics.median(times)
    print(
        f"{args.model}: {args.tokens} new tokens, median {median:.3f} s "
        f"({median / args.tokens * 1000:.1f} ms/token, n={len(times)})"
    )


if __name__ == "__main__":
    main()
