"""How a generation worker sorts failures: retry later (transient) or give up
(permanent).

Transient: a peer service or the blob store unreachable, anything unexpected
(bounded by the attempt limit, so a poison message still ends). Permanent: a
task the model cannot run or a reference it cannot use; retrying would give
the same answer.

Two failures of the device itself are told apart before that sorting:
- out of memory (`out_of_memory`): the loop retries the job in the same
  process with less memory (`MemoryFallback`) before it reports a failure;
- a broken device (`device_broken`): an error CUDA keeps returning to every
  later call of the process (an illegal memory access, a device-side assert,
  a failed launch). Nothing in the process can run on the device again: the
  job goes back to the queue at no cost and the worker exits.

torch is imported lazily: the shared library does not depend on it, and a
torch error can only reach here once a model worker has imported it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import grpc


class Cancelled(Exception):
    """The job was cancelled (or the worker is stopping) while it ran; nothing
    was produced."""


class PermanentError(Exception):
    """A job that cannot succeed however often it is retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidReference(PermanentError):
    def __init__(self, message: str) -> None:
        super().__init__("INVALID_REFERENCE", message)


class InvalidTask(PermanentError):
    """Parameters the model cannot run (a size or frame count it does not take)."""

    def __init__(self, message: str) -> None:
        super().__init__("INVALID_TASK", message)


@dataclass(frozen=True)
class Verdict:
    retry: bool
    code: str
    message: str


_TRANSIENT_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAUTHENTICATED,  # e.g. a secret being rotated: wait, do not drop work
}


def _storage_transient(exc: BaseException) -> bool:
    try:
        import urllib3.exceptions
        from minio.error import ServerError
    except ImportError:  # pragma: no cover - both come with the minio client
        return False
    return isinstance(exc, urllib3.exceptions.HTTPError | ServerError)


# What CUDA and its libraries say for a "sticky" error: the context is lost and
# every later call in the process fails (the driver's own texts, as PyTorch
# passes them on in `torch.AcceleratorError` or a `RuntimeError`).
_STICKY_TEXTS = (
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "device-side assert",
    "unspecified launch failure",
    "cudaerrorlaunchfailure",
    "cudaerrorillegaladdress",
    "cudaerrorassert",
    "cudaerrorecc",
    "uncorrectable ecc error",
    "cublas_status_execution_failed",
    "cublas_status_internal_error",
    "cudnn_status_execution_failed",
    "cudnn_status_internal_error",
    "cuda error: unknown error",
    "hardware stack error",
    "device has fallen off the bus",
)
_OOM_TEXTS = ("cuda out of memory", "out of memory", "cudaerrormemoryallocation")


def _chain(exc: BaseException):
    """`exc` and the exceptions it was raised from (a pipeline may wrap)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def out_of_memory(exc: BaseException) -> bool:
    """The device ran out of memory (`torch.OutOfMemoryError`, which
    `torch.cuda.OutOfMemoryError` names too, or its text in a RuntimeError)."""
    torch = sys.modules.get("torch")
    for e in _chain(exc):
        if torch is not None and isinstance(e, torch.OutOfMemoryError):
            return True
        if isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXTS):
            return True
    return False


def device_broken(exc: BaseException) -> bool:
    """A sticky device error: the process cannot use the device again."""
    for e in _chain(exc):
        if isinstance(e, RuntimeError) and not out_of_memory(e):
            text = str(e).lower()
            if any(t in text for t in _STICKY_TEXTS):
                return True
    return False


def dependency_error(exc: BaseException) -> bool:
    """True when `exc` says a dependency (a peer service, its database, the
    blob store) is away or slow, not that the job is wrong: such a failure
    costs the job no attempt."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _TRANSIENT_GRPC
    return isinstance(exc, ConnectionError | TimeoutError) or _storage_transient(exc)


def classify(exc: BaseException) -> Verdict:
    if isinstance(exc, PermanentError):
        return Verdict(False, exc.code, exc.message)
    if device_broken(exc):
        return Verdict(
            True, "DEVICE_FAILED", "the worker's GPU failed; another worker runs the job"
        )
    if out_of_memory(exc):
        return Verdict(False, "OUT_OF_MEMORY", "the job does not fit in the GPU's memory")
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() in _TRANSIENT_GRPC:
            return Verdict(True, "UNAVAILABLE", "a service the worker needs did not answer")
        return Verdict(False, "REJECTED", f"the jobs service refused the call: {exc.details()}")
    if isinstance(exc, ConnectionError | TimeoutError) or _storage_transient(exc):
        return Verdict(True, "STORAGE_UNAVAILABLE", "the blob store could not be reached")
    if isinstance(exc, ValueError):
        # The pipeline refused its arguments; its message names internals, so
        # it goes to the log, and the user gets a fixed sentence.
        return Verdict(False, "INVALID_TASK", "the model cannot run this job with these settings")
    return Verdict(True, "INTERNAL", "internal error in the worker")


def free_device_memory() -> None:
    """After an out-of-memory error: drop what the allocator caches."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
