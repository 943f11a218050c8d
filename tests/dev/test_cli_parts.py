"""Pure parts of the CLI: the SSE parser, the progress line, the credential file."""

from __future__ import annotations

import io
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from ourvidz_cli.client import ApiError, CredentialStore
from ourvidz_cli.main import asset_filename
from ourvidz_cli.progress import (
    ProgressLine,
    format_elapsed,
    format_wait,
    render_bar,
    render_progress,
    render_queue,
)
from ourvidz_cli.sse import SseParser

# --- SSE ---------------------------------------------------------------------------------


def test_sse_events_with_ids_names_and_json_data():
    parser = SseParser()
    events = parser.feed(
        'id: 1\nevent: state\ndata: {"state": "queued"}\n\n'
        'id: 2\nevent: progress\ndata: {"state": "running", "step": 3, "total": 15}\n\n'
    )
    assert [(e.id, e.event, e.json()) for e in events] == [
        ("1", "state", {"state": "queued"}),
        ("2", "progress", {"state": "running", "step": 3, "total": 15}),
    ]
    assert parser.last_event_id == "2"


def test_sse_chunks_split_anywhere_give_the_same_events():
    text = 'id: 7\r\nevent: completed\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: keep-alive\r\n\r\nid: 8\rdata: x\r\r'
    whole = SseParser().feed(text)
    for size in (1, 2, 3, 5):
        parser = SseParser()
        pieces = [parser.feed(text[i : i + size]) for i in range(0, len(text), size)]
        assert [e for part in pieces for e in part] == whole
    assert [(e.id, e.event, e.data) for e in whole] == [
        ("7", "completed", '{"a":\n1}'),
        ("8", "message", "x"),
    ]


def test_sse_comments_and_incomplete_events_dispatch_nothing():
    parser = SseParser()
    assert parser.feed(": ping\n\n") == []
    assert parser.feed("event: state\ndata: {}") == []
    assert [e.event for e in parser.feed("\n\n")] == ["state"]


def test_sse_field_without_space_and_bad_json():
    (event,) = SseParser().feed("event:failed\ndata:not json\nretry: 1500\n\n")
    assert (event.event, event.data, event.retry, event.json()) == ("failed", "not json", 1500, {})


# --- progress ----------------------------------------------------------------------------------


def test_progress_bar_fills_in_proportion():
    assert render_bar(0, 10, width=10) == "[----------]"
    assert render_bar(5, 10, width=10) == "[#####-----]"
    assert render_bar(10, 10, width=10) == "[##########]"
    assert render_bar(12, 10, width=10) == "[##########]"
    assert render_bar(3, 0, width=4) == "[    ]"


def test_progress_line_shows_state_counts_bar_percent_and_elapsed():
    line = render_progress("running", 7, 15, 3.24, width=15)
    assert line == "running     7/15 [#######--------]  46%  3.2s"
    assert render_progress("queued", 0, 0, 0.0, width=4) == "queued     -/- [    ]    -  0.0s"


def test_progress_line_names_the_stage():
    line = render_progress("running", 15, 15, 9.0, width=4, stage="uploading")
    assert line == "running    uploading       15/15 [####] 100%  9.0s"


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_a_queued_job_shows_its_place_and_wait():
    soon = {"position": 2, "dispatched": False, "estimated_start_at": "2026-01-01T12:00:12Z"}
    assert render_queue(soon, NOW) == "#3 in line, ~12 s"
    assert render_queue({"position": 0, "dispatched": False}, NOW) == "#1 in line"
    later = {"position": 0, "dispatched": True, "estimated_start_at": "2026-01-01T12:05:00Z"}
    assert render_queue(later, NOW) == "next, for the first free worker, ~5 min"
    assert render_queue({"position": 4, "estimated_start_at": "2026-01-01T12:00:40"}, NOW) == (
        "#5 in line, ~40 s"
    )
    assert render_progress("queued", 0, 0, 0.4, place="#3 in line, ~12 s") == (
        "queued     #3 in line, ~12 s  0.4s"
    )


def test_waits_read_roughly():
    assert (format_wait(-3), format_wait(11.6), format_wait(89), format_wait(150)) == (
        "~0 s",
        "~12 s",
        "~89 s",
        "~2 min",
    )


def test_progress_writes_a_line_per_place_and_stage_but_not_per_step():
    stream = io.StringIO()
    progress = ProgressLine(stream, tty=False, clock=lambda: 0.0, wall=lambda: NOW)
    progress.update("queued", queue={"position": 1, "estimated_start_at": "2026-01-01T12:00:30Z"})
    progress.update("queued", queue={"position": 1, "estimated_start_at": "2026-01-01T12:00:20Z"})
    progress.update("queued", queue={"position": 0})
    progress.update("running", 1, 4, stage="denoising")
    progress.update("running", 2, 4, stage="denoising")
    progress.update("running", 4, 4, stage="uploading")
    progress.update("completed")
    assert [ln.rsplit(" ", 1)[0].strip() for ln in stream.getvalue().splitlines()] == [
        "queued     #2 in line, ~30 s",
        "queued     #1 in line",
        "running    denoising       1/4 [######------------------]  25%",
        "running    uploading       4/4 [########################] 100%",
        "completed  4/4 [########################] 100%",
    ]


def test_elapsed_reads_naturally():
    assert format_elapsed(9.96) == "10.0s"
    assert format_elapsed(63) == "1m03s"
    assert format_elapsed(3725) == "1h02m05s"


def test_progress_redraws_one_line_on_a_terminal():
    stream = io.StringIO()
    clock = iter([0.0, 1.0, 2.0, 3.0]).__next__
    progress = ProgressLine(stream, tty=True, clock=clock)
    progress.update("running", 1, 4)
    progress.update("running", 2, 4)
    progress.finish()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert text.split("\r")[-1].startswith("running    2/4 ")


def test_progress_writes_a_line_per_state_elsewhere():
    stream = io.StringIO()
    progress = ProgressLine(stream, tty=False, clock=lambda: 0.0)
    for state, step in (("queued", 0), ("running", 1), ("running", 2), ("completed", 4)):
        progress.update(state, step, 4)
    assert [ln.split()[0] for ln in stream.getvalue().splitlines()] == [
        "queued",
        "running",
        "completed",
    ]
    assert "\r" not in stream.getvalue()


# --- credentials -------------------------------------------------------------------------------------


def test_credentials_are_private_and_kept_per_server(tmp_path: Path):
    path = tmp_path / "cfg" / "ourvidz" / "credentials.json"
    store = CredentialStore(path)
    store.save("http://a", {"access_token": "A"})
    store.save("http://b", {"access_token": "B"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.load("http://a") == {"access_token": "A"}
    assert store.load("http://b") == {"access_token": "B"}
    assert store.load("http://c") == {}


def test_a_world_readable_credentials_file_becomes_private(tmp_path: Path):
    path = tmp_path / "credentials.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    CredentialStore(path).save("http://a", {"access_token": "A"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "credentials.json"]  # no temporary left


def test_a_corrupt_credentials_file_reads_as_empty(tmp_path: Path):
    path = tmp_path / "credentials.json"
    path.write_text("{not json")
    assert CredentialStore(path).load("http://a") == {}


# --- small helpers ----------------------------------------------------------------------------------------


def test_asset_file_names_follow_the_storage_keys():
    assert asset_filename("j1", {"index": 2, "content_type": "image/png"}, 0) == "j1_2.png"
    assert asset_filename("j1", {"content_type": "video/mp4"}, 0) == "j1_0.mp4"


def test_problem_messages_list_field_errors():
    error = ApiError(
        400, "Invalid argument", "bad job", [{"field": "seed", "message": "must be >= 0"}]
    )
    assert str(error) == "Invalid argument (400): bad job\n  seed: must be >= 0"


def test_a_detail_that_repeats_the_field_errors_is_shown_once():
    errors = [{"field": "seed", "message": "must be >= 0"}, {"field": "width", "message": "odd"}]
    error = ApiError(422, "Unprocessable Entity", "seed: must be >= 0; width: odd", errors)
    assert str(error) == "Unprocessable Entity (422)\n  seed: must be >= 0\n  width: odd"
