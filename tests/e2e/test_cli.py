"""The `ourvidz` CLI against the whole mesh (the real gateway, jobs, workspace
and the tiny SDXL worker): what the stand-in gateway of tests/dev claims about
the routes, checked where it matters to a user."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from ourvidz_cli import main as cli
from tests.e2e.conftest import PASSWORD

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
