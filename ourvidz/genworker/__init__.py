"""The generation workers' shared machinery: one JetStream loop (`loop`),
progress by stage and step (`progress`), live previews of the latents
(`previews`), failure triage (`errors`), the fallbacks after running out of
GPU memory (`memory`) and the service wiring (`service`). A model family
(sdxl, wan) supplies its render."""

from ourvidz.genworker import previews
from ourvidz.genworker.errors import (
    Cancelled,
    InvalidReference,
    InvalidTask,
    PermanentError,
    Verdict,
    classify,
    device_broken,
    out_of_memory,
)
from ourvidz.genworker.loop import (
    EXIT_DEVICE_FAILED,
    Blob,
    Family,
    JobRun,
    LoopConfig,
    Output,
    Stats,
    Worker,
)
from ourvidz.genworker.memory import MemoryFallback, low_memory_decode, memory_fallbacks
from ourvidz.genworker.previews import Previews
from ourvidz.genworker.progress import ProgressReporter
from ourvidz.genworker.service import Running, WorkerServicer, start_worker

__all__ = [
    "EXIT_DEVICE_FAILED",
    "Blob",
    "Cancelled",
    "Family",
    "InvalidReference",
    "InvalidTask",
    "JobRun",
    "LoopConfig",
    "MemoryFallback",
    "Output",
    "PermanentError",
    "Previews",
    "ProgressReporter",
    "Running",
    "Stats",
    "Verdict",
    "Worker",
    "WorkerServicer",
    "classify",
    "device_broken",
    "low_memory_decode",
    "memory_fallbacks",
    "out_of_memory",
    "previews",
    "start_worker",
]
