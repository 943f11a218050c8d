"""A cross-tenant walk of every operation in the gateway's OpenAPI document.

Each operation is called with user A's ids filled into its path, query,
headers and body: without a token, with refused tokens, as user B and as an
admin. B never gets A's data (2xx only on B's own listings and creations, and
then without A's ids); nothing answers 5xx, or without nosniff; every
operation that takes a token answers 401 without one (and to a worker's, a
refresh, an expired or a forged token); admin operations answer 403 to a user.

RULES classifies every operation by its id. A new route is probed without
anyone remembering to: the document's operations and the table must match,
so an operation the table does not know fails `test_every_operation_is_classified`
until it is classified here."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.security.conftest import (
    PASSWORD,
    World,
    a_keeps_everything,
    bearer,
    png_bytes,
    refused_tokens,
    service_token,
)

PUBLIC = "public"  # no token: anyone may call it
USER = "user"  # a user's (or admin's) token
ADMIN = "admin"  # an admin's token; a user gets 403
SIGNED = "signed"  # no token: a signed URL's query authorises it

# A user's own listing or a creation of their own: 2xx, checked for A's ids.
OWN = frozenset({200, 201, 202})
# Another user's resource: a 404 that does not confirm it exists.
FOREIGN = frozenset({404})


@dataclass(frozen=True)
class Rule:
    auth: str
    # What B (and on user routes an admin) may get with A's ids filled in.
    as_b: frozenset[int]
    # Bodies B sends (each one a probe); None: the operation takes no body.
    bodies: Callable[[World], list[dict]] | None = None
    # A multipart upload of a small PNG instead of a JSON body.
    upload: bool = False
    # Query parameters B sends, beyond A's page token where the operation pages.
    query: Callable[[World], dict] = field(default=lambda w: {})


def _job(w: World, **extra) -> dict:
    return {
        "job_type": "sdxl_image_fast",
        "prompt": "a walk along the boundary",
        "num_images": 1,
        "width": 128,
        "height": 128,
        **extra,
    }


def _template(w: World) -> list[dict]:
    name = f"walk-{uuid.uuid4().hex[:8]}"
    return [{"name": name, "target_model": "sdxl", "system_prompt": "More detail."}]


def _signed_elsewhere(w: World) -> dict:
    """The signature of A's *other* download link: it must not open this one."""
    query = parse_qs(urlsplit(w.other_file_url).query)
    return {"expires": query["expires"][0], "sig": query["sig"][0]}


RULES: dict[str, Rule] = {
    # --- identity
    "signup_v1_auth_signup_post": Rule(
        PUBLIC,
        # A taken address: answered as a free one (test_signup_does_not_tell_a_taken_address).
        frozenset({202}),
        bodies=lambda w: [{"email": w.a.email, "password": PASSWORD + " other"}],
    ),
    "login_v1_auth_login_post": Rule(
        PUBLIC,
        frozenset({401}),
        bodies=lambda w: [{"email": w.a.email, "password": PASSWORD + " wrong"}],
    ),
    "refresh_v1_auth_refresh_post": Rule(
        PUBLIC,
        frozenset({401}),
        # A's access token is no refresh token; B's own refresh is B's business.
        bodies=lambda w: [{"refresh_token": w.a.token}],
    ),
    "me_v1_me_get": Rule(USER, OWN),
    # --- jobs
    "job_types_v1_job_types_get": Rule(USER, OWN),
    "create_job_v1_jobs_post": Rule(
        USER,
        frozenset({404, 422}),
        bodies=lambda w: [
            _job(w, workspace_session_id=w.session_id),
            _job(
                w,
                destination="library",
                reference_image_id=w.upload_id,
                reference_type="style",
            ),
        ],
    ),
    "list_jobs_v1_jobs_get": Rule(USER, OWN),
    "get_job_v1_jobs__job_id__get": Rule(USER, FOREIGN),
    "cancel_job_v1_jobs__job_id__cancel_post": Rule(USER, FOREIGN),
    "rerun_job_v1_jobs__job_id__rerun_post": Rule(
        USER, FOREIGN, bodies=lambda w: [{}, {"workspace_session_id": w.session_id}]
    ),
    "job_events_v1_jobs__job_id__events_get": Rule(USER, FOREIGN),
    "rate_job_v1_jobs__job_id__rating_put": Rule(USER, FOREIGN, bodies=lambda w: [{"rating": 1}]),
    # --- prompts and the playground: B's own, nothing of A's in them
    "enhance_prompt_v1_prompts_enhance_post": Rule(
        USER,
        OWN,
        bodies=lambda w: [{"prompt": "a red fox", "target_model": "sdxl", "max_new_tokens": 8}],
    ),
    "chat_v1_playground_chat_post": Rule(
        USER,
        OWN,
        bodies=lambda w: [{"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 4}],
    ),
    # --- admin
    "list_templates_v1_admin_prompt_templates_get": Rule(ADMIN, frozenset({403})),
    "create_template_v1_admin_prompt_templates_post": Rule(
        ADMIN, frozenset({403}), bodies=_template
    ),
    "get_template_v1_admin_prompt_templates__template_id__get": Rule(ADMIN, frozenset({403})),
    "update_template_v1_admin_prompt_templates__template_id__versions_post": Rule(
        ADMIN, frozenset({403}), bodies=lambda w: [{"system_prompt": "Taken over."}]
    ),
    "activate_template_v1_admin_prompt_templates__template_id__activate_post": Rule(
        ADMIN, frozenset({403})
    ),
    "test_template_v1_admin_prompt_templates__template_id__tests_post": Rule(
        ADMIN,
        frozenset({403}),
        bodies=lambda w: [{"sample_prompts": ["a fox"], "settings": {"max_new_tokens": 4}}],
    ),
    "list_template_tests_v1_admin_prompt_templates__template_id__tests_get": Rule(
        ADMIN, frozenset({403})
    ),
    "template_stats_v1_admin_prompt_templates__template_id__stats_get": Rule(
        ADMIN, frozenset({403})
    ),
    "queues_v1_admin_queues_get": Rule(ADMIN, frozenset({403})),
    "workers_v1_admin_workers_get": Rule(ADMIN, frozenset({403})),
    # --- uploads, workspace, library
    "create_upload_v1_uploads_post": Rule(USER, OWN, upload=True),
    "create_session_v1_workspace_sessions_post": Rule(
        USER, OWN, bodies=lambda w: [{"name": "b's own"}]
    ),
    "list_sessions_v1_workspace_sessions_get": Rule(USER, OWN),
    "get_session_v1_workspace_sessions__session_id__get": Rule(USER, FOREIGN),
    "list_items_v1_workspace_sessions__session_id__items_get": Rule(USER, FOREIGN),
    "session_events_v1_workspace_sessions__session_id__events_get": Rule(USER, FOREIGN),
    "clear_session_v1_workspace_sessions__session_id__clear_post": Rule(USER, FOREIGN),
    "save_item_v1_workspace_items__item_id__save_post": Rule(
        USER, FOREIGN, bodies=lambda w: [{"title": "mine now"}]
    ),
    "delete_item_v1_workspace_items__item_id__delete": Rule(USER, FOREIGN),
    "list_assets_v1_library_assets_get": Rule(USER, OWN),
    "get_asset_v1_library_assets__asset_id__get": Rule(USER, FOREIGN),
    "update_asset_v1_library_assets__asset_id__patch": Rule(
        USER, FOREIGN, bodies=lambda w: [{"title": "mine now"}]
    ),
    "delete_asset_v1_library_assets__asset_id__delete": Rule(USER, FOREIGN),
    # --- downloads: a signature for another file opens nothing
    "get_file_v1_files__bucket___key__get": Rule(SIGNED, frozenset({403}), query=_signed_elsewhere),
    # --- operations
    "jwks__well_known_jwks_json_get": Rule(PUBLIC, frozenset({200})),
    "healthz_healthz_get": Rule(PUBLIC, frozenset({200})),
    "readyz_readyz_get": Rule(PUBLIC, frozenset({200})),
}


def header_ids(w: World) -> dict[str, str]:
    """A's value for each header parameter that names something of A's."""
    return {"Idempotency-Key": w.idempotency_key}


def path_ids(w: World) -> dict[str, str]:
    """A's id for each path parameter name the API uses."""
    return {
        "job_id": w.job_id,
        "session_id": w.session_id,
        "item_id": w.item_ids[0],
        "asset_id": w.asset_ids[0],
        "template_id": w.template_id,
        "bucket": w.file_bucket,
        "key": w.file_key,
    }


@pytest.fixture(scope="module")
async def document(stack) -> dict:
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict) -> dict[str, tuple[str, str, dict]]:
    """operationId -> (method, path template, operation)."""
    out = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                out[op["operationId"]] = (method.upper(), path, op)
    return out


async def test_every_operation_is_classified(document):
    ops = operations(document)
    unclassified = sorted(set(ops) - set(RULES))
    assert not unclassified, f"operations RULES does not classify: {unclassified}"
    stale = sorted(set(RULES) - set(ops))
    assert not stale, f"RULES names operations the document lacks: {stale}"
    for op_id, (method, path, op) in ops.items():
        takes_token = bool(op.get("security"))
        assert takes_token == (RULES[op_id].auth in (USER, ADMIN)), (
            f"{method} {path}: the document says token={takes_token}, RULES says {RULES[op_id].auth}"
        )


@dataclass
class Answer:
    status: int
    text: str
    content_type: str
    headers: httpx.Headers


async def call(http: httpx.AsyncClient, method: str, url: str, auth: dict, **kw) -> Answer:
    """The answer to one request (`auth`: the caller's headers); of an event
    stream, only what comes before the first event's end (it is closed then)."""
    kw = dict(kw)
    headers = {**auth, **kw.pop("headers", {})}
    async with http.stream(method, url, headers=headers, **kw) as response:
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream") and response.status_code < 300:
            text = ""
            async for chunk in response.aiter_text():
                text += chunk
                if "data:" in text and "\n\n" in text[text.index("data:") :]:
                    break
        else:
            text = (await response.aread()).decode(errors="replace")
    return Answer(response.status_code, text, content_type, response.headers)


async def page_token_of_a(http, w: World, path: str, op: dict) -> str | None:
    """A's token for the second page of this listing, when it pages."""
    names = {p["name"] for p in op.get("parameters", ())}
    if not {"page_size", "page_token"} <= names:
        return None
    url = path.format(**path_ids(w))
    answer = await http.get(url, headers=w.a.headers, params={"page_size": 1})
    assert answer.status_code == 200, answer.text
    token = answer.json().get("next_page_token")
    assert token, f"A's {path} has one page only: the walk needs two"
    return token


def requests_for(w: World, method: str, path: str, op: dict, rule: Rule, page_token: str | None):
    """(url, keyword arguments) of each probe of one operation."""
    ids = path_ids(w)
    names = re.findall(r"{(\w+)(?::\w+)?}", path)
    missing = [n for n in names if n not in ids]
    assert not missing, f"{method} {path}: no A id for path parameters {missing}"
    url = path
    for name in names:
        url = re.sub(r"{" + name + r"(?::\w+)?}", ids[name], url)
    params = dict(rule.query(w))
    if page_token:
        params["page_token"] = page_token
    base: dict = {"params": params} if params else {}
    headers = {
        p["name"]: header_ids(w)[p["name"]]
        for p in op.get("parameters", ())
        if p["in"] == "header" and p["name"] in header_ids(w)
    }
    if headers:
        base["headers"] = headers
    if rule.upload:
        return [(url, {**base, "files": {"file": ("b.png", png_bytes(), "image/png")}})]
    if rule.bodies is None:
        assert "requestBody" not in op or not op["requestBody"].get("required"), (
            f"{method} {path} needs a body: give RULES a `bodies`"
        )
        return [(url, base)]
    return [(url, {**base, "json": body}) for body in rule.bodies(w)]


def sent(url: str, kw: dict) -> str:
    return url + repr(kw.get("params", "")) + repr(kw.get("json", "")) + repr(kw.get("headers"))


def check(w: World, who: str, method: str, url: str, kw: dict, answer: Answer, allowed) -> None:
    where = (
        f"{who}: {method} {url} {kw.get('params', '')} {kw.get('headers', '')} {kw.get('json', '')}"
    )
    assert answer.status < 500, f"{where} -> {answer.status} {answer.text[:300]}"
    assert answer.status in allowed, (
        f"{where} -> {answer.status}, expected {sorted(allowed)}: {answer.text[:300]}"
    )
    leaks = w.leaks(answer.text, sent(url, kw))
    assert not leaks, f"{where} -> {answer.status} shows {leaks}"
    assert "Traceback" not in answer.text, where
    # No answer may be sniffed into another type (an error page into HTML...).
    assert answer.headers.get("x-content-type-options") == "nosniff", where


@pytest.mark.parametrize("op_id", list(RULES))
async def test_walk_operation(stack, world, document, op_id):
    ops = operations(document)
    assert op_id in ops, f"{op_id} is not in the document"
    method, path, op = ops[op_id]
    rule = RULES[op_id]
    async with httpx.AsyncClient(base_url=stack.url, timeout=120) as http:
        page_token = await page_token_of_a(http, world, path, op)
        probes = requests_for(world, method, path, op, rule, page_token)
        for url, kw in probes:
            if rule.auth in (USER, ADMIN):
                refused = [
                    ("no token", None),
                    ("a worker's token", service_token(stack, "worker")),
                    *refused_tokens(stack, world),
                ]
                for who, token in refused:
                    headers = bearer(token) if token else {}
                    answer = await call(http, method, url, headers, **kw)
                    check(world, who, method, url, kw, answer, {401})
            elif rule.auth == SIGNED:
                answer = await call(http, method, url, {}, **kw)
                check(world, "no token", method, url, kw, answer, rule.as_b)
            callers = [("B", world.b.headers)]
            if rule.auth == USER:
                # An admin is a user with more rights, not every user's owner.
                callers.append(("an admin", bearer(world.admin_token)))
            for who, headers in callers:
                answer = await call(http, method, url, headers, **kw)
                check(world, who, method, url, kw, answer, rule.as_b)
                if rule.as_b == FOREIGN:
                    # Nothing tells A's resource from one that does not exist.
                    assert answer.content_type.startswith("application/problem+json"), answer.text
            if rule.auth == ADMIN:
                # The same request serves an admin: B's 403 is the role's.
                answer = await call(http, method, url, bearer(world.admin_token), **kw)
                check(world, "an admin", method, url, kw, answer, {200, 201})


async def test_signup_does_not_tell_a_taken_address(stack, world):
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        taken = await http.post(
            "/v1/auth/signup", json={"email": world.a.email, "password": PASSWORD + " x"}
        )
        free = await http.post(
            "/v1/auth/signup",
            json={"email": f"free-{world.b.id[:8]}@example.com", "password": PASSWORD + " x"},
        )
    assert taken.status_code == free.status_code, (taken.status_code, free.status_code)
    assert taken.status_code < 300, taken.text
    assert world.a.id not in taken.text


async def test_idempotency_key_is_per_user(stack, world):
    """B submitting with the Idempotency-Key A used gets a job of B's own."""
    headers = {**world.b.headers, "Idempotency-Key": world.idempotency_key}
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        submitted = await http.post("/v1/jobs", headers=headers, json=_job(world))
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        await http.post(f"/v1/jobs/{job['id']}/cancel", headers=world.b.headers)
    assert job["id"] != world.job_id
    assert "Idempotent-Replayed" not in submitted.headers
    assert not world.leaks(submitted.text), submitted.text


BAD_TEXT = "a\u0000b"
OWN_BAD_TEXT = [
    ("PATCH", "/v1/library/assets/{asset}", {"title": BAD_TEXT}, "title"),
    ("POST", "/v1/workspace/items/{item}/save", {"title": BAD_TEXT}, "title"),
    ("POST", "/v1/workspace/sessions", {"name": BAD_TEXT}, "name"),
    ("POST", "/v1/jobs", {"prompt": BAD_TEXT}, "prompt"),
    ("POST", "/v1/jobs", {"negative_prompt": BAD_TEXT}, "negative_prompt"),
]


@pytest.mark.parametrize(
    "method,path,body,field", OWN_BAD_TEXT, ids=[f"{m} {p}" for m, p, _, _ in OWN_BAD_TEXT]
)
async def test_control_characters_in_own_text_are_422(stack, world, method, path, body, field):
    """A NUL (which PostgreSQL cannot store) in A's own request is refused
    with the field named, not failed as a 500."""
    url = path.format(asset=world.asset_ids[0], item=world.item_ids[2])
    if path == "/v1/jobs":
        body = _job(world, **body)
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        answer = await http.request(method, url, headers=world.a.headers, json=body)
    assert answer.status_code == 422, answer.text
    assert field in [e["field"] for e in answer.json().get("errors", [])], answer.text


async def test_a_keeps_everything_after_the_walk(stack, world):
    await a_keeps_everything(stack, world)
