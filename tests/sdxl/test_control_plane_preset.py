"""The `control-plane` preset (no model; the control-plane load bench's): a job
goes through the real mesh and the real worker loop, reports its steps, and
completes with real PNGs in storage and in the workspace; prod refuses it."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from ourvidz import keys
from ourvidz_dev.stack import running_stack
from services.sdxl import presets
from services.sdxl.settings import SdxlSettings
from tests.conftest import GATEWAY_KEY, SECRET, WORKER_KEY, make_settings


async def _events(http: httpx.AsyncClient, path: str, headers: dict) -> list[tuple[str, dict]]:
    out, name = [], ""
    async with http.stream("GET", path, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                out.append((name, json.loads(line.partition(":")[2])))
    return out


async def test_a_job_completes_through_the_real_loop_with_real_pngs(base_env):
    env = {**base_env, "SDXL_MODEL": presets.CONTROL_PLANE, "SDXL_PROGRESS_INTERVAL_SECONDS": "0"}
    async with (
        running_stack(env) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=60) as http,
    ):
        assert stack.sdxl.bundle.preset == presets.CONTROL_PLANE
        account = {"email": "control-plane@example.com", "password": "a long password"}
        assert (await http.post("/v1/auth/signup", json=account)).status_code == 202
        login = await http.post("/v1/auth/login", json=account)
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        body = {"job_type": "sdxl_image_fast", "prompt": "a lighthouse", "num_images": 3}
        body |= {"seed": 7, "width": 64, "height": 128}
        job = (await http.post("/v1/jobs", headers=headers, json=body)).json()

        events = await _events(http, f"/v1/jobs/{job['id']}/events", headers)
        states = [data["state"] for name, data in events if name == "state"]
        assert "running" in states
        assert events[-1][0] == "completed"
        done = events[-1][1]["job"]
        assert done["state"] == "completed" and done["attempt"] == 1
        steps = [data["step"] for name, data in events if data.get("stage") == "denoising"]
        assert steps[0] == 1 and steps[-1] == done["steps"] == 15 and steps == sorted(steps)
        assert done["started_at"] and done["completed_at"]

        pixels = set()
        for index, asset in enumerate(done["assets"]):
            assert (asset["index"], asset["seed"]) == (index, 7 + index)
            async with httpx.AsyncClient(timeout=30) as anyone:  # a signed URL, from storage
                response = await anyone.get(asset["url"])
            assert response.status_code == 200
            data = response.content
            assert len(data) == asset["size_bytes"]
            with Image.open(io.BytesIO(data)) as image:
                assert (image.format, image.size) == ("PNG", (64, 128))
                pixels.add(image.convert("RGB").getpixel((0, 0)))
        assert len(done["assets"]) == 3 and len(pixels) == 3  # one seed, one colour each

        items_path = f"/v1/workspace/sessions/{done['workspace_session_id']}/items"
        for _ in range(100):  # Workspace files the outputs from the completion event
            items = (await http.get(items_path, headers=headers)).json()["items"]
            if len(items) == 3:
                break
            await asyncio.sleep(0.1)
        assert sorted((i["job_id"], i["index"]) for i in items) == [
            (job["id"], i) for i in range(3)
        ]


def test_prod_refuses_the_preset_and_dev_takes_it():
    prod = {
        "OURVIDZ_ENV": "prod",
        "STORAGE_SIGNING_KEY": SECRET,
        "AUTH_JWKS": json.dumps({"keys": [keys.public_jwk(GATEWAY_KEY)]}),
        "WORKER_KEY": keys.private_pem(WORKER_KEY).decode(),
    }
    for name in ("control-plane", " Control-Plane "):
        with pytest.raises(ValidationError, match="bench/test preset"):
            make_settings(SdxlSettings, prod, sdxl_model=name)
    assert make_settings(SdxlSettings, prod, sdxl_model="tiny").sdxl_model == "tiny"
    for env in ("dev", "test"):
        settings = make_settings(SdxlSettings, {"OURVIDZ_ENV": env}, sdxl_model="control-plane")
        assert settings.sdxl_model == "control-plane"
