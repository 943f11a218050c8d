"""Device and dtype choices shared by the model services (SDXL, WAN, the
enhancer): "auto" picks CUDA when present, bf16 on a GPU and fp32 on a CPU;
and loaded weights put on aligned memory, so a CPU's output does not depend on
the checkpoint file's layout.

Imports torch: only model services import this module.
"""

from __future__ import annotations

import contextlib
import itertools

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """bf16 on a GPU, fp32 on a CPU unless asked otherwise."""
    if dtype in ("", "auto"):
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)} or auto")
    return dtype


def use_tf32(device: str) -> bool:
    """On CUDA, let float32 matrix products and convolutions run on the
    TensorFloat-32 tensor cores (torch leaves matmuls at full float32 by
    default). The modules that stay float32 on a GPU (the WAN VAE, SDXL's VAE
    while upcast, schedulers' arithmetic) then run at tensor-core speed, with
    float32's range and a 10-bit mantissa in the products. Process-wide;
    returns whether it was set (never on a CPU, whose results stay as they
    were)."""
    if not str(device).startswith("cuda"):
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    return True


def fp32_names(module: torch.nn.Module, dtype: str) -> frozenset[str]:
    """The submodule names whose weights `module`'s class keeps in float32
    when loaded in `dtype`, as `from_pretrained` keeps them: diffusers'
    `_keep_in_fp32_modules` for any lower precision (the WAN transformer's
    time embedder, modulation tables, affine norms and RoPE tables);
    transformers' for float16 only, its `_strict` list for bf16 too."""
    if dtype == "float32":
        return frozenset()
    if hasattr(module, "_keep_in_fp32_modules_strict"):  # a transformers model
        names = set(module._keep_in_fp32_modules_strict or ())
        if dtype == "float16":
            names |= set(module._keep_in_fp32_modules or ())
        return frozenset(names)
    return frozenset(getattr(module, "_keep_in_fp32_modules", None) or ())


def cast_like_loading(module: torch.nn.Module, dtype: str) -> int:
    """Cast the floating parameters and buffers of `module` to `dtype`, except
    those under a name of `fp32_names`, which go to float32: a model built in
    memory (a preset) ends in the precision `from_pretrained(dtype=...)` gives
    the same model from a folder. Returns how many tensors changed."""
    keep = fp32_names(module, dtype)
    changed = 0
    with torch.no_grad():
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            target = torch.float32 if keep.intersection(name.split(".")) else DTYPES[dtype]
            if tensor.dtype != target:
                tensor.data = tensor.data.to(target)
                changed += 1
    return changed


@contextlib.contextmanager
def default_dtype(dtype: str):
    """Modules built inside get parameters of `dtype` (a name of DTYPES)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# Where torch's CPU allocator starts every tensor it allocates (c10's gAlignment).
CPU_ALIGNMENT = 64


def own_aligned_memory(*modules: torch.nn.Module) -> int:
    """Copy every CPU parameter and buffer of `modules` that does not start on
    a CPU_ALIGNMENT boundary into memory of its own; returns how many.

    Weights loaded from a .safetensors file are zero-copy views of the mapped
    file, at the file's byte offsets (only 8-byte aligned), while weights built
    or copied in memory are 64-byte aligned. MKL's matrix-vector product (a
    Linear on one row, such as SDXL's pooled text projection) rounds differently
    when the matrix does not start on a 16-byte boundary, so the same weights
    gave a different image from a saved folder than in memory (pixels 1/255
    apart). With every weight aligned, a CPU's output no longer depends on where
    a tensor sat in its checkpoint file. On a GPU, `.to(device)` has copied them
    already."""
    copied = 0
    with torch.no_grad():
        for module in modules:
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                if tensor.device.type == "cpu" and tensor.data_ptr() % CPU_ALIGNMENT:
                    tensor.data = tensor.data.clone()
                    copied += 1
    return copied


def modules_of(pipe) -> list[torch.nn.Module]:
    """The torch modules of a diffusers pipeline (its UNet or transformer, VAE,
    text encoders)."""
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
