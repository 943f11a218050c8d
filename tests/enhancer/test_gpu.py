"""The full-random preset on a GPU: Qwen2.5-7B's architecture in bf16 generates
200 new tokens through the chat template (run with `-m gpu`)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_full_random_generates_200_tokens_in_bf16():
    from services.enhancer import bench, models

    times = bench.run(models.FULL_RANDOM, tokens=200, repeat=1, device="cuda", dtype="bfloat16")
    assert len(times) == 1 and times[0] > 0
