"""/v1/admin/prompt-templates against an EnhancerService double: admins only
(users 403 and nothing sent, anonymous 401), input validated with field
names, and the template lifecycle: create, read, new version, activate, list,
test, stats."""

from __future__ import annotations

import uuid

import pytest

from tests.gateway.gateway_helpers import assert_problem, auth

BASE = "/v1/admin/prompt-templates"
TEMPLATE_KEYS = {
    "id",
    "name",
    "target_model",
    "version",
    "system_prompt",
    "user_template",
    "description",
    "settings",
    "active",
    "created_by",
    "created_at",
}
SOME_ID = "7d0c4a53-0000-4000-8000-0000000000ff"
ROUTES = [
    ("GET", BASE, None),
    ("POST", BASE, {"name": "n", "target_model": "wan", "system_prompt": "s"}),
    ("GET", f"{BASE}/{SOME_ID}", None),
    ("POST", f"{BASE}/{SOME_ID}/versions", {"system_prompt": "s"}),
    ("POST", f"{BASE}/{SOME_ID}/activate", None),
    ("POST", f"{BASE}/{SOME_ID}/tests", {}),
    ("GET", f"{BASE}/{SOME_ID}/tests", None),
    ("GET", f"{BASE}/{SOME_ID}/stats", None),
]


def new_template(**fields) -> dict:
    return {
        "name": f"wan-{uuid.uuid4().hex[:8]}",
        "target_model": "wan",
        "system_prompt": "Rewrite the prompt as one rich paragraph: motion, camera, lighting.",
        **fields,
    }


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_users_get_403_and_nothing_reaches_the_enhancer(
    client, enhancer, user_token, method, path, body
):
    _, fake = enhancer
    before = len(fake.calls)
    r = await client.request(method, path, json=body, headers=auth(user_token[1]))
    problem = assert_problem(r, 403)
    assert "admin" in problem["detail"]
    assert len(fake.calls) == before


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_anonymous_callers_get_401(client, enhancer, method, path, body):
    _, fake = enhancer
    before = len(fake.calls)
    r = await client.request(method, path, json=body)
    assert_problem(r, 401)
    assert len(fake.calls) == before


async def test_template_lifecycle(client, enhancer, admin_token):
    _, fake = enhancer
    admin_id, token = admin_token
    h = auth(token)

    body = new_template(
        user_template="Prompt: {prompt}",
        description="first try",
        settings={"temperature": 0.6, "max_new_tokens": 180},
        activate=True,
    )
    r = await client.post(BASE, json=body, headers=h)
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1.keys() == TEMPLATE_KEYS
    assert (v1["name"], v1["target_model"], v1["version"], v1["active"]) == (
        body["name"],
        "wan",
        1,
        True,
    )
    assert v1["user_template"] == "Prompt: {prompt}"
    assert v1["settings"] == {
        "temperature": 0.6,
        "top_p": None,
        "max_new_tokens": 180,
        "seed": None,
    }
    assert v1["created_by"] == admin_id
    assert v1["created_at"].endswith("Z")
    _, request, subject = fake.last("CreatePromptTemplate")
    assert subject == admin_id and request.activate

    got = (await client.get(f"{BASE}/{v1['id']}", headers=h)).json()
    assert got == v1

    r = await client.post(
        f"{BASE}/{v1['id']}/versions",
        json={"system_prompt": "Be vivid: motion, camera, lighting."},
        headers=h,
    )
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert (v2["name"], v2["version"], v2["active"]) == (v1["name"], 2, False)
    assert v2["system_prompt"] == "Be vivid: motion, camera, lighting."
    assert v2["user_template"] == "Prompt: {prompt}"  # copied from version 1
    _, request, _ = fake.last("UpdatePromptTemplate")
    assert not request.HasField("settings")  # nothing given: nothing sent

    r = await client.post(f"{BASE}/{v2['id']}/activate", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["active"] is True

    listed = (await client.get(BASE, params={"target_model": "wan"}, headers=h)).json()
    names = {(t["name"], t["version"]) for t in listed["templates"]}
    assert {(v1["name"], 1), (v1["name"], 2)} <= names
    active = (
        await client.get(BASE, params={"target_model": "wan", "active_only": "true"}, headers=h)
    ).json()
    assert [t["id"] for t in active["templates"]] == [v2["id"]]
    _, request, _ = fake.last("ListPromptTemplates")
    assert (request.target_model, request.active_only) == ("wan", True)
    every = await client.get(BASE, params={"target_model": "", "active_only": ""}, headers=h)
    assert every.status_code == 200, every.text
    assert fake.last("ListPromptTemplates")[1].target_model == ""

    r = await client.post(
        f"{BASE}/{v2['id']}/tests",
        json={"sample_prompts": ["a fox", "a boat"], "settings": {"seed": 5}},
        headers=h,
    )
    assert r.status_code == 200, r.text
    tests = r.json()["tests"]
    assert [t["sample_prompt"] for t in tests] == ["a fox", "a boat"]
    assert tests[0]["template_version"] == 2
    assert tests[0]["result"]["original_prompt"] == "a fox"
    assert tests[0]["result"]["settings"]["seed"] == 5
    listed_tests = (await client.get(f"{BASE}/{v2['id']}/tests", headers=h)).json()["tests"]
    assert [t["id"] for t in listed_tests] == [t["id"] for t in tests]

    stats = (await client.get(f"{BASE}/{v2['id']}/stats", headers=h)).json()
    assert stats["template_id"] == v2["id"] and stats["template_version"] == 2
    assert (stats["enhancements"], stats["fallbacks"]) == (10, 1)
    assert stats["mean_rating"] is None or 1 <= stats["mean_rating"] <= 5


BAD_CREATE = [
    ({"name": None}, "name"),
    ({"name": "  "}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"target_model": "flux"}, "target_model"),
    ({"system_prompt": ""}, "system_prompt"),
    ({"system_prompt": "x" * 8001}, "system_prompt"),
    ({"user_template": "no placeholder"}, "user_template"),
    ({"description": "x" * 2001}, "description"),
    ({"settings": {"temperature": 9}}, "settings.temperature"),
    ({"settings": {"top_p": 0}}, "settings.top_p"),
    ({"settings": {"max_new_tokens": 0}}, "settings.max_new_tokens"),
    ({"settings": {"temprature": 0.5}}, "settings.temprature"),
    ({"activate": "maybe"}, "activate"),
]


@pytest.mark.parametrize(
    ("change", "field"), BAD_CREATE, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_CREATE)]
)
async def test_create_validates_with_field_names(client, enhancer, admin_token, change, field):
    _, fake = enhancer
    body = {k: v for k, v in new_template(**change).items() if v is not None}
    before = len(fake.calls)
    r = await client.post(BASE, json=body, headers=auth(admin_token[1]))
    problem = assert_problem(r, 422)
    assert field in [e["field"] for e in problem["errors"]], problem
    assert len(fake.calls) == before


BAD_OTHERS = [
    ("versions", {"system_prompt": "   "}, "system_prompt"),
    ("versions", {"user_template": "{prmpt}"}, "user_template"),
    ("versions", {"settings": {"seed": -3}}, "settings.seed"),
    ("tests", {"sample_prompts": []}, "sample_prompts"),
    ("tests", {"sample_prompts": ["ok", " "]}, "sample_prompts.1"),
    ("tests", {"sample_prompts": ["p"] * 21}, "sample_prompts"),
]


@pytest.mark.parametrize(
    ("route", "body", "field"), BAD_OTHERS, ids=[f"{r}-{f}" for r, _, f in BAD_OTHERS]
)
async def test_versions_and_tests_validate_with_field_names(
    client, enhancer, admin_token, route, body, field
):
    _, fake = enhancer
    before = len(fake.calls)
    r = await client.post(f"{BASE}/{SOME_ID}/{route}", json=body, headers=auth(admin_token[1]))
    problem = assert_problem(r, 422)
    assert field in [e["field"] for e in problem["errors"]], problem
    assert len(fake.calls) == before


async def test_list_validates_its_filter(client, admin_token):
    r = await client.get(BASE, params={"target_model": "flux"}, headers=auth(admin_token[1]))
    problem = assert_problem(r, 422)
    assert problem["errors"][0]["field"] == "target_model"


async def test_unknown_templates_are_404(client, admin_token):
    h = auth(admin_token[1])
    for path in (f"{BASE}/{SOME_ID}", f"{BASE}/not-an-id", f"{BASE}/not-an-id/stats"):
        assert_problem(await client.get(path, headers=h), 404)
    assert_problem(await client.post(f"{BASE}/{SOME_ID}/activate", headers=h), 404)


async def test_a_duplicate_name_is_409(client, admin_token):
    h = auth(admin_token[1])
    body = new_template()
    assert (await client.post(BASE, json=body, headers=h)).status_code == 201
    assert_problem(await client.post(BASE, json=body, headers=h), 409)
