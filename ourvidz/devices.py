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
