"""Wiring of the SDXL worker: the shared generation-worker service
(`ourvidz.genworker`) with the SDXL model and family."""

from __future__ import annotations

from ourvidz import runtime
from ourvidz.genworker import Running, start_worker
from services.sdxl.settings import SdxlSettings
from services.sdxl.worker import FAMILY, SdxlFamily


async def start(settings: SdxlSettings, *, port: int | None = None) -> Running:
    """Connect, start the gRPC server (NOT_SERVING), load the model in a thread,
    then consume. `port=0` binds any free port (tests)."""

    def load():
        from services.sdxl import models

        return models.load(
            settings.sdxl_model,
            device=settings.sdxl_device,
            dtype=settings.sdxl_dtype,
            compile=settings.sdxl_compile,
            config_dir=settings.sdxl_config_dir or None,
        )

    def make_family(bundle) -> SdxlFamily:
        return SdxlFamily(bundle, settings.sdxl_batch_max_images)

    return await start_worker(settings, FAMILY, load=load, make_family=make_family, port=port)


def main() -> None:
    runtime.run("sdxl", SdxlSettings, start)
