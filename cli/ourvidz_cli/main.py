"""`ourvidz`: the command line client of an ourvidz gateway.

    ourvidz signup you@example.com
    ourvidz generate "a lighthouse at dusk" --num-images 3 --seed 42 --out out/
    ourvidz rerun JOB_ID --wait --out out/   # the same model, prompt, seed and settings
    ourvidz jobs --state running --watch    # redrawn every 2 s until Ctrl-C
    ourvidz jobs --type video_fast          # only the jobs of one type
    ourvidz job-types
    ourvidz admin grant you@example.com   # an operator's command (ourvidz.operator)

Talks HTTP to --url (default $OURVIDZ_URL or http://127.0.0.1:8080); keeps its
tokens in ~/.config/ourvidz/credentials.json (mode 0600) and refreshes them by
itself. Results go to stdout (the paths of downloaded files, tables); progress
(the state, the stage, a queued job's place in line) and errors go to stderr,
each error once. Exit status: 0 done (a job the user cancelled included), 1
failed (the reason on stderr), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import json
import mimetypes
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ourvidz_cli.client import (
    DEFAULT_URL,
    Api,
    ApiError,
    CredentialStore,
    NotLoggedIn,
    default_credentials_path,
)
from ourvidz_cli.progress import ProgressLine, render_queue
from ourvidz_cli.sse import SseEvent, SseParser

TERMINAL_STATES = ("completed", "failed", "cancelled")
JOB_STATES = ("queued", "enhancing", "running", *TERMINAL_STATES)
EXTENSIONS = {"image/png": ".png", "video/mp4": ".mp4", "image/jpeg": ".jpg", "image/webp": ".webp"}
RECONNECTS = 5
# Seconds between reads of a job waiting in line, and of a watched listing.
POLL_SECONDS = 2.0


class Failed(Exception):
    """The command did not do what was asked; the message says why."""


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# --- auth ------------------------------------------------------------------------------


def _password(args: argparse.Namespace, confirm: bool) -> str:
    if args.password is not None:
        return args.password
    if os.environ.get("OURVIDZ_PASSWORD"):
        return os.environ["OURVIDZ_PASSWORD"]
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password (again): ") != first:
        raise Failed("the passwords differ")
    return first


def cmd_signup(api: Api, args: argparse.Namespace) -> int:
    """Sign up, then log in: the sign-up answer carries no tokens, and is the
    same whether or not the address already had an account."""
    body = {"email": args.email, "password": _password(args, confirm=True)}
    api.request("POST", "/v1/auth/signup", auth=False, json=body)
    try:
        answer = api.request("POST", "/v1/auth/login", auth=False, json=body).json()
    except ApiError as exc:
        if exc.status != 401:
            raise
        raise Failed(
            f"signed up, but cannot log in as {args.email}: the address may already "
            "have an account with another password (`ourvidz login EMAIL`)"
        ) from exc
    api.remember(answer)
    err(
        f"signed up and logged in as {answer.get('user', {}).get('email', args.email)} on {api.url}"
    )
    return 0


def cmd_login(api: Api, args: argparse.Namespace) -> int:
    body = {"email": args.email, "password": _password(args, confirm=False)}
    answer = api.request("POST", "/v1/auth/login", auth=False, json=body).json()
    api.remember(answer)
    err(f"logged in as {answer.get('user', {}).get('email', args.email)} on {api.url}")
    return 0


# --- generate ------------------------------------------------------------------------------


def job_body(args: argparse.Namespace, reference_id: str | None) -> dict[str, Any]:
    """The POST /v1/jobs body: only what was given, the server fills defaults."""
    body: dict[str, Any] = {"job_type": args.type, "prompt": args.prompt}
    for name in (
        "num_images",
        "seed",
        "width",
        "height",
        "num_frames",
        "negative_prompt",
        "destination",
    ):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    if reference_id:
        body["reference_image_id"] = reference_id
        if args.reference_type:
            body["reference_type"] = args.reference_type
        if args.reference_strength is not None:
            body["reference_strength"] = args.reference_strength
    return body


def upload(api: Api, path: Path) -> str:
    if not path.is_file():
        raise Failed(f"no such file: {path}")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    # Bytes, not a file handle: a request retried after a token refresh sends them again.
    data = path.read_bytes()
    resp = api.request("POST", "/v1/uploads", files={"file": (path.name, data, content_type)})
    return resp.json()["id"]


def follow(api: Api, job_id: str, progress: ProgressLine) -> str:
    """Follow the job's event stream until a terminal event. When the stream
    breaks or ends early, reconnect with Last-Event-ID (the server replays
    what was missed). Returns the last state seen."""
    parser = SseParser()
    state = "queued"
    for attempt in range(RECONNECTS + 1):
        if attempt:
            time.sleep(min(0.2 * 2**attempt, 2.0))
        headers = {"Accept": "text/event-stream"}
        if parser.last_event_id:
            headers["Last-Event-ID"] = parser.last_event_id
        try:
            with api.stream(f"/v1/jobs/{job_id}/events", headers=headers) as resp:
                for chunk in resp.iter_text():
                    for event in parser.feed(chunk):
                        state = event_state(event, state)
                        draw_event(event, state, progress)
                        if state in TERMINAL_STATES:
                            return state
        except (httpx.TransportError, httpx.StreamError):
            continue
    return state


def _data(event: SseEvent) -> dict[str, Any]:
    data = event.json()
    return data if isinstance(data, dict) else {}


def event_state(event: SseEvent, state: str) -> str:
    """The job's state after one of its events."""
    if event.event in TERMINAL_STATES:
        return event.event
    return _data(event).get("state") or state


def draw_event(event: SseEvent, state: str, progress: ProgressLine) -> None:
    """Draw one job event: its state, and a progress event's step and stage."""
    data = _data(event)
    progress.update(state, data.get("step"), data.get("total"), stage=data.get("stage"))


def show_job(progress: ProgressLine, job: dict[str, Any]) -> None:
    """Draw a job as read: its state, step, stage and place in line."""
    prog = job.get("progress") or {}
    progress.update(
        job.get("state"),
        prog.get("step"),
        prog.get("total"),
        stage=prog.get("stage"),
        queue=job.get("queue"),
    )


def wait_in_line(api: Api, job: dict[str, Any], progress: ProgressLine) -> None:
    """While the job is queued and the server says where (`queue`), read it
    every POLL_SECONDS to show its place: the event stream tells when a job
    starts, not how the line moves. Returns once it left the line, without
    drawing that read: the event stream, followed next, replays what the job
    did since (each stage, even of a job that ended between two reads)."""
    while job.get("state") == "queued" and job.get("queue"):
        time.sleep(POLL_SECONDS)
        job = api.request("GET", f"/v1/jobs/{job['id']}").json()
        if job.get("state") == "queued":
            show_job(progress, job)


def asset_filename(job_id: str, asset: dict[str, Any], position: int) -> str:
    index = asset.get("index", position)
    content_type = str(asset.get("content_type") or "")
    ext = EXTENSIONS.get(content_type) or mimetypes.guess_extension(content_type) or ".bin"
    return f"{job_id}_{index}{ext}"


def cmd_generate(api: Api, args: argparse.Namespace) -> int:
    reference_id = upload(api, Path(args.reference)) if args.reference else None
    key = args.idempotency_key or str(uuid.uuid4())
    job = api.request(
        "POST", "/v1/jobs", json=job_body(args, reference_id), headers={"Idempotency-Key": key}
    ).json()
    err(f"job {job['id']} ({job.get('job_type', args.type)}) {job.get('state', 'queued')}")
    return finish(api, job, args)


def finish(api: Api, job: dict[str, Any], args: argparse.Namespace) -> int:
    """Follow a submitted job to its end, then download its outputs into
    `args.out` (their paths on stdout). A job the user cancelled is a success
    (exit 0, nothing to download); one that failed, or did not end while
    followed, is not."""
    job_id = job["id"]
    progress = ProgressLine(sys.stderr)
    try:
        show_job(progress, job)
        wait_in_line(api, job, progress)
        follow(api, job_id, progress)
        # Poll a little when the stream ended before the job did.
        job = api.request("GET", f"/v1/jobs/{job_id}").json()
        deadline = time.monotonic() + args.wait_timeout
        while job.get("state") not in TERMINAL_STATES and time.monotonic() < deadline:
            time.sleep(1)
            job = api.request("GET", f"/v1/jobs/{job_id}").json()
            show_job(progress, job)
        show_job(progress, job)
    except KeyboardInterrupt:
        progress.finish()
        err(f"stopped following job {job_id}; it goes on (cancel: ourvidz cancel {job_id})")
        return 130
    finally:
        progress.finish()
    return outcome(api, job, args)


def outcome(api: Api, job: dict[str, Any], args: argparse.Namespace) -> int:
    """What a followed job's end means for the user: its outputs downloaded,
    a line saying it was cancelled, or the reason it failed or is not done."""
    job_id, state = job["id"], job.get("state")
    if state == "cancelled":
        err(f"job {job_id} cancelled")
        return 0
    if state == "failed":
        error = job.get("error") or {}
        code = f" ({error['code']})" if error.get("code") else ""
        raise Failed(f"job {job_id} failed{code}: {error.get('message') or 'no reason given'}")
    if state != "completed":
        raise Failed(
            f"job {job_id} is still {state or 'unknown'} after --wait-timeout; it goes on "
            f"(follow it: ourvidz jobs --watch; cancel it: ourvidz cancel {job_id})"
        )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for position, asset in enumerate(job.get("assets") or []):
        if not asset.get("url"):
            raise Failed(f"job {job_id}: asset {position} has no URL")
        dest = out_dir / asset_filename(job_id, asset, position)
        api.download(asset["url"], dest)
        out(str(dest))
    return 0


# --- listing ---------------------------------------------------------------------------------


def _items(answer: Any) -> list[dict[str, Any]]:
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict):
        for key in ("items", "job_types"):
            if isinstance(answer.get(key), list):
                return answer[key]
    return []


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _short(text: Any, limit: int = 48) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_jobs(answer: Any) -> str:
    """The table of a GET /v1/jobs answer, with a line naming the next page's
    token when there is one."""
    rows = [
        [
            str(j.get("id", "")),
            str(j.get("job_type", "")),
            _job_status(j),
            str(j.get("created_at", ""))[:19],
            _short(j.get("prompt")),
        ]
        for j in _items(answer)
    ]
    text = table(rows, ["ID", "TYPE", "STATE", "CREATED", "PROMPT"])
    token = answer.get("next_page_token") if isinstance(answer, dict) else None
    if token:
        text += f"\nmore: --page-token {token}"
    return text


def _job_status(job: dict[str, Any]) -> str:
    """The state, with the stage of a running job and the place of a queued one."""
    state = str(job.get("state") or "")
    stage = (job.get("progress") or {}).get("stage")
    if state == "running" and stage:
        return f"{state} ({stage})"
    queue = job.get("queue")
    if state == "queued" and queue:
        return f"{state} ({render_queue(queue, datetime.now(UTC))})"
    return state


def cmd_jobs(api: Api, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"page_size": args.limit}
    if args.state:
        params["state"] = args.state
    if args.type:
        params["job_type"] = args.type
    if args.page_token:
        params["page_token"] = args.page_token
    if args.watch:
        return watch_jobs(api, params)
    answer = api.request("GET", "/v1/jobs", params=params).json()
    out(json.dumps(answer, indent=2) if args.json else render_jobs(answer))
    return 0


def watch_jobs(
    api: Api, params: dict[str, Any], *, rounds: int | None = None, sleep=time.sleep
) -> int:
    """Redraw the job table every POLL_SECONDS until Ctrl-C (or after
    `rounds` tables). On a terminal the screen is cleared first; elsewhere
    the tables follow one another, each under the time it was read."""
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    drawn = 0
    try:
        while True:
            answer = api.request("GET", "/v1/jobs", params=params).json()
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            out(f"{clear}jobs at {stamp} UTC (every {POLL_SECONDS:g} s, Ctrl-C stops)")
            out(render_jobs(answer))
            drawn += 1
            if rounds is not None and drawn >= rounds:
                return 0
            sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return 0


def _availability(t: dict[str, Any]) -> str:
    """Whether a job of the type can run now, and why not (a job submitted
    meanwhile waits in the queue)."""
    if t.get("available", True):
        return "yes"
    reason = str(t.get("unavailable_reason") or "").strip()
    return f"no: {reason}" if reason else "no"


def cmd_job_types(api: Api, args: argparse.Namespace) -> int:
    answer = api.request("GET", "/v1/job-types").json()
    if args.json:
        out(json.dumps(answer, indent=2))
        return 0
    rows = []
    for t in _items(answer):
        size = f"{t.get('default_width', t.get('width', ''))}x{t.get('default_height', t.get('height', ''))}"
        rows.append(
            [
                str(t.get("job_type") or t.get("name") or ""),
                str(t.get("worker", "")),
                str(t.get("content_type") or t.get("output") or ""),
                size if size != "x" else "",
                str(t.get("steps", "")),
                _availability(t),
            ]
        )
    out(table(rows, ["JOB TYPE", "WORKER", "OUTPUT", "SIZE", "STEPS", "AVAILABLE"]))
    return 0


def cmd_rerun(api: Api, args: argparse.Namespace) -> int:
    """Submit a completed job again with exactly its recorded parameters (the
    server refuses when the model changed since). Prints the new job as JSON,
    or with --wait follows it and downloads its outputs as `generate` does."""
    key = args.idempotency_key or str(uuid.uuid4())
    job = api.request(
        "POST", f"/v1/jobs/{args.job_id}/rerun", headers={"Idempotency-Key": key}
    ).json()
    err(
        f"job {job['id']} ({job.get('job_type', '')}) {job.get('state', 'queued')}: "
        f"a re-run of {job.get('rerun_of') or args.job_id}"
    )
    if args.wait:
        return finish(api, job, args)
    out(json.dumps(job, indent=2))
    return 0


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    """Cancel a job: a queued one stops at once, a running one at its next step."""
    job = api.request("POST", f"/v1/jobs/{args.job_id}/cancel").json()
    job_id, state = job.get("id", args.job_id), job.get("state")
    if state == "cancelled":
        err(f"job {job_id} cancelled")
    else:
        err(f"job {job_id} is {state}: cancel asked, it stops at its next step")
    return 0


# --- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ourvidz",
        description="Client of an ourvidz gateway.",
        epilog="Operators: `ourvidz admin grant|revoke EMAIL` and `ourvidz admin list` make\n"
        "an existing account an admin (or a user again), with the database owner's\n"
        "DATABASE_URL; see `ourvidz admin --help`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("OURVIDZ_URL", DEFAULT_URL),
        help="gateway URL (default: %(default)s)",
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        default=None,
        help="token file (default: ~/.config/ourvidz/credentials.json)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, helptext in (("signup", "create an account and log in"), ("login", "log in")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("email")
        p.add_argument("--password", help="default: $OURVIDZ_PASSWORD, else a prompt")

    g = sub.add_parser("generate", help="submit a job, follow it, download its outputs")
    g.add_argument("prompt")
    g.add_argument(
        "--type",
        default="sdxl_image_fast",
        help="job type (see `ourvidz job-types`; default: %(default)s)",
    )
    g.add_argument("--num-images", type=int, help="1, 3 or 6 (SDXL)")
    g.add_argument("--seed", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--num-frames", type=int, help="video frames (WAN: 4k+1)")
    g.add_argument("--negative-prompt")
    g.add_argument("--destination", choices=("workspace", "library"))
    g.add_argument("--reference", help="a reference image file to upload and use")
    g.add_argument("--reference-type", choices=("style", "composition", "character"))
    g.add_argument("--reference-strength", type=float, help="0.1 to 1.0")
    _following(g)

    r = sub.add_parser(
        "rerun", help="re-run a completed job exactly (same model, prompt, seed and settings)"
    )
    r.add_argument("job_id")
    r.add_argument(
        "--wait", action="store_true", help="follow the new job and download its outputs"
    )
    _following(r)

    j = sub.add_parser("jobs", help="list your recent jobs, newest first")
    j.add_argument("--limit", type=int, default=20, help="jobs per page (default: %(default)s)")
    j.add_argument("--state", choices=JOB_STATES, help="only the jobs in this state")
    j.add_argument("--type", metavar="JOB_TYPE", help="only the jobs of this type (see job-types)")
    j.add_argument("--page-token", help="the next page, as a listing's `more:` line names it")
    shown = j.add_mutually_exclusive_group()
    shown.add_argument(
        "--watch",
        action="store_true",
        help=f"redraw the table every {POLL_SECONDS:g} s until Ctrl-C",
    )
    shown.add_argument("--json", action="store_true", help="print the raw answer")

    t = sub.add_parser("job-types", help="list the job types")
    t.add_argument("--json", action="store_true", help="print the raw answer")

    c = sub.add_parser("cancel", help="cancel a job")
    c.add_argument("job_id")
    return parser


def _following(p: argparse.ArgumentParser) -> None:
    """The options of a command that submits a job and may follow it."""
    p.add_argument("--idempotency-key", help="default: a new random one")
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        help="seconds to poll after the stream ends (default: %(default)s)",
    )
    p.add_argument("--out", default=".", help="folder for the outputs (default: the current one)")


COMMANDS = {
    "signup": cmd_signup,
    "login": cmd_login,
    "generate": cmd_generate,
    "rerun": cmd_rerun,
    "jobs": cmd_jobs,
    "job-types": cmd_job_types,
    "cancel": cmd_cancel,
}


def admin(argv: list[str]) -> int:
    """`ourvidz admin ...`: operator commands talk to the database, not to a
    gateway, so they run where the server package is installed (the service
    image: `python -m ourvidz.operator`, or a development checkout)."""
    try:
        from ourvidz import operator
    except ImportError:
        err(
            "error: `ourvidz admin` needs the ourvidz server package and the database owner's "
            "URL; run `python -m ourvidz.operator "
            + (" ".join(argv) or "--help")
            + "` where they are (e.g. kubectl -n ourvidz exec deploy/jobs -- ...)"
        )
        return 2
    return operator.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["admin"]:
        return admin(argv[1:])
    args = build_parser().parse_args(argv)
    store = CredentialStore(args.credentials or default_credentials_path())
    api = Api(args.url, store)
    try:
        return COMMANDS[args.command](api, args)
    except (ApiError, Failed, NotLoggedIn) as exc:
        err(f"error: {exc}")
        return 1
    except httpx.TransportError as exc:
        err(f"error: cannot reach {api.url}: {exc}")
        return 1
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    finally:
        api.close()


if __name__ == "__main__":
    sys.exit(main())
