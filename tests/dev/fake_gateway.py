"""A stand-in for the gateway's HTTP routes that the CLI uses, served by
uvicorn on a free port in a thread. It keeps what it was sent, so tests can
check the requests as well as the CLI's output. Like the gateway, every route
but sign-up, login, refresh and the signed files wants a bearer token, and a
bad field is a 422 whose detail repeats the field errors."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PNG = b"\x89PNG\r\n\x1a\n" + b"fake image "


def problem(status: int, title: str, detail: str = "", errors: list | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


@dataclass
class FakeGateway:
    password: str = "correct horse"
    # Access tokens that answer 401, as an expired one would.
    expired: set[str] = field(default_factory=set)
    jobs: dict[str, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, dict, Any]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    refreshes: int = 0
    # Break the first event stream after this many events (0: never).
    break_stream_after: int = 0
    # The places in line (jobs ahead) the next job is read at while queued,
    # one per read (its answer to the submit first); then it is dispatched,
    # then done. Empty: the server tells no place (the job is at once done).
    line: list[int] = field(default_factory=list)
    # The state new jobs end in ("cancelled": as if the user cancelled them);
    # a "doomed" job fails whatever this says.
    outcome: str = "completed"
    # Reads of a queued job still to answer: the job's queue estimates.
    queued_reads: dict[str, list[dict]] = field(default_factory=dict)
    url: str = ""

    # -- helpers -------------------------------------------------------------------

    def tokens(self, email: str) -> dict:
        return {
            "user": {"id": "u-1", "email": email},
            "access_token": f"acc-{uuid.uuid4().hex}",
            "refresh_token": f"ref-{uuid.uuid4().hex}",
            "token_type": "bearer",
            "expires_in": 900,
        }

    def authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer acc-") and header[7:] not in self.expired

    def record(self, request: Request, body: Any) -> None:
        self.requests.append((request.method, request.url.path, dict(request.headers), body))

    # -- routes --------------------------------------------------------------------

    async def signup(self, request: Request) -> Response:
        body = await request.json()
        self.record(request, body)
        # Like the gateway: the same answer for a free and a taken address, no tokens.
        return JSONResponse(
            {"status": "accepted", "detail": "If this address can be used, the account is ready."},
            status_code=202,
        )

    async def login(self, request: Request) -> Response:
        body = await request.json()
        self.record(request, body)
        if body.get("password") != self.password:
            return problem(401, "Unauthorized", "wrong email or password")
        return JSONResponse(self.tokens(body["email"]))

    async def refresh(self, request: Request) -> Response:
        body = await request.json()
        self.record(request, body)
        self.refreshes += 1
        if not str(body.get("refresh_token", "")).startswith("ref-"):
            return problem(401, "Unauthorized", "bad refresh token")
        return JSONResponse(self.tokens("someone@example.com"))

    async def upload(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        form = await request.form()
        data = await form["file"].read()
        self.record(request, {"file": data})
        upload_id = f"up-{len(self.uploads) + 1}"
        self.uploads[upload_id] = data
        return JSONResponse(
            {"id": upload_id, "content_type": "image/png", "width": 64, "height": 64},
            status_code=201,
        )

    async def create_job(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        body = await request.json()
        self.record(request, body)
        if body.get("job_type") not in ("sdxl_image_fast", "doomed"):
            message = f"unknown job type {body.get('job_type')!r}"
            return problem(
                422,
                "Unprocessable Entity",
                f"job_type: {message}",
                [{"field": "job_type", "message": message}],
            )
        job = self.store_job(
            body["job_type"], body["prompt"], body.get("seed"), body.get("num_images", 1)
        )
        return JSONResponse(self.queued(job), status_code=202)

    def queued(self, job: dict) -> dict:
        """The job as a submit answers it: queued, with its place in line
        when `line` gives one (its later reads then take the next places)."""
        self.queued_reads[job["id"]] = [self.estimate(ahead) for ahead in self.line]
        if self.line:
            self.queued_reads[job["id"]].append({"position": 0, "dispatched": True})
        self.line = []
        return self.read_queued(job)

    def read_queued(self, job: dict) -> dict:
        """The job as read while queued: the next of its places, if any."""
        reads = self.queued_reads.get(job["id"])
        return {
            **job,
            "state": "queued",
            "assets": [],
            "progress": {"step": 0, "total": 0, "stage": None},
            "queue": reads.pop(0) if reads else None,
        }

    @staticmethod
    def estimate(ahead: int) -> dict:
        # A start far enough ahead to read the same however long a test runs.
        start = datetime.now(UTC) + timedelta(minutes=10, seconds=20)
        return {
            "position": ahead,
            "dispatched": False,
            "estimated_start_at": start.isoformat().replace("+00:00", "Z"),
        }

    def store_job(self, job_type: str, prompt: str, seed: Any, n: int, **extra: Any) -> dict:
        """A new job as it will be once it ran (a "doomed" one fails)."""
        job_id = f"job{len(self.jobs) + 1}"
        failed = job_type == "doomed"
        state = "failed" if failed else self.outcome
        self.jobs[job_id] = {
            "id": job_id,
            "job_type": job_type,
            "state": state,
            "prompt": prompt,
            "seed": seed,
            "num_images": n,
            "progress": {"step": 4, "total": 4, "stage": "uploading"},
            "queue": None,
            "assets": []
            if state != "completed"
            else [
                {
                    "index": i,
                    "content_type": "image/png",
                    "url": f"{self.url}/files/{job_id}_{i}.png?sig=x",
                }
                for i in range(n)
            ],
            "error": {"code": "internal", "message": "the worker ran out of memory"}
            if failed
            else None,
            "created_at": "2025-01-01T00:00:00Z",
            **extra,
        }
        return self.jobs[job_id]

    async def rerun(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        self.record(request, None)
        source = self.jobs.get(request.path_params["job_id"])
        if source is None:
            return problem(404, "Not found", "job not found")
        if source["state"] != "completed":
            detail = f"only a completed job can be re-run; this one is {source['state']}"
            return problem(409, "Conflict", detail)
        job = self.store_job(
            source["job_type"],
            source["prompt"],
            source["seed"],
            source["num_images"],
            rerun_of=source["id"],
        )
        return JSONResponse(self.queued(job), status_code=202)

    async def get_job(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            return problem(404, "Not found")
        self.record(request, None)
        queued = bool(self.queued_reads.get(job["id"]))
        return JSONResponse(self.read_queued(job) if queued else job)

    async def list_jobs(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        query = dict(request.query_params)
        self.record(request, query)
        items = [
            job
            for job in self.jobs.values()
            if query.get("state", job["state"]) == job["state"]
            and query.get("job_type", job["job_type"]) == job["job_type"]
        ]
        return JSONResponse({"items": items, "next_page_token": ""})

    async def events(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        job = self.jobs[request.path_params["job_id"]]
        self.record(request, None)
        start = int(request.headers.get("last-event-id", "0"))
        history = [("state", {"state": "queued"}), ("state", {"state": "running"})]
        history += [
            ("progress", {"state": "running", "step": s, "total": 4, "stage": "denoising"})
            for s in range(1, 5)
        ]
        history += [
            ("progress", {"state": "running", "step": 4, "total": 4, "stage": stage})
            for stage in ("decoding", "uploading")
        ]
        history.append((job["state"], {"state": job["state"]}))
        cut = self.break_stream_after
        self.break_stream_after = 0

        async def stream():
            yield ": hello\n\n"
            for seq, (name, data) in enumerate(history, start=1):
                if seq <= start:
                    continue
                if cut and seq > cut:
                    return  # the connection drops before the job ends
                payload = json.dumps({"job_id": job["id"], **data})
                # Split an event across writes, as a network may.
                yield f"id: {seq}\nevent: {name}\n"
                yield f"data: {payload}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def cancel(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized")
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            return problem(404, "Not found", "no such job")
        self.record(request, None)
        job["state"] = "cancelled"
        return JSONResponse(job)

    async def job_types(self, request: Request) -> Response:
        if not self.authorised(request):
            return problem(401, "Unauthorized", "missing bearer token")
        self.record(request, None)
        return JSONResponse(
            {
                "items": [
                    {
                        "name": "sdxl_image_fast",
                        "worker": "sdxl",
                        "content_type": "image/png",
                        "default_width": 1024,
                        "default_height": 1024,
                        "steps": 15,
                        "expected_seconds": 5,
                        "available": True,
                        "unavailable_reason": "",
                    },
                    {
                        "name": "video_fast",
                        "worker": "wan",
                        "content_type": "video/mp4",
                        "default_width": 832,
                        "default_height": 480,
                        "steps": 25,
                        "expected_seconds": 25,
                        "available": False,
                        "unavailable_reason": "no wan worker is running",
                    },
                ]
            }
        )

    async def file(self, request: Request) -> Response:
        # A signed URL carries its own credential: an Authorization header is an error (as on S3).
        if "authorization" in request.headers:
            return problem(400, "Bad request", "a signed URL takes no Authorization header")
        return Response(PNG + request.path_params["name"].encode(), media_type="image/png")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/auth/signup", self.signup, methods=["POST"]),
                Route("/v1/auth/login", self.login, methods=["POST"]),
                Route("/v1/auth/refresh", self.refresh, methods=["POST"]),
                Route("/v1/uploads", self.upload, methods=["POST"]),
                Route("/v1/jobs", self.create_job, methods=["POST"]),
                Route("/v1/jobs", self.list_jobs, methods=["GET"]),
                Route("/v1/jobs/{job_id}", self.get_job, methods=["GET"]),
                Route("/v1/jobs/{job_id}/cancel", self.cancel, methods=["POST"]),
                Route("/v1/jobs/{job_id}/rerun", self.rerun, methods=["POST"]),
                Route("/v1/jobs/{job_id}/events", self.events, methods=["GET"]),
                Route("/v1/job-types", self.job_types, methods=["GET"]),
                Route("/files/{name}", self.file, methods=["GET"]),
            ]
        )


class Served:
    """uvicorn in a thread, on a free port."""

    def __init__(self, gateway: FakeGateway) -> None:
        config = uvicorn.Config(
            gateway.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the fake gateway did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        gateway.url = self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
