"""The prompt policy: whole-word, case-insensitive deny-list matching."""

from __future__ import annotations

import pytest

from ourvidz.errors import InvalidArgument
from ourvidz.policy import PromptPolicy, parse_terms
from ourvidz.settings import CommonSettings


def test_terms_match_whole_words_in_any_case_and_spacing():
    policy = PromptPolicy(("bad word", "gore"))
    assert policy.violations("a BAD-word and Gore.") == ["bad word", "gore"]
    assert policy.violations("bad_word") == ["bad word"]
    assert policy.violations("badwords, gorey, ungore") == []
    assert policy.allows("a quiet lake at dawn")


def test_check_raises_naming_the_field_and_terms():
    policy = PromptPolicy(("gore",))
    with pytest.raises(InvalidArgument) as err:
        policy.check("so much GORE", field="prompt")
    (violation,) = err.value.violations
    assert violation.field == "prompt"
    assert "'gore'" in violation.message
    policy.check("a cat")  # allowed: no exception


def test_regex_characters_in_terms_are_literal():
    policy = PromptPolicy(("a.b",))
    assert policy.violations("axb") == []
    assert policy.violations("say a.b now") == ["a.b"]


def test_terms_from_setting_and_file(tmp_path):
    listed = tmp_path / "deny.txt"
    listed.write_text("# one per line\nfirst term\n\nSecond # with a comment\ngore\n")
    policy = PromptPolicy.from_settings(" gore , other ,", str(listed))
    assert policy.terms == ("gore", "other", "first term", "Second")


def test_parse_terms_drops_duplicates_and_blanks():
    assert parse_terms("a, ,A,b") == ["a", "b"]


def test_empty_policy_allows_everything():
    assert PromptPolicy().allows("anything at all")


def test_settings_build_the_policy(monkeypatch):
    monkeypatch.setenv("PROMPT_DENY_LIST", "forbidden thing")
    policy = CommonSettings().prompt_policy()
    assert policy.violations("a Forbidden  Thing") == ["forbidden thing"]
