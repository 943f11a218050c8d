"""The rules of a job: what a valid submission is, which defaults fill it, and
the one state machine every change goes through.

Pure Python on purpose (no gRPC, no SQL): the servicer turns protos into a
`Submission`, the service layer applies `validate()` and `transition()`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from ourvidz import catalog
from ourvidz.errors import FailedPrecondition, FieldViolation, InvalidArgument
from ourvidz.policy import PromptPolicy
from ourvidz.settings import CatalogLimits
from ourvidz.text import has_control_chars

QUEUED = "queued"
ENHANCING = "enhancing"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (QUEUED, ENHANCING, RUNNING, COMPLETED, FAILED, CANCELLED)
ACTIVE = (QUEUED, ENHANCING, RUNNING)
TERMINAL = (COMPLETED, FAILED, CANCELLED)

REFERENCE_TYPES = ("style", "composition", "character")
DESTINATIONS = ("workspace", "library")
DEFAULT_REFERENCE_TYPE = "style"
DEFAULT_REFERENCE_STRENGTH = 0.6
MIN_REFERENCE_STRENGTH = 0.1
MAX_REFERENCE_STRENGTH = 1.0
_EPS = 1e-6  # reference_strength travels as a float32

# The only legal changes of state. Enhanced job types are created directly in
# `enhancing`; `running -> running` is a redelivered task (a new attempt).
# `running -> queued` is a hand-back (the worker stopped, or the attempt failed
# and waits for a retry); `queued -> completed` is the completion of a worker
# that was handed back while it still rendered (its outputs are the same).
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({ENHANCING, RUNNING, COMPLETED, CANCELLED, FAILED}),
    ENHANCING: frozenset({QUEUED, CANCELLED, FAILED}),
    RUNNING: frozenset({RUNNING, QUEUED, COMPLETED, FAILED, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def transition(current: str, target: str) -> bool:
    """True when `current -> target` is a change to apply, False when it is a
    repeat that changes nothing (the same terminal state again). Anything
    else raises FailedPrecondition."""
    if current == target and current in TERMINAL:
        return False
    if target in TRANSITIONS.get(current, frozenset()):
        return True
    raise FailedPrecondition(f"a {current} job cannot become {target}", reason="ILLEGAL_TRANSITION")


@dataclass(frozen=True)
class Submission:
    """A job as a client sends it; empty or None means "use the default"."""

    job_type: str
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    num_images: int = 0
    width: int = 0
    height: int = 0
    num_frames: int = 0
    reference_image_id: str = ""
    reference_type: str = ""
    reference_strength: float | None = None
    destination: str = ""
    workspace_session_id: str = ""


@dataclass(frozen=True)
class Reference:
    upload_id: str
    type: str
    strength: float
    bucket: str = ""
    key: str = ""


@dataclass(frozen=True)
class ValidJob:
    """A submission checked and filled with the catalog's defaults."""

    job_type: catalog.JobType
    prompt: str
    negative_prompt: str
    seed: int
    num_images: int
    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    reference: Reference | None
    destination: str
    workspace_session_id: str | None

    @property
    def initial_state(self) -> str:
        return ENHANCING if self.job_type.enhanced else QUEUED


# As the gateway bounds the Idempotency-Key it passes on as the request id.
MAX_REQUEST_ID_CHARS = 200


def check_request_id(request_id: str) -> str | None:
    """The idempotency key of a submission, trimmed; None when there is none."""
    text = (request_id or "").strip()
    if len(text) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument.field(
            "request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters"
        )
    if has_control_chars(text):
        raise InvalidArgument.field("request_id", "must not contain control characters")
    return text or None


def validate(
    sub: Submission, limits: CatalogLimits, policy: PromptPolicy | None = None
) -> ValidJob:
    """Check every field at once and raise one InvalidArgument that lists all
    violations, so a client fixes its request in one round. `policy` (the
    deny list) applies to the prompt only: a negative prompt names what is
    not wanted, so deny-listed words belong there."""
    bad: list[FieldViolation] = []
    jt = catalog.CATALOG.get(sub.job_type)
    if jt is None:
        bad.append(FieldViolation("job_type", _unknown_job_type(sub.job_type)))

    prompt = (sub.prompt or "").strip()
    if not prompt:
        bad.append(FieldViolation("prompt", "must not be empty"))
    elif len(prompt) > limits.max_prompt_chars:
        bad.append(
            FieldViolation("prompt", f"must be at most {limits.max_prompt_chars} characters")
        )
    elif has_control_chars(prompt):
        bad.append(FieldViolation("prompt", "must not contain control characters"))
    elif policy is not None and (denied := policy.violation(prompt, "prompt")) is not None:
        bad.append(denied)

    negative = (sub.negative_prompt or "").strip()
    if len(negative) > limits.max_negative_prompt_chars:
        bad.append(
            FieldViolation(
                "negative_prompt", f"must be at most {limits.max_negative_prompt_chars} characters"
            )
        )
    elif has_control_chars(negative):
        bad.append(FieldViolation("negative_prompt", "must not contain control characters"))

    seed = sub.seed
    if seed is not None and not 0 <= seed <= catalog.SEED_MAX:
        bad.append(FieldViolation("seed", f"must be between 0 and {catalog.SEED_MAX}"))

    strength = sub.reference_strength
    if strength is not None and not (
        MIN_REFERENCE_STRENGTH - _EPS <= strength <= MAX_REFERENCE_STRENGTH + _EPS
    ):
        bad.append(
            FieldViolation(
                "reference_strength",
                f"must be between {MIN_REFERENCE_STRENGTH} and {MAX_REFERENCE_STRENGTH}",
            )
        )
    reference_type = sub.reference_type or DEFAULT_REFERENCE_TYPE
    if reference_type not in REFERENCE_TYPES:
        bad.append(FieldViolation("reference_type", f"must be one of {', '.join(REFERENCE_TYPES)}"))

    destination = sub.destination or "workspace"
    if destination not in DESTINATIONS:
        bad.append(FieldViolation("destination", f"must be one of {', '.join(DESTINATIONS)}"))

    session_id = sub.workspace_session_id.strip() or None
    if session_id is not None and not _is_uuid(session_id):
        bad.append(FieldViolation("workspace_session_id", "must be a session id"))

    num_images = width = height = num_frames = 0
    if jt is not None:
        num_images = sub.num_images or 1
        if num_images not in jt.num_images:
            allowed = ", ".join(str(n) for n in jt.num_images)
            bad.append(FieldViolation("num_images", f"must be one of {allowed} for {jt.name}"))

        lo, hi = catalog.size_limits(jt, limits)
        width = sub.width or jt.default_width
        height = sub.height or jt.default_height
        for name, value in (("width", width), ("height", height)):
            if not lo <= value <= hi or value % jt.size_multiple:
                bad.append(
                    FieldViolation(
                        name,
                        f"must be a multiple of {jt.size_multiple} between {lo} and {hi} for {jt.name}",
                    )
                )

        if jt.output == "video":
            num_frames = sub.num_frames or jt.default_num_frames
            if num_frames < 1 or (num_frames - 1) % 4 or num_frames > limits.wan_max_frames:
                bad.append(
                    FieldViolation(
                        "num_frames",
                        f"must be 4k+1 (e.g. 81) and at most {limits.wan_max_frames} for {jt.name}",
                    )
                )
        else:
            num_frames = 1
            if sub.num_frames not in (0, 1):
                bad.append(
                    FieldViolation("num_frames", f"must be 0 or 1 for the image type {jt.name}")
                )

        if sub.reference_image_id and not jt.accepts_reference:
            bad.append(
                FieldViolation(
                    "reference_image_id", f"the job type {jt.name} does not accept reference images"
                )
            )

    if bad:
        raise InvalidArgument(bad)
    assert jt is not None

    reference = None
    if sub.reference_image_id:
        reference = Reference(
            upload_id=sub.reference_image_id,
            type=reference_type,
            strength=round(strength if strength is not None else DEFAULT_REFERENCE_STRENGTH, 4),
        )
    return ValidJob(
        job_type=jt,
        prompt=prompt,
        negative_prompt=negative or catalog.default_negative_prompt(jt, prompt),
        seed=seed if seed is not None else secrets.randbelow(catalog.SEED_MAX + 1),
        num_images=num_images,
        width=width,
        height=height,
        num_frames=num_frames,
        steps=jt.steps,
        guidance_scale=jt.guidance_scale,
        reference=reference,
        destination=destination,
        workspace_session_id=session_id,
    )


# --- re-runs -------------------------------------------------------------------

# Why a job cannot be re-run exactly (the FailedPrecondition's reason).
RERUN_NOT_COMPLETED = "JOB_NOT_COMPLETED"
RERUN_NO_PROVENANCE = "NO_PROVENANCE"
RERUN_MODEL_CHANGED = "MODEL_CHANGED"
RERUN_SETTINGS_CHANGED = "SETTINGS_CHANGED"
_GUIDANCE_EPS = 1e-4  # guidance_scale is stored as a float32


def _model(provenance: dict) -> tuple[str, str]:
    """(preset, weights digest) of a stored provenance."""
    return provenance.get("preset", ""), provenance.get("weights_digest", "")


def _model_name(model: tuple[str, str]) -> str:
    preset, digest = model
    return f"{preset or 'an unnamed preset'} (weights {digest[:12] or 'unknown'})"


def check_rerun(row: dict, rerun_type: catalog.JobType, current: dict | None) -> None:
    """A job can be re-run exactly when it completed with a provenance, its
    worker family still runs the model that rendered it (the preset and
    weights digest of `current`, the provenance that family recorded last),
    and `rerun_type` (the type it re-runs as) still renders with its steps
    and guidance. FailedPrecondition names what stands in the way."""
    if row["state"] != COMPLETED:
        raise FailedPrecondition(
            f"only a completed job can be re-run; this one is {row['state']}",
            reason=RERUN_NOT_COMPLETED,
        )
    recorded = row["provenance"]
    if not recorded:
        raise FailedPrecondition(
            "the job has no provenance (its worker recorded none), so the model "
            "that rendered it is unknown",
            reason=RERUN_NO_PROVENANCE,
        )
    then, now = _model(recorded), _model(current or {})
    if then != now:
        raise FailedPrecondition(
            f"the model changed: the job was rendered by {_model_name(then)}, the "
            f"{rerun_type.worker} workers now run {_model_name(now)}",
            reason=RERUN_MODEL_CHANGED,
        )
    if (
        row["steps"] != rerun_type.steps
        or abs(row["guidance_scale"] - rerun_type.guidance_scale) > _GUIDANCE_EPS
    ):
        raise FailedPrecondition(
            f"{rerun_type.name} now renders with {rerun_type.steps} steps and guidance "
            f"{rerun_type.guidance_scale:g}; the job used {row['steps']} and "
            f"{row['guidance_scale']:g}",
            reason=RERUN_SETTINGS_CHANGED,
        )


def rerun_submission(
    row: dict, rerun_type: catalog.JobType, workspace_session_id: str
) -> Submission:
    """The submission that repeats a job: the prompt it rendered (for an
    enhanced job its enhanced prompt, as the plain `rerun_type`, so it is not
    enhanced again) and every recorded parameter. Its outputs go where the
    job's went: the same destination, and `workspace_session_id` when given."""
    return Submission(
        job_type=rerun_type.name,
        prompt=row["enhanced_prompt"] or row["prompt"],
        negative_prompt=row["negative_prompt"],
        seed=row["seed"],
        num_images=row["num_images"],
        width=row["width"],
        height=row["height"],
        num_frames=row["num_frames"],
        reference_image_id=row["reference_upload_id"] or "",
        reference_type=row["reference_type"] or "",
        reference_strength=row["reference_strength"],
        destination=row["destination"],
        workspace_session_id=workspace_session_id or str(row["workspace_session_id"] or ""),
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def parse_id(value: str, what: str = "job") -> str:
    """A resource id from a request; anything that is not one cannot exist."""
    from ourvidz.errors import NotFound

    if not _is_uuid(value):
        raise NotFound(f"{what} not found")
    return str(uuid.UUID(value))


# --- pages ---------------------------------------------------------------------

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def listed_job_type(value: str) -> str:
    """A list's type filter: "" (every type) or a catalog name."""
    if value and value not in catalog.CATALOG:
        raise InvalidArgument.field("job_type", _unknown_job_type(value))
    return value


def _unknown_job_type(value: str) -> str:
    return f"unknown job type {value!r}; one of {', '.join(catalog.CATALOG)}"


def encode_page_token(created_at: datetime, job_id: str) -> str:
    """An opaque cursor: the position after the last job of a page."""
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), str(uuid.UUID(job_id))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument.field("page_token", "is not a token from a previous page") from exc
