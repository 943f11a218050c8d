"""The `ourvidz` CLI against the whole mesh (the real gateway, jobs, workspace
and the tiny SDXL worker): what the stand-in gateway of tests/dev claims about
the routes, checked where it matters to a user (the token job-types needs, a
field error's shape, the stages a job reports, a cancel while followed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx

from ourvidz_cli import main as cli
from tests.e2e.conftest import PASSWORD
from tests.e2e.test_generate import wait_for

SIZE = 128


async def ourvidz(stack, creds: Path, *args: str) -> int:
    """One CLI command, in a thread: it is synchronous, the mesh runs on this loop."""
    argv = ["--url", stack.url, "--credentials", str(creds), *args]
    return await asyncio.to_thread(cli.main, argv)


async def signed_up(stack, creds: Path, capsys) -> None:
    email = f"cli-{uuid.uuid4().hex[:10]}@example.com"
    assert await ourvidz(stack, creds, "signup", email, "--password", PASSWORD) == 0
    capsys.readouterr()


async def test_job_types_lists_the_catalog_with_the_stored_token(stack, tmp_path, capsys):
    creds = tmp_path / "credentials.json"
    assert await ourvidz(stack, creds, "job-types") == 1
    assert "ourvidz login" in capsys.readouterr().err
    await signed_up(stack, creds, capsys)
    assert await ourvidz(stack, creds, "job-types") == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert sorted(row.split()[0] for row in rows) == sorted(
        [
            "sdxl_image_fast",
            "sdxl_image_high",
            "image_fast",
            "image_high",
            "video_fast",
            "video_high",
            "image7b_fast_enhanced",
            "image7b_high_enhanced",
            "video7b_fast_enhanced",
            "video7b_high_enhanced",
        ]
    )


async def test_a_bad_field_is_reported_once(stack, tmp_path, capsys):
    creds = tmp_path / "credentials.json"
    await signed_up(stack, creds, capsys)
    code = await ourvidz(stack, creds, "generate", "a cat", "--seed", "-1", "--out", str(tmp_path))
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unprocessable Entity (422)\n  seed: "), err
    assert err.count("seed") == 1 and err.count("\n") == 2


async def test_generate_names_the_stages_and_downloads(stack, tmp_path, capsys):
    creds = tmp_path / "credentials.json"
    await signed_up(stack, creds, capsys)
    out_dir = tmp_path / "out"
    args = ("--num-images", "1", "--seed", "5", "--width", str(SIZE), "--height", str(SIZE))
    code = await ourvidz(stack, creds, "generate", "a lighthouse", *args, "--out", str(out_dir))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (path,) = captured.out.split()
    assert (await asyncio.to_thread(Path(path).read_bytes)).startswith(b"\x89PNG")
    stages = {ln.split()[1] for ln in captured.err.splitlines() if ln.startswith("running ")}
    assert {"denoising", "uploading"} <= stages, captured.err
    assert await ourvidz(stack, creds, "jobs", "--state", "completed") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split()[:3] == [Path(path).name.split("_")[0], "sdxl_image_fast", "completed"]


async def test_a_job_cancelled_while_followed_ends_the_cli_cleanly(stack, tmp_path, capsys):
    creds = tmp_path / "credentials.json"
    await signed_up(stack, creds, capsys)
    token = json.loads(creds.read_text())["servers"][stack.url]["access_token"]
    args = ("--type", "sdxl_image_high", "--num-images", "6", "--width", "256", "--height", "256")
    generate = asyncio.create_task(
        ourvidz(stack, creds, "generate", "a slow one", *args, "--out", str(tmp_path / "out"))
    )
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:

        async def running():
            jobs = (await http.get("/v1/jobs", params={"state": "running"})).json()["items"]
            return jobs[0] if jobs and jobs[0]["progress"]["step"] >= 1 else None

        job = await wait_for(running, within=60, interval=0.05)
    assert await ourvidz(stack, creds, "cancel", job["id"]) == 0
    assert await generate == 0
    # `cancel` and the followed `generate` both say so (in either order).
    err = capsys.readouterr().err
    assert f"job {job['id']} cancelled" in err.splitlines(), err
    assert "error" not in err
    assert not (tmp_path / "out").exists()
