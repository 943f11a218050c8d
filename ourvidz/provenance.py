"""What rendered a job (`Provenance`): a worker computes the part that is
fixed at model load once (`model_provenance`) and adds each job's own
parameters (`for_job`) to its CompleteJob.

The weights' digest names the weights exactly: for a model folder (or a
single file) the sha256 over a manifest of its files, each as its relative
path, size and own sha256, so a changed, added, removed or renamed file
changes it; for a built-in random preset the sha256 over its name, seed and
configuration, which fix its weights."""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from importlib import metadata
from pathlib import Path

from ourvidz.v1 import job_pb2

_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_manifest(path: str | Path) -> list[tuple[str, int, str]]:
    """(relative path, size, sha256) of every file under `path` (or of the
    file `path` itself), sorted by path; hidden entries are skipped."""
    root = Path(path)
    if root.is_file():
        return [(root.name, root.stat().st_size, _file_sha256(root))]
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            file = Path(dirpath) / name
            rel = file.relative_to(root).as_posix()
            entries.append((rel, file.stat().st_size, _file_sha256(file)))
    return sorted(entries)


def folder_digest(path: str | Path) -> str:
    """sha256 (hex) of the folder's manifest, one `path<TAB>size<TAB>sha256`
    line per file."""
    lines = "".join(f"{rel}\t{size}\t{sha}\n" for rel, size, sha in folder_manifest(path))
    return hashlib.sha256(lines.encode()).hexdigest()


def preset_digest(name: str, seed: int, config: object) -> str:
    """sha256 (hex) of a random preset's name, seed and configuration (JSON
    with sorted keys; anything not JSON by its `str`)."""
    text = json.dumps({"preset": name, "seed": seed, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


@cache
def versions() -> dict[str, str]:
    """The installed versions of the packages that shape a render."""
    return {
        "diffusers_version": _version("diffusers"),
        "transformers_version": _version("transformers"),
        "torch_version": _version("torch"),
        "ourvidz_version": _version("ourvidz"),
    }


def scheduler_of(pipe) -> tuple[str, str]:
    """The pipeline's scheduler class name and its configuration as JSON."""
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        return "", ""
    config = dict(getattr(scheduler, "config", {}) or {})
    return type(scheduler).__name__, json.dumps(config, sort_keys=True, default=str)


def model_provenance(
    *,
    weights_digest: str,
    preset: str,
    pipe,
    dtype: str,
    device: str,
) -> job_pb2.Provenance:
    """The part of a worker's provenance that is fixed at model load."""
    scheduler, scheduler_config = scheduler_of(pipe)
    return job_pb2.Provenance(
        weights_digest=weights_digest,
        preset=Path(preset).name if os.sep in preset else preset,
        scheduler=scheduler,
        scheduler_config_json=scheduler_config,
        dtype=dtype,
        device=str(device).split(":")[0],
        **versions(),
    )


def for_job(
    base: job_pb2.Provenance | None,
    worker_id: str,
    steps: int,
    guidance_scale: float,
    strength: float | None = None,
) -> job_pb2.Provenance | None:
    """The load-time provenance with one job's worker and parameters."""
    if base is None:
        return None
    out = job_pb2.Provenance()
    out.CopyFrom(base)
    out.worker_id = worker_id
    out.steps = steps
    out.guidance_scale = guidance_scale
    if strength is not None:
        out.img2img_strength = strength
    return out


def _config_dict(module) -> dict:
    config = getattr(module, "config", None)
    if config is None:
        return {}
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Private keys record how a module was loaded or run, not what it is; the
    # library version that wrote a configuration is reported apart.
    return {k: v for k, v in data.items() if not k.startswith("_") and k != "transformers_version"}


def modules_config(pipe, names: tuple[str, ...]) -> dict[str, dict]:
    """The configurations of the pipeline's modules `names` (those present)."""
    return {
        name: _config_dict(getattr(pipe, name))
        for name in names
        if getattr(pipe, name, None) is not None
    }
