"""A walk of every method of every gRPC service the mesh serves, straight to
the running servers (no gateway in between), from the generated descriptors.

For each method: no token, a token of nobody's key, a refresh token and an
expired token are UNAUTHENTICATED;
each role the method does not take is PERMISSION_DENIED; user B (and an
admin, who is a user with more rights, not another user's owner) with user
A's ids is NOT_FOUND or PERMISSION_DENIED, and a listing B may call shows
none of A's ids; an empty and a garbage request from a role the method takes
are INVALID_ARGUMENT or NOT_FOUND (or served, where the method has nothing to
refuse). Nothing is ever INTERNAL or UNKNOWN. Server streams are opened and
read up to their first message or their error.

METHODS classifies every method; one it does not know fails
`test_every_method_is_classified`, so a new method is probed once it is."""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import httpx
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

import ourvidz.v1
from ourvidz.v1 import enhancer_service_pb2 as enh
from ourvidz.v1 import job_pb2
from ourvidz.v1 import job_service_pb2 as jobs
from ourvidz.v1 import workspace_service_pb2 as ws
from tests.security.conftest import (
    World,
    a_keeps_everything,
    png_bytes,
    refused_tokens,
    service_token,
    signup,
)

Code = grpc.StatusCode
USERS = ("user", "admin")  # a user's own data; an admin is a user here
WORKER = ("worker",)
ADMIN = ("admin",)
ANYONE = ("user", "admin", "worker")

REFUSED = frozenset({Code.INVALID_ARGUMENT, Code.NOT_FOUND})
SERVED_OR_REFUSED = REFUSED | {Code.OK}
NOT_YOURS = frozenset({Code.NOT_FOUND, Code.PERMISSION_DENIED})
NEVER = frozenset({Code.INTERNAL, Code.UNKNOWN, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})
# A bound on one call: a stream that neither sends nor fails is a failure.
CALL_SECONDS = 60


@dataclass(frozen=True)
class Method:
    roles: tuple[str, ...]
    # Requests naming A's resources (with the tokens of page listings of A's);
    # None: the method names no resource of a user's.
    foreign: Callable[[World, dict], list[Message]] | None = None
    # What B and an admin may get for `foreign`. OK only where the method is
    # their own listing or creation (its answer is checked for A's ids).
    foreign_codes: frozenset[Code] = NOT_YOURS
    empty: frozenset[Code] = REFUSED
    garbage: frozenset[Code] = REFUSED
    # For role checks: a request that is valid but for the role.
    probe: Callable[[World, dict], Message] | None = None


def _spec(**extra) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        job_type="sdxl_image_fast",
        prompt="a walk along the boundary",
        num_images=1,
        width=128,
        height=128,
        **extra,
    )


J = "ourvidz.v1.JobService"
W = "ourvidz.v1.WorkspaceService"
E = "ourvidz.v1.EnhancerService"
G = "ourvidz.v1.WorkerService"

METHODS: dict[str, Method] = {
    # --- JobService: a user's own jobs
    f"{J}/ListJobTypes": Method(ANYONE, empty=frozenset({Code.OK}), garbage=frozenset({Code.OK})),
    f"{J}/CreateJob": Method(
        USERS,
        foreign=lambda w, t: [
            jobs.CreateJobRequest(
                job=_spec(
                    destination=job_pb2.DESTINATION_LIBRARY,
                    reference_image_id=w.upload_id,
                    reference_type=job_pb2.REFERENCE_TYPE_STYLE,
                )
            )
        ],
        # An upload that is not the caller's names a bad field.
        foreign_codes=NOT_YOURS | {Code.INVALID_ARGUMENT},
    ),
    f"{J}/GetJob": Method(USERS, foreign=lambda w, t: [jobs.GetJobRequest(job_id=w.job_id)]),
    f"{J}/ListJobs": Method(
        USERS,
        foreign=lambda w, t: [jobs.ListJobsRequest(page_token=t["jobs"])],
        foreign_codes=frozenset({Code.OK, Code.INVALID_ARGUMENT}),
        empty=frozenset({Code.OK}),
    ),
    f"{J}/CancelJob": Method(
        USERS,
        foreign=lambda w, t: [
            jobs.CancelJobRequest(job_id=w.job_id),
            jobs.CancelJobRequest(job_id=w.cancelled_job_id),
        ],
    ),
    f"{J}/WatchJob": Method(USERS, foreign=lambda w, t: [jobs.WatchJobRequest(job_id=w.job_id)]),
    f"{J}/RerunJob": Method(
        USERS,
        foreign=lambda w, t: [
            jobs.RerunJobRequest(job_id=w.job_id),
            jobs.RerunJobRequest(job_id=w.job_id, workspace_session_id=w.session_id),
        ],
    ),
    # --- JobService: workers only
    f"{J}/StartJob": Method(WORKER, probe=lambda w, t: jobs.StartJobRequest(job_id=w.job_id)),
    f"{J}/ReportProgress": Method(
        WORKER, probe=lambda w, t: jobs.ReportProgressRequest(job_id=w.job_id)
    ),
    f"{J}/CompleteJob": Method(WORKER, probe=lambda w, t: jobs.CompleteJobRequest(job_id=w.job_id)),
    f"{J}/FailJob": Method(WORKER, probe=lambda w, t: jobs.FailJobRequest(job_id=w.job_id)),
    f"{J}/Heartbeat": Method(WORKER, probe=lambda w, t: jobs.HeartbeatRequest(job_id=w.job_id)),
    f"{J}/CompleteEnhancement": Method(
        WORKER, probe=lambda w, t: jobs.CompleteEnhancementRequest(job_id=w.job_id)
    ),
    # --- WorkspaceService: a user's own sessions, items, library and uploads
    f"{W}/CreateSession": Method(
        USERS,
        empty=frozenset({Code.OK}),
        garbage=SERVED_OR_REFUSED,
        probe=lambda w, t: ws.CreateSessionRequest(name="b's own"),
    ),
    f"{W}/GetSession": Method(
        USERS, foreign=lambda w, t: [ws.GetSessionRequest(session_id=w.session_id)]
    ),
    f"{W}/GetActiveSession": Method(
        USERS, empty=frozenset({Code.OK}), garbage=frozenset({Code.OK})
    ),
    f"{W}/ListSessions": Method(
        USERS,
        foreign=lambda w, t: [ws.ListSessionsRequest(page_token=t["sessions"])],
        foreign_codes=frozenset({Code.OK, Code.INVALID_ARGUMENT}),
        empty=frozenset({Code.OK}),
    ),
    f"{W}/ClearSession": Method(
        USERS,
        foreign=lambda w, t: [
            ws.ClearSessionRequest(session_id=w.session_id),
            ws.ClearSessionRequest(session_id=w.other_session_id),
        ],
    ),
    f"{W}/ListSessionItems": Method(
        USERS,
        foreign=lambda w, t: [
            ws.ListSessionItemsRequest(session_id=w.session_id),
            ws.ListSessionItemsRequest(session_id=w.session_id, page_token=t["items"]),
        ],
    ),
    f"{W}/WatchSession": Method(
        USERS, foreign=lambda w, t: [ws.WatchSessionRequest(session_id=w.session_id)]
    ),
    f"{W}/SaveItem": Method(
        USERS, foreign=lambda w, t: [ws.SaveItemRequest(item_id=w.item_ids[2], title="mine now")]
    ),
    f"{W}/DeleteItem": Method(
        USERS, foreign=lambda w, t: [ws.DeleteItemRequest(item_id=i) for i in w.item_ids]
    ),
    f"{W}/ListAssets": Method(
        USERS,
        foreign=lambda w, t: [ws.ListAssetsRequest(page_token=t["assets"])],
        foreign_codes=frozenset({Code.OK, Code.INVALID_ARGUMENT}),
        empty=frozenset({Code.OK}),
    ),
    f"{W}/GetAsset": Method(
        USERS, foreign=lambda w, t: [ws.GetAssetRequest(asset_id=i) for i in w.asset_ids]
    ),
    f"{W}/UpdateAsset": Method(
        USERS,
        foreign=lambda w, t: [ws.UpdateAssetRequest(asset_id=w.asset_ids[0], title="mine now")],
    ),
    f"{W}/DeleteAsset": Method(
        USERS, foreign=lambda w, t: [ws.DeleteAssetRequest(asset_id=i) for i in w.asset_ids]
    ),
    f"{W}/CreateUpload": Method(
        USERS, probe=lambda w, t: ws.CreateUploadRequest(data=png_bytes(), filename="b.png")
    ),
    f"{W}/GetUpload": Method(
        USERS, foreign=lambda w, t: [ws.GetUploadRequest(upload_id=w.upload_id)]
    ),
    # --- EnhancerService: users enhance, chat and rate their own jobs
    f"{E}/EnhancePrompt": Method(
        USERS,
        probe=lambda w, t: enh.EnhancePromptRequest(
            prompt="a red fox",
            target_model="sdxl",
            settings=enh.GenerationSettings(max_new_tokens=4),
        ),
    ),
    f"{E}/Chat": Method(
        USERS,
        probe=lambda w, t: enh.ChatRequest(
            messages=[enh.ChatMessage(role="user", content="hi")],
            settings=enh.GenerationSettings(max_new_tokens=2),
        ),
    ),
    f"{E}/RateEnhancement": Method(
        USERS, foreign=lambda w, t: [enh.RateEnhancementRequest(job_id=w.job_id, rating=1)]
    ),
    # --- EnhancerService: admins only
    f"{E}/ListPromptTemplates": Method(ADMIN, empty=frozenset({Code.OK})),
    f"{E}/GetPromptTemplate": Method(
        ADMIN, probe=lambda w, t: enh.GetPromptTemplateRequest(template_id=w.template_id)
    ),
    f"{E}/CreatePromptTemplate": Method(
        ADMIN,
        probe=lambda w, t: enh.CreatePromptTemplateRequest(
            template=enh.PromptTemplate(
                name=f"walk-{uuid.uuid4().hex[:8]}", target_model="wan", system_prompt="More."
            )
        ),
    ),
    f"{E}/UpdatePromptTemplate": Method(
        ADMIN,
        probe=lambda w, t: enh.UpdatePromptTemplateRequest(
            template_id=w.template_id, system_prompt="Taken over."
        ),
    ),
    f"{E}/ActivatePromptTemplate": Method(
        ADMIN, probe=lambda w, t: enh.ActivatePromptTemplateRequest(template_id=w.template_id)
    ),
    f"{E}/TestPromptTemplate": Method(
        ADMIN,
        probe=lambda w, t: enh.TestPromptTemplateRequest(
            template_id=w.template_id,
            sample_prompts=["a fox"],
            settings=enh.GenerationSettings(max_new_tokens=4),
        ),
    ),
    f"{E}/ListPromptTests": Method(
        ADMIN,
        probe=lambda w, t: enh.ListPromptTestsRequest(template_id=w.template_id),
        # No template: the latest tests of every template.
        empty=frozenset({Code.OK}),
    ),
    f"{E}/GetPromptTemplateStats": Method(
        ADMIN, probe=lambda w, t: enh.GetPromptTemplateStatsRequest(template_id=w.template_id)
    ),
    # --- WorkerService (each generation worker): operators and workers
    f"{G}/GetWorkerInfo": Method(
        ("admin", "worker"), empty=frozenset({Code.OK}), garbage=frozenset({Code.OK})
    ),
}


def descriptor_methods() -> dict[str, MethodDescriptor]:
    """'<service full name>/<method>' -> descriptor, of every generated module."""
    out = {}
    for module in pkgutil.iter_modules(ourvidz.v1.__path__):
        if not module.name.endswith("_pb2"):
            continue
        pb2 = importlib.import_module(f"ourvidz.v1.{module.name}")
        for service in pb2.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out[f"{service.full_name}/{method.name}"] = method
    return out


def server_port(stack, service: str) -> int:
    ports = {
        J: stack.jobs.port,
        W: stack.workspace.port,
        E: stack.enhancer.port,
        G: stack.sdxl.port,
    }
    assert service in ports, f"no server in the stack serves {service}: add it to server_port"
    return ports[service]


def test_every_method_is_classified():
    found = set(descriptor_methods())
    classified = set(METHODS)
    assert not found - classified, (
        f"methods METHODS does not classify: {sorted(found - classified)}"
    )
    assert not classified - found, f"METHODS names methods no service has: {classified - found}"


BAD_TEXT = "\x00not-an-id' OR '1'='1 \u202e"


def bad_value(f: FieldDescriptor):
    """A value of `f`'s type that a client should not send: an id that is no
    id with a NUL and control characters, a number at its type's extreme, an
    unknown enum value, bytes that are no image."""
    if f.type == FieldDescriptor.TYPE_STRING:
        return BAD_TEXT
    if f.type == FieldDescriptor.TYPE_BYTES:
        return b"\x89PNG\r\n\x1a\n not an image"
    if f.type == FieldDescriptor.TYPE_BOOL:
        return True
    if f.type == FieldDescriptor.TYPE_ENUM:
        return 999
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return float("nan")
    if f.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 2**32 - 1
    if f.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**64 - 1
    if f.type in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return -(2**63)
    return -(2**31)


def _is_timestamp(message_type) -> bool:
    return message_type.full_name == "google.protobuf.Timestamp"


def _set_bad(message: Message, f: FieldDescriptor) -> None:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        target = getattr(message, f.name)
        target = target.add() if f.is_repeated else target
        if _is_timestamp(f.message_type):
            target.seconds = -(10**12)  # year -29719: no datetime holds it
        return
    if f.is_repeated:
        getattr(message, f.name).append(bad_value(f))
    else:
        setattr(message, f.name, bad_value(f))


def garbage(message: Message, depth: int = 0) -> Message:
    """`message` with every field set to a bad value (nested ones too)."""
    for f in message.DESCRIPTOR.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE and not _is_timestamp(f.message_type):
            if depth < 3:
                target = getattr(message, f.name)
                garbage(target.add() if f.is_repeated else target, depth + 1)
            continue
        _set_bad(message, f)
    return message


def field_paths(descriptor, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    """The paths of every leaf field (scalars and Timestamps) of a message type."""
    out = []
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE and not _is_timestamp(f.message_type):
            if depth < 3:
                out += field_paths(f.message_type, (*prefix, f), depth + 1)
        else:
            out.append((*prefix, f))
    return out


def one_bad_field(base: Message, path: tuple) -> Message:
    """A copy of `base` with only the field at `path` set to a bad value."""
    message = type(base)()
    message.CopyFrom(base)
    target = message
    for f in path[:-1]:
        target = getattr(target, f.name)
        if f.is_repeated:
            target = target[0] if len(target) else target.add()
    leaf = path[-1]
    if leaf.containing_oneof is None and not leaf.is_repeated and leaf.has_presence:
        target.ClearField(leaf.name)
    if leaf.is_repeated:
        target.ClearField(leaf.name)
    _set_bad(target, leaf)
    return message


@dataclass
class Outcome:
    code: Code
    text: str
    first: Message | None = field(default=None)


async def invoke(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message, token: str | None
) -> Outcome:
    """One call; of a server stream, its first message or its error."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    output = message_factory.GetMessageClass(method.output_type)
    kwargs = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": output.FromString,
    }
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    if method.server_streaming:
        call = channel.unary_stream(path, **kwargs)(
            request, metadata=metadata, timeout=CALL_SECONDS
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return Outcome(exc.code(), f"{exc.details()} {exc.trailing_metadata()}")
        finally:
            call.cancel()
        if first is grpc.aio.EOF:
            return Outcome(Code.OK, "")
        return Outcome(Code.OK, str(first), first)
    try:
        reply = await channel.unary_unary(path, **kwargs)(
            request, metadata=metadata, timeout=CALL_SECONDS
        )
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), f"{exc.details()} {exc.trailing_metadata()}")
    return Outcome(Code.OK, str(reply), reply)


async def page_tokens(stack, world: World) -> dict[str, str]:
    """A's tokens for the second page of A's listings."""
    listings = {
        "jobs": (J, "ListJobs", jobs.ListJobsRequest(page_size=1)),
        "sessions": (W, "ListSessions", ws.ListSessionsRequest(page_size=1)),
        "assets": (W, "ListAssets", ws.ListAssetsRequest(page_size=1)),
        "items": (
            W,
            "ListSessionItems",
            ws.ListSessionItemsRequest(session_id=world.session_id, page_size=1),
        ),
    }
    out = {}
    for key, (service, name, request) in listings.items():
        method = descriptor_methods()[f"{service}/{name}"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server_port(stack, service)}") as chan:
            outcome = await invoke(chan, method, request, world.a.token)
        assert outcome.code == Code.OK, outcome.text
        out[key] = outcome.first.next_page_token
    assert all(out.values()), f"A's listings need two pages for the walk: {out}"
    return out


@pytest.fixture(scope="module")
async def tokens_of_a(stack, world) -> dict[str, str]:
    return await page_tokens(stack, world)


def _params(keep=lambda rule: True):
    return [
        pytest.param(name, id=name.removeprefix("ourvidz.v1."))
        for name, rule in METHODS.items()
        if keep(rule)
    ]


def check(
    world: World,
    who: str,
    name: str,
    request: Message,
    outcome: Outcome,
    allowed,
    sent: str | None = None,
) -> None:
    where = f"{who}: {name}({str(request).strip()!r})"
    assert outcome.code not in NEVER, f"{where} -> {outcome.code.name} {outcome.text[:300]}"
    assert outcome.code in allowed, (
        f"{where} -> {outcome.code.name}, expected {sorted(c.name for c in allowed)}: "
        f"{outcome.text[:300]}"
    )
    leaks = world.leaks(outcome.text, str(request) if sent is None else sent)
    assert not leaks, f"{where} -> {outcome.code.name} shows {leaks}"
    assert "Traceback" not in outcome.text, where


@pytest.mark.parametrize("name", _params())
async def test_walk_method(stack, world, tokens_of_a, name):
    full_name = name
    rule = METHODS[name]
    method = descriptor_methods()[full_name]
    service = method.containing_service.full_name
    request_cls = message_factory.GetMessageClass(method.input_type)
    tokens = {
        "user": world.b.token,
        "admin": world.admin_token,
        "worker": service_token(stack, "worker"),
    }
    foreign = rule.foreign(world, tokens_of_a) if rule.foreign else []
    probe = rule.probe(world, tokens_of_a) if rule.probe else None
    role_probe = probe or (foreign[0] if foreign else request_cls())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server_port(stack, service)}") as chan:
        for who, token in [("no token", None), *refused_tokens(stack, world)]:
            outcome = await invoke(chan, method, role_probe, token)
            check(world, who, full_name, role_probe, outcome, {Code.UNAUTHENTICATED})
        for role, token in tokens.items():
            if role not in rule.roles:
                outcome = await invoke(chan, method, role_probe, token)
                check(world, role, full_name, role_probe, outcome, {Code.PERMISSION_DENIED})
        for role in ("user", "admin"):
            if role not in rule.roles:
                continue
            who = "B" if role == "user" else "an admin"
            for request in foreign:
                outcome = await invoke(chan, method, request, tokens[role])
                check(world, who, full_name, request, outcome, rule.foreign_codes)
        allowed_role = tokens[rule.roles[0]]
        outcome = await invoke(chan, method, request_cls(), allowed_role)
        check(world, rule.roles[0], full_name, request_cls(), outcome, rule.empty)
        bad = garbage(request_cls())
        outcome = await invoke(chan, method, bad, allowed_role)
        check(world, rule.roles[0], full_name, bad, outcome, rule.garbage)


# What a method may answer to one bad field in an otherwise good request.
ONE_BAD_FIELD = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.OUT_OF_RANGE,
        Code.ALREADY_EXISTS,
    }
)


@pytest.mark.parametrize("name", _params(lambda rule: rule.roles != WORKER))
async def test_one_bad_field_at_a_time(stack, world, tokens_of_a, name):
    """The owner's own good request with one field made bad, field by field:
    refused or served, never INTERNAL or UNKNOWN (a value the database cannot
    hold, a time no datetime holds, ...)."""
    rule = METHODS[name]
    method = descriptor_methods()[name]
    request_cls = message_factory.GetMessageClass(method.input_type)
    if rule.foreign:
        base, token = rule.foreign(world, tokens_of_a)[0], world.a.token
    else:
        base = rule.probe(world, tokens_of_a) if rule.probe else request_cls()
        token = world.admin_token if rule.roles == ADMIN else world.b.token
    paths = field_paths(method.input_type)
    port = server_port(stack, method.containing_service.full_name)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        for path in paths:
            request = one_bad_field(base, path)
            outcome = await invoke(chan, method, request, token)
            # A's own answers are A's to see; B's and the admin's hold nothing of A's.
            seen = str(world.markers()) if rule.foreign else str(request)
            who = "A" if rule.foreign else rule.roles[0]
            check(world, who, name, request, outcome, ONE_BAD_FIELD, sent=seen)


async def test_create_job_refuses_a_foreign_session(stack):
    """Straight to Jobs, past the gateway's own check. With users of its own:
    a job accepted here would file into the victim's session."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        victim, attacker = await signup(http), await signup(http)
        session = await http.post("/v1/workspace/sessions", headers=victim.headers, json={})
        assert session.status_code == 201, session.text
    request = jobs.CreateJobRequest(
        job=_spec(
            destination=job_pb2.DESTINATION_WORKSPACE, workspace_session_id=session.json()["id"]
        )
    )
    method = descriptor_methods()[f"{J}/CreateJob"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.jobs.port}") as chan:
        outcome = await invoke(chan, method, request, attacker.token)
        if outcome.code == Code.OK:  # stop it before it files anything
            cancel = descriptor_methods()[f"{J}/CancelJob"]
            await invoke(
                chan, cancel, jobs.CancelJobRequest(job_id=outcome.first.job.id), attacker.token
            )
    assert outcome.code in (Code.NOT_FOUND, Code.INVALID_ARGUMENT), outcome.code.name


async def test_a_keeps_everything_after_the_walk(stack, world):
    await a_keeps_everything(stack, world)
