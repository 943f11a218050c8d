"""WorkerService for operators: who this worker is, what it runs, how it fares."""

from __future__ import annotations

from collections.abc import Callable

from ourvidz.auth import current_principal
from ourvidz.v1 import worker_service_pb2, worker_service_pb2_grpc
from services.sdxl.models import PipeBundle
from services.sdxl.settings import SdxlSettings
from services.sdxl.worker import FAMILY, Stats


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self,
        settings: SdxlSettings,
        bundle: Callable[[], PipeBundle | None],
        stats: Callable[[], Stats],
    ) -> None:
        self._settings = settings
        self._bundle = bundle
        self._stats = stats

    async def GetWorkerInfo(self, request, context):
        current_principal().require("admin", "worker")
        bundle = self._bundle()
        stats = self._stats()
        return worker_service_pb2.GetWorkerInfoResponse(
            worker_id=self._settings.sdxl_worker_id,
            family=FAMILY,
            model_preset=bundle.preset if bundle else self._settings.sdxl_model,
            device=bundle.device if bundle else "",
            dtype=bundle.dtype if bundle else "",
            ready=bundle is not None,
            current_job_id=stats.current_job_id,
            jobs_completed=stats.jobs_completed,
            jobs_failed=stats.jobs_failed,
        )
