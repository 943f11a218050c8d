"""Validation, output cleaning and fitting SDXL prompts into CLIP's window."""

from __future__ import annotations

import pytest

from ourvidz import tokenizers
from ourvidz.errors import InvalidArgument, NotFound
from services.enhancer import domain


def clip_count(text: str) -> int:
    tok = tokenizers.clip_tokenizer()
    return len(tok(text, truncation=False, verbose=False)["input_ids"])


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('"a red fox, snow"', "a red fox, snow"),
        ("Enhanced prompt: a red fox,   snow\n\n", "a red fox, snow"),
        ("**Prompt:** 'a red fox'", "a red fox"),
        ("<think>the user wants a fox</think> a red fox", "a red fox"),
        ("<think>unfinished thoughts", ""),
        ("a red fox<|im_end|>", "a red fox"),
        ("   ", ""),
        ("a\x00red\x07 fox\ufffd", "a red fox"),
    ],
)
def test_clean_output(raw, clean):
    assert domain.clean_output(raw) == clean


def test_fit_drops_trailing_descriptors_until_77_clip_tokens():
    descriptors = [f"detail number {i} with soft golden light" for i in range(40)]
    text = ", ".join(descriptors)
    assert clip_count(text) > 77
    fitted = domain.fit_tokens(text, clip_count)
    assert clip_count(fitted) <= 77
    assert text.startswith(fitted)
    kept = fitted.split(", ")
    assert kept == descriptors[: len(kept)]  # whole descriptors, in order
    # One more descriptor would not have fitted.
    assert clip_count(", ".join(descriptors[: len(kept) + 1])) > 77


def test_fit_falls_back_to_words_then_characters():
    words = " ".join(f"word{i}" for i in range(200))
    fitted = domain.fit_tokens(words, clip_count)
    assert clip_count(fitted) <= 77 and words.startswith(fitted) and fitted
    blob = "x" * 5000
    fitted = domain.fit_tokens(blob, clip_count)
    assert clip_count(fitted) <= 77 and fitted


def test_fit_leaves_short_prompts_alone():
    assert domain.fit_tokens("a cat, golden hour", clip_count) == "a cat, golden hour"


def test_targets_come_from_the_catalog():
    assert domain.resolve_target("", "video7b_fast_enhanced") == "wan"
    assert domain.resolve_target("", "sdxl_image_high") == "sdxl"
    assert domain.resolve_target("sdxl", "") == "sdxl"
    for target, job_type, field in (
        ("", "", "target_model"),
        ("flux", "", "target_model"),
        ("", "nope", "job_type"),
        ("sdxl", "video_fast", "target_model"),
    ):
        with pytest.raises(InvalidArgument) as info:
            domain.resolve_target(target, job_type)
        assert info.value.violations[0].field == field


def test_template_violations_name_their_fields():
    bad = domain.TemplateFields(
        name="x" * 101,
        target_model="flux",
        system_prompt="",
        user_template="no placeholder",
        settings=domain.SettingsOverride(temperature=2.5, top_p=1.5, max_new_tokens=2000, seed=-1),
    )
    fields = {v.field for v in domain.template_violations(bad, new=True)}
    assert fields == {
        "template.name",
        "template.target_model",
        "template.system_prompt",
        "template.user_template",
        "template.settings.temperature",
        "template.settings.top_p",
        "template.settings.max_new_tokens",
        "template.settings.seed",
    }
    good = domain.TemplateFields(
        name="n", target_model="wan", system_prompt="s", user_template="{prompt}"
    )
    assert domain.template_violations(good, new=True) == []
    assert {
        v.field
        for v in domain.template_violations(
            domain.TemplateFields(system_prompt="  ", user_template="{prompt}"), new=False
        )
    } == {"system_prompt"}


def test_template_text_with_control_characters_is_refused_by_field():
    # A NUL would otherwise reach PostgreSQL, which refuses it: an internal error.
    bad = domain.TemplateFields(
        name="n\x00",
        target_model="wan",
        system_prompt="be\x00brief",
        user_template="{prompt}\x07",
        description="d\x1b",
    )
    assert {v.field for v in domain.template_violations(bad, new=True)} == {
        "template.name",
        "template.system_prompt",
        "template.user_template",
        "template.description",
    }
    update = domain.TemplateFields(system_prompt="line one\n\tline two", user_template="{prompt}")
    assert domain.template_violations(update, new=False) == []
    update = domain.TemplateFields(system_prompt="s\x00", user_template="{prompt}")
    assert [v.field for v in domain.template_violations(update, new=False)] == ["system_prompt"]


def test_chat_messages_are_checked():
    assert domain.check_chat([("user", "hi")], 5, 100) == [{"role": "user", "content": "hi"}]
    cases = [
        ([], "messages"),
        ([("robot", "hi")], "messages[0].role"),
        ([("user", " ")], "messages[0].content"),
        ([("user", "x" * 101)], "messages"),
        ([("user", "hi")] * 6, "messages"),
        ([("user", "hi"), ("assistant", "hello")], "messages[1].role"),
    ]
    for messages, field in cases:
        with pytest.raises(InvalidArgument) as info:
            domain.check_chat(messages, 5, 100)
        assert info.value.violations[0].field == field


def test_ids_that_are_not_uuids_name_nothing():
    with pytest.raises(NotFound):
        domain.parse_uuid("not-a-uuid", "template")
    assert domain.parse_uuid("A7D3C1E0-5B1F-4C39-9A51-0D2F6C0E5D01", "t").islower()
