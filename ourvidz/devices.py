"""Device and dtype choices shared by the model services (SDXL, WAN, the
enhancer): "auto" picks CUDA when present, bf16 on a GPU and fp32 on a CPU.

Imports torch: only model services import this module.
"""

from __future__ import annotations

import contextlib

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
