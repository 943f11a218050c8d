"""Loaded weights on aligned memory: a model's CPU output must not depend on
where its tensors sat in the checkpoint file."""

from __future__ import annotations

import torch

from ourvidz.devices import (
    CPU_ALIGNMENT,
    cast_like_loading,
    fp32_names,
    own_aligned_memory,
    use_tf32,
)


def misaligned_copy(t: torch.Tensor, offset_bytes: int) -> torch.Tensor:
    """`t`'s values at `offset_bytes` past an aligned start, as a tensor read
    from a .safetensors file at that offset would be."""
    step = offset_bytes // t.element_size()
    buf = torch.empty(t.numel() + step, dtype=t.dtype)
    out = buf[step : step + t.numel()].view_as(t)
    out.copy_(t)
    assert out.data_ptr() % CPU_ALIGNMENT == offset_bytes
    return out


def test_misaligned_weights_get_aligned_memory_and_keep_their_values():
    torch.manual_seed(0)
    built = torch.nn.Linear(32, 32, bias=False)  # as built in memory
    loaded = torch.nn.Linear(32, 32, bias=False)
    loaded.register_buffer("scale", misaligned_copy(torch.randn(8), 8))
    loaded.weight.data = misaligned_copy(built.weight.data, 56)
    untouched = torch.nn.Linear(4, 4)
    pointer = untouched.weight.data_ptr()

    assert own_aligned_memory(loaded, untouched) == 2
    assert loaded.weight.data_ptr() % CPU_ALIGNMENT == 0
    assert loaded.scale.data_ptr() % CPU_ALIGNMENT == 0
    assert isinstance(loaded.weight, torch.nn.Parameter)
    assert torch.equal(loaded.weight, built.weight)
    assert untouched.weight.data_ptr() == pointer  # aligned already: not copied
    assert own_aligned_memory(loaded) == 0


def test_one_row_through_loaded_weights_matches_the_built_ones_bit_for_bit():
    """A Linear on one row is a matrix-vector product, which MKL rounds
    differently for a matrix that does not start on a 16-byte boundary."""
    torch.manual_seed(0)
    built = torch.nn.Linear(32, 32, bias=False)
    x = torch.randn(1, 32)
    for offset in range(4, CPU_ALIGNMENT, 4):
        loaded = torch.nn.Linear(32, 32, bias=False)
        loaded.weight.data = misaligned_copy(built.weight.data, offset)
        own_aligned_memory(loaded)
        with torch.inference_mode():
            assert torch.equal(loaded(x), built(x)), offset


def test_tf32_is_turned_on_for_cuda_only():
    matmul = torch.get_float32_matmul_precision()
    conv = torch.backends.cudnn.conv.fp32_precision
    try:
        torch.set_float32_matmul_precision("highest")
        assert use_tf32("cpu") is False
        assert torch.get_float32_matmul_precision() == "highest"
        assert use_tf32("cuda:0") is True  # the settings exist on a CPU-only torch too
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.conv.fp32_precision = conv


class KeepsNorm(torch.nn.Module):
    """A diffusers-style model that keeps its `norm` in float32."""

    _keep_in_fp32_modules = ("norm",)

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.normal = torch.nn.Linear(4, 4)  # "norm" as a substring only: cast
        self.register_buffer("steps", torch.arange(3))


def test_cast_like_loading_keeps_the_fp32_modules_as_from_pretrained_does():
    model = KeepsNorm()
    assert fp32_names(model, "bfloat16") == {"norm"}
    assert fp32_names(model, "float32") == frozenset()
    assert cast_like_loading(model, "bfloat16") == 4
    assert model.proj.weight.dtype == model.normal.bias.dtype == torch.bfloat16
    assert model.norm.weight.dtype == model.norm.bias.dtype == torch.float32
    assert model.steps.dtype == torch.int64
    assert isinstance(model.proj.weight, torch.nn.Parameter)
    assert cast_like_loading(model, "bfloat16") == 0
