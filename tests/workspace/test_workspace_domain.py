"""The workspace's pure rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ourvidz.errors import InvalidArgument, NotFound
from services.workspace import domain


def test_default_title_is_the_start_of_the_prompt():
    assert domain.default_title("  a   cat  ") == "a cat"
    assert domain.default_title("") == domain.UNTITLED
    long = "a very long prompt " * 10
    title = domain.default_title(long)
    assert title.endswith("…") and len(title) <= domain.DEFAULT_TITLE_CHARS + 1
    assert long.startswith(title[:-1])


@pytest.mark.parametrize("bad", ["", "   ", "x" * 201, "a\x00b", "bell\x07"])
def test_bad_titles(bad):
    with pytest.raises(InvalidArgument) as info:
        domain.check_title(bad)
    assert [v.field for v in info.value.violations] == ["title"]


@pytest.mark.parametrize("bad", ["x" * 201, "a\x00b", "esc\x1b[0m"])
def test_bad_session_names(bad):
    with pytest.raises(InvalidArgument) as info:
        domain.session_name(bad, datetime.now(UTC))
    assert [v.field for v in info.value.violations] == ["name"]
    assert domain.session_name("tabs\tand\nlines", datetime.now(UTC)) == "tabs\tand\nlines"


def test_page_tokens_round_trip_and_refuse_garbage():
    now = datetime.now(UTC)
    token = domain.encode_token([now, "abc"])
    assert domain.decode_token(token, 2) == [str(now), "abc"]
    assert domain.decode_token("", 2) is None
    for bad in ("%%%", domain.encode_token([1, 2, 3])):
        with pytest.raises(InvalidArgument):
            domain.decode_token(bad, 2)


def test_page_size_and_ids():
    assert domain.page_size(0, 50, 200) == 50
    assert domain.page_size(500, 50, 200) == 200
    with pytest.raises(InvalidArgument):
        domain.page_size(-1, 50, 200)
    with pytest.raises(NotFound):
        domain.parse_id("not-a-uuid", "item")
