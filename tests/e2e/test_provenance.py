"""A completed SDXL job's JSON names what rendered it: the weights' digest,
the scheduler, the parameters the render used, the dtype, the device and the
software versions; a re-run on the same model renders the same image."""

from __future__ import annotations

import io
import re
import uuid
from importlib import metadata

from PIL import Image

from tests.e2e.conftest import signup
from tests.e2e.test_generate import download, job_body, run_job


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


async def test_a_rerun_renders_the_same_image_with_the_same_model(http):
    user = await signup(http)
    job, _ = await run_job(user, job_body(num_images=1, negative_prompt="fog", seed=77))
    assert job["state"] == "completed", job
    response = await user.post(
        f"/v1/jobs/{job['id']}/rerun", headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert response.status_code == 202, response.text
    assert response.json()["rerun_of"] == job["id"]
    await user.events(f"/v1/jobs/{response.json()['id']}/events")
    again = (await user.get(f"/v1/jobs/{response.json()['id']}")).json()
    assert again["state"] == "completed", again
    for name in ("prompt", "negative_prompt", "seed", "width", "height", "steps"):
        assert again[name] == job[name], name
    assert again["provenance"]["weights_digest"] == job["provenance"]["weights_digest"]
    first, second = job["assets"][0], again["assets"][0]
    assert await download(second["url"]) == await download(first["url"])
