"""Which generation jobs may share one denoising batch (placeholder until the
worker side lands)."""

from __future__ import annotations

from ourvidz import catalog

DEFAULT_BATCH_IMAGES = 6
BATCHING_FAMILIES = ("sdxl",)


def batches(family: str) -> bool:
    return family in BATCHING_FAMILIES


def batch_key_of_row(row: dict) -> tuple | None:
    jt = catalog.CATALOG[row["job_type"]]
    if not batches(jt.worker) or row.get("reference_key"):
        return None
    return (row["job_type"], row["width"], row["height"], row["steps"], row["guidance_scale"])
