"""The job-type catalog: what each job type runs, with which defaults and limits.

One table, served to clients (`GET /v1/job-types`), used by Jobs to validate and
fill a submission, and by the workers for steps and guidance. The product
surface comes from the old system; WAN's frame count is 81 because the model
needs 4k+1 frames (the old system asked 83, which WAN would silently round).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ourvidz.settings import CatalogLimits

SDXL_SIZE_MULTIPLE = 64
WAN_SIZE_MULTIPLE = 16
SDXL_NUM_IMAGES = (1, 3, 6)
SEED_MAX = 2**32 - 1  # the generators take a 32-bit unsigned seed everywhere

# Terms every SDXL negative prompt carries: the artefacts SDXL is prone to.
SDXL_BASE_NEGATIVE = (
    "lowres, blurry, jpeg artifacts, watermark, signature, text, logo, worst quality, "
    "low quality, bad anatomy, deformed, disfigured, extra limbs, bad hands, extra fingers, "
    "missing fingers, mutated hands, poorly drawn face, cropped, out of frame"
)
# Added when the prompt describes several people: SDXL tends to merge bodies and
# duplicate faces in group scenes.
SDXL_MULTI_PERSON_NEGATIVE = (
    "merged bodies, fused limbs, conjoined people, duplicate faces, cloned face, "
    "extra heads, floating limbs, tangled arms, wrong number of people"
)
# WAN 2.1's own recommended negative prompt (translated), its pipeline default.
WAN_DEFAULT_NEGATIVE = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people "
    "in the background, walking backwards"
)

_MULTI_PERSON = re.compile(
    r"\b(two|three|four|five|six|several|many|multiple|group|crowd|couple|pair|trio|"
    r"friends|family|team|people|persons|men|women|girls|boys|children|kids|"
    r"\d+\s+(?:people|persons|men|women|girls|boys))\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class JobType:
    name: str
    worker: str  # "sdxl" | "wan"
    output: str  # "image" | "video"
    quality: str  # "fast" | "high"
    steps: int
    guidance_scale: float
    default_width: int
    default_height: int
    bucket: str
    content_type: str
    expected_seconds: int
    enhanced: bool = False
    default_num_frames: int = 1
    fps: int = 0
    num_images: tuple[int, ...] = (1,)
    accepts_reference: bool = False
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def size_multiple(self) -> int:
        return SDXL_SIZE_MULTIPLE if self.worker == "sdxl" else WAN_SIZE_MULTIPLE

    @property
    def subject(self) -> str:
        """The work-queue subject of the generation stage."""
        return f"tasks.{self.worker}.{self.quality}"

    @property
    def target_model(self) -> str:
        return self.worker


def _sdxl(name: str, quality: str, steps: int, guidance: float, expected: int) -> JobType:
    return JobType(
        name=name,
        worker="sdxl",
        output="image",
        quality=quality,
        steps=steps,
        guidance_scale=guidance,
        default_width=1024,
        default_height=1024,
        bucket=name.replace("_", "-"),
        content_type="image/png",
        expected_seconds=expected,
        num_images=SDXL_NUM_IMAGES,
        accepts_reference=True,
    )


def _wan(
    name: str,
    output: str,
    quality: str,
    steps: int,
    guidance: float,
    expected: int,
    enhanced: bool = False,
) -> JobType:
    video = output == "video"
    return JobType(
        name=name,
        worker="wan",
        output=output,
        quality=quality,
        steps=steps,
        guidance_scale=guidance,
        default_width=832,
        default_height=480,
        bucket=name.replace("_", "-"),
        content_type="video/mp4" if video else "image/png",
        expected_seconds=expected,
        enhanced=enhanced,
        default_num_frames=81 if video else 1,
        fps=16 if video else 0,
        notes=(
            "81 frames by default: a 5 s video at 16 frames a second (frame counts are 4k+1)"
            if video
            else "one WAN frame"
        ),
    )


CATALOG: dict[str, JobType] = {
    jt.name: jt
    for jt in (
        _sdxl("sdxl_image_fast", "fast", 15, 6.0, 5),
        _sdxl("sdxl_image_high", "high", 25, 7.5, 10),
        _wan("image_fast", "image", "fast", 25, 6.5, 30),
        _wan("image_high", "image", "high", 50, 7.5, 60),
        _wan("video_fast", "video", "fast", 25, 6.5, 135),
        _wan("video_high", "video", "high", 50, 7.5, 270),
        _wan("image7b_fast_enhanced", "image", "fast", 25, 6.5, 35, enhanced=True),
        _wan("image7b_high_enhanced", "image", "high", 50, 7.5, 65, enhanced=True),
        _wan("video7b_fast_enhanced", "video", "fast", 25, 6.5, 140, enhanced=True),
        _wan("video7b_high_enhanced", "video", "high", 50, 7.5, 275, enhanced=True),
    )
}

REFERENCE_BUCKET = "reference-images"
THUMBNAIL_BUCKET = "thumbnails"
ALL_BUCKETS = (*sorted({jt.bucket for jt in CATALOG.values()}), REFERENCE_BUCKET, THUMBNAIL_BUCKET)

# --- where a job's outputs are stored -------------------------------------------
# Every output has one deterministic key, so a redelivered task writes the same
# objects again, and Jobs accepts no other object as a job's asset.


def image_key(user_id: str, job_id: str, index: int) -> str:
    """The `index`-th image of an image job, in its job type's bucket."""
    return f"{user_id}/{job_id}_{index}.png"


def video_key(user_id: str, job_id: str) -> str:
    """The video of a video job, in its job type's bucket."""
    return f"{user_id}/{job_id}.mp4"


def thumbnail_key(user_id: str, job_id: str) -> str:
    """The thumbnail of a video job, in `THUMBNAIL_BUCKET`."""
    return f"{user_id}/{job_id}.png"


def output_count(job_type: JobType, num_images: int) -> int:
    """How many assets a completed job has: its images, or its one video."""
    return num_images if job_type.output == "image" else 1


def output_key(job_type: JobType, user_id: str, job_id: str, index: int) -> str:
    """The key of a job's `index`-th output in `job_type.bucket`."""
    if job_type.output == "video":
        return video_key(user_id, job_id)
    return image_key(user_id, job_id, index)


# How each reference type drives SDXL img2img. `strength` is the user's
# reference_strength mapped into the band that suits the type: a style
# reference keeps little of the layout (high denoise), a composition reference
# keeps the layout (mid), a character reference keeps the most (low).
REFERENCE_MODES = {
    "style": {"denoise_min": 0.55, "denoise_max": 0.95, "guidance_boost": 0.5},
    "composition": {"denoise_min": 0.35, "denoise_max": 0.8, "guidance_boost": 0.0},
    "character": {"denoise_min": 0.2, "denoise_max": 0.6, "guidance_boost": -0.5},
}


def reference_settings(reference_type: str, reference_strength: float) -> tuple[float, float]:
    """(img2img strength, guidance offset) for a reference type and user strength.

    A higher `reference_strength` means the reference weighs more, so the
    denoising strength goes down within the type's band."""
    mode = REFERENCE_MODES[reference_type]
    lo, hi = mode["denoise_min"], mode["denoise_max"]
    strength = hi - (hi - lo) * (reference_strength - 0.1) / 0.9
    return round(strength, 4), mode["guidance_boost"]


def sdxl_negative_prompt(prompt: str) -> str:
    """The default SDXL negative prompt for `prompt`, with extra terms for scenes
    with several people."""
    if _MULTI_PERSON.search(prompt):
        return f"{SDXL_BASE_NEGATIVE}, {SDXL_MULTI_PERSON_NEGATIVE}"
    return SDXL_BASE_NEGATIVE


def default_negative_prompt(job_type: JobType, prompt: str) -> str:
    return sdxl_negative_prompt(prompt) if job_type.worker == "sdxl" else WAN_DEFAULT_NEGATIVE


def size_limits(job_type: JobType, limits: CatalogLimits) -> tuple[int, int]:
    if job_type.worker == "sdxl":
        return limits.sdxl_min_size, limits.sdxl_max_size
    return limits.wan_min_size, limits.wan_max_size


def plain_twin(job_type: JobType) -> JobType:
    """The job type that renders `job_type`'s prompt as it is given: itself,
    or for an enhanced type the plain one of the same worker, output and
    quality (`image7b_fast_enhanced` -> `image_fast`)."""
    if not job_type.enhanced:
        return job_type
    return next(
        jt
        for jt in CATALOG.values()
        if not jt.enhanced
        and (jt.worker, jt.output, jt.quality)
        == (job_type.worker, job_type.output, job_type.quality)
    )


def worker_job_types(worker: str) -> list[str]:
    """The job types one worker family renders, all with the model it runs."""
    return [jt.name for jt in CATALOG.values() if jt.worker == worker]
