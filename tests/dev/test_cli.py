"""The `ourvidz` CLI against a stand-in gateway: sign up, generate (upload,
submit, wait in line, follow the events, download), rerun, cancel, listing and
watching jobs, token refresh, errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from ourvidz_cli import main as cli
from ourvidz_cli.client import Api, CredentialStore

from .fake_gateway import PNG, FakeGateway, Served


@pytest.fixture
def gateway():
    fake = FakeGateway()
    served = Served(fake)
    try:
        yield fake
    finally:
        served.stop()


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    return tmp_path / "config" / "ourvidz" / "credentials.json"


def run(gateway: FakeGateway, creds: Path, *args: str) -> int:
    return cli.main(["--url", gateway.url, "--credentials", str(creds), *args])


def stored(creds: Path, gateway: FakeGateway) -> dict:
    return json.loads(creds.read_text())["servers"][gateway.url]


def test_signup_then_logs_in_and_stores_private_tokens(gateway, creds, capsys):
    assert run(gateway, creds, "signup", "ada@example.com", "--password", gateway.password) == 0
    assert [(method, path) for method, path, _, _ in gateway.requests] == [
        ("POST", "/v1/auth/signup"),
        ("POST", "/v1/auth/login"),
    ]
    entry = stored(creds, gateway)
    assert entry["email"] == "ada@example.com"
    assert entry["access_token"].startswith("acc-") and entry["refresh_token"].startswith("ref-")
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.parent.stat().st_mode) == 0o700
    assert "signed up and logged in as ada@example.com" in capsys.readouterr().err


def test_signup_whose_login_is_refused_says_so(gateway, creds, capsys):
    # The address had an account with another password: sign-up answers as
    # always, the login that follows is refused.
    assert run(gateway, creds, "signup", "ada@example.com", "--password", "another one") == 1
    assert "cannot log in as ada@example.com" in capsys.readouterr().err
    assert not creds.exists()


def test_help_names_the_operator_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "ourvidz admin grant" in capsys.readouterr().out


def test_login_with_a_wrong_password_fails_with_the_servers_reason(gateway, creds, capsys):
    assert run(gateway, creds, "login", "ada@example.com", "--password", "nope") == 1
    assert "wrong email or password" in capsys.readouterr().err
    assert not creds.exists()


def test_generate_uploads_submits_follows_and_downloads(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    reference = tmp_path / "ref.png"
    reference.write_bytes(PNG + b"reference")
    out_dir = tmp_path / "out"
    code = run(
        gateway,
        creds,
        "generate",
        "a lighthouse at dusk",
        "--num-images",
        "3",
        "--seed",
        "42",
        "--reference",
        str(reference),
        "--reference-type",
        "style",
        "--reference-strength",
        "0.5",
        "--out",
        str(out_dir),
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    paths = captured.out.split()
    assert paths == [str(out_dir / f"job1_{i}.png") for i in range(3)]
    for i, path in enumerate(paths):
        assert Path(path).read_bytes() == PNG + f"job1_{i}.png".encode()

    assert gateway.uploads == {"up-1": PNG + b"reference"}
    (_, _, headers, body) = next(r for r in gateway.requests if r[:2] == ("POST", "/v1/jobs"))
    assert body == {
        "job_type": "sdxl_image_fast",
        "prompt": "a lighthouse at dusk",
        "num_images": 3,
        "seed": 42,
        "reference_image_id": "up-1",
        "reference_type": "style",
        "reference_strength": 0.5,
    }
    assert headers.get("idempotency-key")
    # The progress line went to stderr (not a terminal here: one line per
    # state or stage), naming what a full bar waits for.
    stages = [ln.split()[:3] for ln in captured.err.splitlines() if ln.startswith("running")]
    assert stages == [
        ["running", "-/-", "["],
        ["running", "denoising", "1/4"],
        ["running", "decoding", "4/4"],
        ["running", "uploading", "4/4"],
    ]
    assert "completed" in captured.err


def test_a_queued_job_shows_its_place_in_line(gateway, creds, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "POLL_SECONDS", 0)
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    capsys.readouterr()
    gateway.line = [2, 1]
    assert run(gateway, creds, "generate", "a cat", "--out", str(tmp_path)) == 0
    lines = capsys.readouterr().err.splitlines()
    queued_lines = [ln for ln in lines if ln.startswith("queued")]
    assert [" ".join(ln.split()[:-1]) for ln in queued_lines] == [
        "queued #3 in line, ~10 min",
        "queued #2 in line, ~10 min",
        "queued next, for the first free worker",
    ]
    # Out of line, the event stream's replay shows what the job did since
    # (its queued state again draws no line).
    assert [ln.split()[0] for ln in lines[lines.index(queued_lines[-1]) + 1 :]] == [
        "running",
        "running",
        "running",
        "running",
        "completed",
    ]


def test_generate_refreshes_an_expired_token_once(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    old = stored(creds, gateway)["access_token"]
    gateway.expired.add(old)
    assert run(gateway, creds, "generate", "a cat", "--out", str(tmp_path)) == 0
    assert gateway.refreshes == 1
    assert stored(creds, gateway)["access_token"] != old
    assert capsys.readouterr().out.split() == [str(tmp_path / "job1_0.png")]


def test_generate_resumes_a_broken_event_stream(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    gateway.break_stream_after = 3
    assert run(gateway, creds, "generate", "a cat", "--out", str(tmp_path)) == 0
    streams = [r for r in gateway.requests if r[1].endswith("/events")]
    assert len(streams) == 2
    assert "last-event-id" not in streams[0][2]
    assert streams[1][2]["last-event-id"] == "3"
    assert (tmp_path / "job1_0.png").exists()


def test_a_rejected_job_prints_the_field_errors(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    assert run(gateway, creds, "generate", "x", "--type", "nonsense", "--out", str(tmp_path)) == 1
    captured = capsys.readouterr()
    # The detail repeats the field errors: each reason is printed once.
    assert captured.err.endswith(
        "error: Unprocessable Entity (422)\n  job_type: unknown job type 'nonsense'\n"
    )
    assert captured.err.count("unknown job type") == 1
    assert captured.out == ""


def test_a_failed_job_exits_non_zero_with_its_message(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    assert run(gateway, creds, "generate", "x", "--type", "doomed", "--out", str(tmp_path)) == 1
    assert "error: job job1 failed (internal): the worker ran out of memory" in (
        capsys.readouterr().err
    )
    assert not list(tmp_path.glob("job1_*"))


def test_a_job_the_user_cancelled_is_no_failure(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    gateway.outcome = "cancelled"
    out_dir = tmp_path / "out"
    assert run(gateway, creds, "generate", "x", "--out", str(out_dir)) == 0
    captured = capsys.readouterr()
    assert captured.err.endswith("job job1 cancelled\n")
    assert "error" not in captured.err and captured.out == ""
    assert not out_dir.exists()


def test_without_login_the_cli_says_how_to_log_in(gateway, creds, capsys):
    for command in ("jobs", "job-types"):
        assert run(gateway, creds, command) == 1
        assert "ourvidz login" in capsys.readouterr().err
    assert gateway.requests == []


def test_jobs_and_job_types_print_tables(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    run(gateway, creds, "generate", "a red fox in the snow", "--out", str(tmp_path))
    capsys.readouterr()
    assert run(gateway, creds, "jobs") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["ID", "TYPE", "STATE", "CREATED", "PROMPT"]
    assert listing[1].split()[:3] == ["job1", "sdxl_image_fast", "completed"]
    assert "a red fox in the snow" in listing[1]
    assert run(gateway, creds, "job-types") == 0
    types = capsys.readouterr().out.splitlines()
    # Whether each can run now, not GPU timings that a CPU stack would belie.
    assert types[0].split()[-1] == "AVAILABLE"
    assert types[1].split() == ["sdxl_image_fast", "sdxl", "image/png", "1024x1024", "15", "yes"]
    assert types[2].split()[-6:] == ["no:", "no", "wan", "worker", "is", "running"]
    (_, _, headers, _) = next(r for r in gateway.requests if r[1] == "/v1/job-types")
    assert headers["authorization"] == f"Bearer {stored(creds, gateway)['access_token']}"


def test_jobs_filters_by_state_and_names_the_next_page(gateway, creds, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    capsys.readouterr()
    args = ("jobs", "--state", "running", "--limit", "5", "--page-token", "p2")
    assert run(gateway, creds, *args) == 0
    (_, _, _, query) = next(r for r in gateway.requests if r[:2] == ("GET", "/v1/jobs"))
    assert query == {"page_size": "5", "state": "running", "page_token": "p2"}
    assert run(gateway, creds, "jobs", "--type", "video_fast") == 0
    listed = [r for r in gateway.requests if r[:2] == ("GET", "/v1/jobs")]
    assert listed[-1][3] == {"page_size": "20", "job_type": "video_fast"}
    assert cli.render_jobs({"items": [], "next_page_token": "p3"}).splitlines()[-1] == (
        "more: --page-token p3"
    )


def test_jobs_watch_redraws_the_table(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    run(gateway, creds, "generate", "a red fox", "--out", str(tmp_path))
    gateway.jobs["job1"].update(
        state="running", progress={"step": 2, "total": 4, "stage": "denoising"}
    )
    capsys.readouterr()

    def between_tables(seconds: float) -> None:
        assert seconds == cli.POLL_SECONDS
        gateway.jobs["job1"]["state"] = "completed"

    api = Api(gateway.url, CredentialStore(creds))
    try:
        assert cli.watch_jobs(api, {"page_size": 20}, rounds=2, sleep=between_tables) == 0
    finally:
        api.close()
    tables = capsys.readouterr().out.split("jobs at ")[1:]
    assert len(tables) == 2
    assert [t.splitlines()[2].split()[:4] for t in tables] == [
        ["job1", "sdxl_image_fast", "running", "(denoising)"],
        ["job1", "sdxl_image_fast", "completed", "2025-01-01T00:00:00"],
    ]


def test_jobs_watch_and_json_are_either_or(gateway, creds, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(gateway, creds, "jobs", "--watch", "--json")
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_jobs_watch_ends_cleanly_on_ctrl_c(gateway, creds, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    api = Api(gateway.url, CredentialStore(creds))
    try:
        assert cli.watch_jobs(api, {}, sleep=interrupted) == 0
    finally:
        api.close()


def test_an_unreachable_gateway_is_a_clear_error(creds, capsys):
    url = "http://127.0.0.1:9"
    CredentialStore(creds).save(url, {"access_token": "acc-x"})
    assert cli.main(["--url", url, "--credentials", str(creds), "job-types"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach {url}") and err.count("\n") == 1


def test_cancel_reports_the_new_state_and_a_missing_job_is_an_error(
    gateway, creds, tmp_path, capsys
):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    run(gateway, creds, "generate", "x", "--out", str(tmp_path))
    capsys.readouterr()
    assert run(gateway, creds, "cancel", "job1") == 0
    assert "job job1 cancelled" in capsys.readouterr().err
    assert gateway.jobs["job1"]["state"] == "cancelled"
    assert run(gateway, creds, "cancel", "job9") == 1
    assert "Not found (404): no such job" in capsys.readouterr().err


def test_rerun_prints_the_new_job(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    run(gateway, creds, "generate", "a red fox", "--seed", "7", "--out", str(tmp_path))
    capsys.readouterr()
    assert run(gateway, creds, "rerun", "job1", "--idempotency-key", "again-1") == 0
    captured = capsys.readouterr()
    job = json.loads(captured.out)
    assert (job["id"], job["rerun_of"], job["seed"], job["state"]) == ("job2", "job1", 7, "queued")
    assert "job job2 (sdxl_image_fast) queued: a re-run of job1" in captured.err
    (_, _, headers, _) = next(r for r in gateway.requests if r[1] == "/v1/jobs/job1/rerun")
    assert headers["idempotency-key"] == "again-1"
    assert not list(tmp_path.glob("job2_*"))  # not followed without --wait


def test_rerun_wait_follows_and_downloads(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    run(gateway, creds, "generate", "a red fox", "--num-images", "3", "--out", str(tmp_path))
    capsys.readouterr()
    out_dir = tmp_path / "again"
    assert run(gateway, creds, "rerun", "job1", "--wait", "--out", str(out_dir)) == 0
    paths = capsys.readouterr().out.split()
    assert paths == [str(out_dir / f"job2_{i}.png") for i in range(3)]
    assert any(r[1] == "/v1/jobs/job2/events" for r in gateway.requests)


def test_a_refused_rerun_exits_non_zero_with_the_reason(gateway, creds, tmp_path, capsys):
    run(gateway, creds, "login", "ada@example.com", "--password", gateway.password)
    run(gateway, creds, "generate", "x", "--type", "doomed", "--out", str(tmp_path))
    capsys.readouterr()
    assert run(gateway, creds, "rerun", "job1") == 1
    assert "Conflict (409): only a completed job can be re-run; this one is failed" in (
        capsys.readouterr().err
    )
