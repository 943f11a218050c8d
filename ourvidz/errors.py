"""Domain errors and their mapping to gRPC status codes.

Services raise these; one server interceptor turns them into a status with
`google.rpc` details (BadRequest field violations, QuotaFailure, ErrorInfo).
A dependency that is down or too slow (PostgreSQL, NATS, the blob store, a peer
service) becomes UNAVAILABLE with a short message saying which, and one warning
line on the server. Anything else becomes INTERNAL with a generic message: no
stack trace or internal detail ever reaches a caller.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)

DOMAIN = "ourvidz.dev"


# The codes a failed job carries (Job.error.code): the generation workers'
# verdicts (ourvidz.genworker.errors) and the jobs service's own. Metrics label
# failures with these; any other code a worker sends is counted as OTHER.
JOB_ERROR_CODES = frozenset(
    {
        "INVALID_TASK",
        "INVALID_REFERENCE",
        "OUT_OF_MEMORY",
        "UNAVAILABLE",
        "STORAGE_UNAVAILABLE",
        "REJECTED",
        "INTERNAL",
        "WORKER_SHUTDOWN",
        "DEVICE_FAILED",
        "WORKER_ERROR",
        "WORKER_LOST",
        "ATTEMPTS_EXHAUSTED",
    }
)


@dataclass
class FieldViolation:
    field: str
    message: str


class DomainError(Exception):
    """Base of every error a service raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name),
            message=self.message,
            details=self.details(),
        )


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Iterable[FieldViolation] | FieldViolation | str,
        message: str | None = None,
    ):
        if isinstance(violations, FieldViolation):
            violations = [violations]
        elif isinstance(violations, str):
            violations = [FieldViolation(violations, message or "is invalid")]
        self.violations = list(violations)
        text = message or "; ".join(f"{v.field}: {v.message}" for v in self.violations)
        super().__init__(text)

    @classmethod
    def field(cls, name: str, message: str) -> InvalidArgument:
        return cls([FieldViolation(name, message)])

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.message)
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [*super().details(), packed]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUOTA_EXCEEDED"

    def __init__(
        self,
        message: str,
        *,
        subject: str = "",
        limit_description: str = "",
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.subject = subject
        self.limit_description = limit_description

    def details(self) -> list[any_pb2.Any]:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=self.subject, description=self.limit_description or self.message
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(quota)
        return [*super().details(), packed]


@dataclass(frozen=True)
class Dependency:
    """A kind of backing service, as a failure of it is reported."""

    name: str  # "the database"
    reason: str  # ErrorInfo.reason

    @property
    def summary(self) -> str:
        return f"{self.name} is unavailable"

    @property
    def message(self) -> str:
        return f"{self.summary}; try again shortly"


DATABASE = Dependency("the database", "DATABASE_UNAVAILABLE")
QUEUE = Dependency("the message queue", "QUEUE_UNAVAILABLE")
STORAGE = Dependency("the blob store", "STORAGE_UNAVAILABLE")
PEER = Dependency("a backing service", "DEPENDENCY_UNAVAILABLE")


@functools.cache
def _dependency_errors() -> tuple[tuple[tuple[type[BaseException], ...], Dependency], ...]:
    """Exception classes that mean "a dependency is down or too slow", most
    specific first (nats's TimeoutError is also the builtin one). Imported
    here, lazily, so that this module stays cheap to import."""
    kinds: list[tuple[tuple[type[BaseException], ...], Dependency]] = []
    try:
        import psycopg  # OperationalError covers psycopg_pool's PoolTimeout

        kinds.append(((psycopg.OperationalError, psycopg.InterfaceError), DATABASE))
    except ImportError:
        pass
    try:
        import nats.errors as nats_errors
        import nats.js.errors as js_errors

        kinds.append(
            (
                (
                    nats_errors.ConnectionClosedError,
                    nats_errors.ConnectionReconnectingError,
                    nats_errors.ConnectionDrainingError,
                    nats_errors.NoServersError,
                    nats_errors.NoRespondersError,
                    nats_errors.StaleConnectionError,
                    nats_errors.OutboundBufferLimitError,
                    nats_errors.UnexpectedEOF,
                    nats_errors.TimeoutError,
                    js_errors.ServiceUnavailableError,
                ),
                QUEUE,
            )
        )
    except ImportError:
        pass
    try:
        import urllib3.exceptions as http_errors  # under the minio client

        storage: tuple[type[BaseException], ...] = (
            http_errors.MaxRetryError,
            http_errors.NewConnectionError,
            http_errors.ProtocolError,
            http_errors.TimeoutError,
        )
        try:
            from minio.error import ServerError  # the S3 server answered 5xx

            storage = (*storage, ServerError)
        except ImportError:
            pass
        kinds.append((storage, STORAGE))
    except ImportError:
        pass
    kinds.append(((ConnectionError, TimeoutError), PEER))
    return tuple(kinds)


def dependency_error_classes() -> tuple[type[BaseException], ...]:
    """Every exception class that `dependency_failure` recognises by itself."""
    return tuple(cls for classes, _ in _dependency_errors() for cls in classes)


def dependency_failure(exc: BaseException) -> Dependency | None:
    """Which dependency `exc` says is down or too slow, or None when it says
    something else. Follows explicit causes (`raise ... from exc`)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(current, grpc.aio.AioRpcError):
            if current.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return PEER
        elif not isinstance(current, DomainError):
            for classes, dependency in _dependency_errors():
                if isinstance(current, classes):
                    return dependency
        current, seen = current.__cause__, seen + 1
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def status_from_exception(exc: BaseException, where: str = "") -> status_pb2.Status:
    """The status a caller sees for `exc`. `where` (the RPC's method) goes into
    the server's log line."""
    if isinstance(exc, DomainError):
        return exc.to_status()
    dependency = dependency_failure(exc)
    if dependency is not None:
        log.warning(
            "%s: %s (%s: %s)",
            where or "a call failed",
            dependency.summary,
            type(exc).__name__,
            _first_line(exc),
        )
        return Unavailable(dependency.message, reason=dependency.reason).to_status()
    log.exception("unhandled error%s", f" in {where}" if where else "", exc_info=exc)
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


async def abort_with(
    context: grpc.aio.ServicerContext, exc: BaseException, where: str = ""
) -> None:
    """Abort an RPC with the status that `exc` maps to (raises AbortError)."""
    await context.abort_with_status(rpc_status.to_status(status_from_exception(exc, where)))


# --- client side -----------------------------------------------------------------


@dataclass
class RemoteError:
    """A gRPC error as a caller sees it, with the details decoded."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: list[FieldViolation] = field(default_factory=list)


def parse_rpc_error(err: grpc.aio.AioRpcError | grpc.RpcError) -> RemoteError:
    code = err.code()
    remote = RemoteError(code=code, message=err.details() or code.name.lower())
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    if status is None:
        return remote
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            remote.violations.extend(
                FieldViolation(v.field, v.description) for v in bad.field_violations
            )
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            remote.reason = info.reason
    return remote
