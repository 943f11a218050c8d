"""Wiring of the WAN worker: the shared generation-worker service
(`ourvidz.genworker`) with the WAN 2.1 pipeline and family."""

from __future__ import annotations

from ourvidz import runtime
from ourvidz.genworker import Running, start_worker
from services.wan.settings import WanSettings
from services.wan.worker import FAMILY, WanFamily


async def start(settings: WanSettings, *, port: int | None = None) -> Running:
    """Connect, start the gRPC server (NOT_SERVING), load the model in a thread,
    then consume `tasks.wan.fast` before `tasks.wan.high`. `port=0` binds any
    free port (tests)."""

    def load():
        from services.wan import models

        return models.load(
            settings.wan_model,
            device=settings.wan_device,
            dtype=settings.wan_dtype,
            vae_tiling=settings.wan_vae_tiling,
            vae_slicing=settings.wan_vae_slicing,
            compile=settings.wan_compile,
        )

    def family(bundle):
        return WanFamily(bundle, crf=settings.wan_mp4_crf, limits=settings.limits())

    return await start_worker(settings, FAMILY, load=load, make_family=family, port=port)


def main() -> None:
    runtime.run("wan", WanSettings, start)
