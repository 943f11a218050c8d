"""A completed SDXL job's JSON names what rendered it: the weights' digest,
the scheduler, the parameters the render used, the dtype, the device and the
software versions."""

from __future__ import annotations

import io
import re
from importlib import metadata

from PIL import Image

from tests.e2e.conftest import signup
from tests.e2e.test_generate import job_body, run_job


def check_common(p: dict) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", p["weights_digest"]), p
    assert p["preset"] == "tiny"
    assert (p["dtype"], p["device"]) == ("float32", "cpu")
    assert p["worker_id"]
    assert p["diffusers_version"] == metadata.version("diffusers")
    assert p["transformers_version"] == metadata.version("transformers")
    assert p["torch_version"] == metadata.version("torch")


async def test_a_completed_sdxl_job_names_what_rendered_it(http):
    user = await signup(http)
    job, _ = await run_job(user, job_body(num_images=1))
    assert job["state"] == "completed", job
    p = job["provenance"]
    check_common(p)
    assert p["scheduler"] == "EulerDiscreteScheduler"
    assert '"num_train_timesteps"' in p["scheduler_config"]
    assert (p["steps"], p["guidance_scale"]) == (job["steps"], job["guidance_scale"])
    assert p["img2img_strength"] is None

    # The same weights render the next job; a listing shows the same.
    again, _ = await run_job(user, job_body(num_images=1, seed=5))
    assert again["provenance"]["weights_digest"] == p["weights_digest"]
    listed = (await user.get("/v1/jobs")).json()["items"]
    assert {j["id"]: j["provenance"] for j in listed}[job["id"]] == p


async def test_an_img2img_job_names_its_strength(http):
    user = await signup(http)
    reference = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(reference, format="PNG")
    upload = await user.post(
        "/v1/uploads", files={"file": ("ref.png", reference.getvalue(), "image/png")}
    )
    assert upload.status_code == 201, upload.text
    job, _ = await run_job(
        user,
        job_body(
            num_images=1,
            reference_image_id=upload.json()["id"],
            reference_type="composition",
            reference_strength=0.5,
        ),
    )
    assert job["state"] == "completed", job
    p = job["provenance"]
    check_common(p)
    assert 0 < p["img2img_strength"] <= 1
    assert p["steps"] == job["steps"]
