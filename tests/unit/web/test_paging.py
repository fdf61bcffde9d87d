"""Keyset cursors of the API's list endpoints (`web.paging`): a cursor gives back the key it was made
from, and anything else given as `after` is refused with a one-line reason."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from fwdmail.web import paging


def position(query: str, parts: int) -> tuple[str, ...]:
    return paging.position(make_mocked_request("GET", f"/v1/domains?{query}"), parts)


@pytest.mark.parametrize("key", [("exact", "bob"), ("regex", "^(.+)-sales$"), ("catch-all", "*"),
                                 ("exact", "é&=/?+ ")])
def test_a_cursor_names_the_key_it_was_made_from(key: tuple[str, str]) -> None:
    made = paging.cursor(*key)
    assert made.isascii() and "=" not in made and "&" not in made
    assert position(f"after={made}", 2) == key


def test_an_empty_after_is_the_first_page_and_no_after_is_no_keyset() -> None:
    assert position("after=", 2) == ("", "")
    assert paging.keyset(make_mocked_request("GET", "/v1/domains?after="))
    assert not paging.keyset(make_mocked_request("GET", "/v1/domains?page=2"))


@pytest.mark.parametrize("after", ["not-base64!", paging.cursor("only-one"), paging.cursor("a", "b", "c"),
                                   "bnVsbA", "WzEsMl0", "x" * (paging.MAX_CURSOR + 1), "%FF%FE"])
def test_anything_else_is_refused(after: str) -> None:
    with pytest.raises(ValueError) as exc:
        position(f"after={after}", 2)
    assert "'after' is" in str(exc.value) and "\n" not in str(exc.value)


def test_the_reply_carries_the_next_cursor_and_a_link_while_more_follow() -> None:
    request = make_mocked_request("GET", "/v1/domains/a.test/aliases?after=&limit=2")
    body, headers = paging.page_reply(request, "aliases", [{"x": 1}], ("exact", "m"), 2)
    assert body == {"aliases": [{"x": 1}], "next": paging.cursor("exact", "m")}
    assert headers["Link"] == f'</v1/domains/a.test/aliases?after={body["next"]}&limit=2>; rel="next"'
    body, headers = paging.page_reply(request, "aliases", [], None, 2)
    assert body == {"aliases": [], "next": None} and "Link" not in headers
