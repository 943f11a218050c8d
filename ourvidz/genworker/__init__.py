"""The generation workers' shared machinery: one JetStream loop (`loop`),
progress by stage and step (`progress`), failure triage (`errors`) and the
service wiring (`service`). A model family (sdxl, wan) supplies its render."""

from ourvidz.genworker.errors import (
    Cancelled,
    InvalidReference,
    InvalidTask,
    PermanentError,
    Verdict,
    classify,
)
from ourvidz.genworker.loop import Blob, Family, JobRun, LoopConfig, Output, Stats, Worker
from ourvidz.genworker.progress import ProgressReporter
from ourvidz.genworker.service import Running, WorkerServicer, start_worker

__all__ = [
    "Blob",
    "Cancelled",
    "Family",
    "InvalidReference",
    "InvalidTask",
    "JobRun",
    "LoopConfig",
    "Output",
    "PermanentError",
    "ProgressReporter",
    "Running",
    "Stats",
    "Verdict",
    "Worker",
    "WorkerServicer",
    "classify",
    "start_worker",
]
