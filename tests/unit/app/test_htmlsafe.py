"""The mail HTML sanitizer against a hostile corpus, and properties over generated HTML: whatever goes
in, what comes out has only allowed tags, no event handler, no URL outside http(s)/mailto links and our
own images, and no CSS that can fetch."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwdmail.app import htmlsafe
from fwdmail.app.htmlsafe import PLACEHOLDER, safe_style, sanitize
from tests.support.hostile_html import PWNED, corpus, document

BASE = "http://evil.test:8025"
INLINE = {"logo@example.test": "data:image/png;base64,iVBORw0KGgo="}
FETCHING_CSS = re.compile(r"url\s*\(|@import|image-set|expression|\\|var\s*\(|behavior|binding", re.I)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.elements


def assert_inert(html: str, remote: bool = False, text_too: bool = True) -> None:
    """Nothing in `html` can run, submit or fetch (but remote `<img src>` when `remote`); with `text_too`,
    no script payload is left even as text."""
    for tag, attrs in elements(html):
        assert tag in htmlsafe.TAGS, tag
        for name, value in attrs.items():
            value = value or ""
            assert not name.startswith("on"), (tag, name)
            assert name not in ("srcset", "background", "action", "formaction", "ping", "poster", "data",
                                "lowsrc", "dynsrc", "xlink:href", "srcdoc"), (tag, name)
            if name == "href":
                assert value.split(":", 1)[0].lower() in ("http", "https", "mailto"), value
            if name == "src":
                assert tag == "img"
                ok_remote = remote and value.split(":", 1)[0] in ("http", "https")
                assert value == PLACEHOLDER or value in INLINE.values() or ok_remote, value
            if name == "style":
                assert not FETCHING_CSS.search(value), value
            assert "javascript" not in value.lower()
    if not text_too:
        return
    assert PWNED not in html
    assert "javascript" not in html.lower()


@pytest.mark.parametrize("name", sorted(corpus(BASE)))
def test_hostile_entry_neither_runs_nor_fetches(name: str) -> None:
    out = sanitize(corpus(BASE)[name]).html
    assert_inert(out)
    assert "evil.test" not in out


@pytest.mark.parametrize("name", sorted(corpus(BASE)))
def test_hostile_entry_with_remote_images_keeps_only_img_src(name: str) -> None:
    result = sanitize(corpus(BASE)[name], remote=True)
    assert_inert(result.html, remote=True)
    leaked = re.findall(r"evil\.test:8025(/[^\"' >]*)", result.html)
    assert all(path.startswith("/img/") for path in leaked), leaked
    assert result.remote_origins in ((), (BASE,))


def test_whole_hostile_document() -> None:
    result = sanitize(document(BASE))
    assert_inert(result.html, text_too=False)
    assert PWNED not in result.html
    assert "evil.test" not in result.html
    assert "fwdmail hostile preview" in result.html
    assert result.remote_images == 4  # the <img src> under /img/
    assert result.remote_origins == ()


def test_remote_images_are_placeholders_keeping_their_box() -> None:
    out = sanitize('<img src="https://img.example.test/a.png" width="20" height="10" alt="logo">').html
    assert out == f'<img src="{PLACEHOLDER}" width="20" height="10" alt="logo">'


def test_remote_images_when_asked_and_their_origins() -> None:
    result = sanitize('<img src="https://img.example.test/a.png"><img src="http://b.example.test:8080/x">'
                      '<img src="https://img.example.test/b.png">', remote=True)
    assert 'src="https://img.example.test/a.png"' in result.html
    assert result.remote_origins == ("https://img.example.test", "http://b.example.test:8080")
    assert result.remote_images == 3


def test_remote_image_with_a_host_unfit_for_csp_stays_a_placeholder() -> None:
    result = sanitize('<img src="https://a;b.example/x"><img src="https://user@h.example/x">', remote=True)
    assert result.html.count(PLACEHOLDER) == 1
    assert result.remote_origins == ("https://h.example",)


def test_remote_hosts_bounded() -> None:
    html = "".join(f'<img src="https://h{i}.example.test/x">' for i in range(htmlsafe.MAX_REMOTE_HOSTS + 5))
    result = sanitize(html, remote=True)
    assert len(result.remote_origins) == htmlsafe.MAX_REMOTE_HOSTS
    assert result.html.count(PLACEHOLDER) == 5


def test_cid_images_become_our_inline_data() -> None:
    out = sanitize('<img src="cid:Logo@Example.test"><img src="cid:<logo@example.test>">'
                   '<img src="cid:other@x">', INLINE).html
    assert out.count(INLINE["logo@example.test"]) == 2
    assert out.endswith("<img>")


def test_links_keep_http_and_mailto_open_apart() -> None:
    out = sanitize('<a href="https://example.test/p?q=1">a</a><a href="mailto:x@example.test">m</a>'
                   '<a href="/relative">r</a><a href="ftp://x/">f</a>').html
    assert '<a href="https://example.test/p?q=1" target="_blank" rel="noopener noreferrer">a</a>' in out
    assert 'href="mailto:x@example.test"' in out
    assert out.count("href=") == 2


def test_ordinary_mail_layout_survives() -> None:
    html = ('<table width="600" cellpadding="4" align="center"><tr><td colspan="2" bgcolor="#eeeeee" '
            'style="color: #333; font-family: \'Helvetica Neue\', Arial; padding: 4px 8px">'
            '<h1>Hello</h1><p>Text <b>bold</b> <a href="https://example.test/">link</a></p></td></tr></table>')
    out = sanitize(html).html
    assert 'width="600"' in out and 'colspan="2"' in out and 'bgcolor="#eeeeee"' in out
    assert "font-family: 'Helvetica Neue', Arial" in out
    assert "padding: 4px 8px" in out
    assert "<h1>Hello</h1>" in out


@pytest.mark.parametrize(("style", "kept"), [
    ("color: red; position: fixed", "color: red"),
    ("color: rgb(10, 20, 30)", "color: rgb(10, 20, 30)"),
    ("background: #fff url(https://x.test/a)", None),
    ("BACKGROUND-IMAGE: URL(x)", None),
    ("background: u\\72l(x)", None),
    ("width: expression(alert(1))", None),
    ("content: 'x'; color: blue", "color: blue"),
    ("color: red /* x */", None),
    ("font-size: 12px; ; ;", "font-size: 12px"),
    ("color", None),
])
def test_safe_style(style: str, kept: str | None) -> None:
    assert safe_style(style) == kept


FRAGMENTS = [*corpus(BASE).values(), "<p>", "</p>", "<b>x</b>", "<table><tr><td>", "</td></tr></table>",
             '<img src="cid:logo@example.test">', '<a href="https://ok.test/">', "</a>", "<!--", "-->",
             "<![CDATA[", "]]>", "<", ">", "&", "&lt;", '"', "'", "=", "style=", "onerror=",
             "javascript:", "url(", "\\",
             "<svg>", "</svg>", "<math>", "<style>", "</style>", "<noscript>", "<textarea>", "<xmp>", "\x00",
             "<select><option>", "<p style='color:red'>", "<img src=", "x", " "]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)), max_size=30), st.booleans())
def test_property_any_mix_of_fragments_comes_out_inert(parts: list[str], remote: bool) -> None:
    result = sanitize("".join(parts), INLINE, remote=remote)
    assert_inert(result.html, remote=remote, text_too=False)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_property_style_never_fetches(style: str) -> None:
    kept = safe_style(style)
    assert kept is None or not FETCHING_CSS.search(kept)
    assert kept is None or all(d.split(":")[0] in htmlsafe.CSS_PROPERTIES for d in kept.split("; "))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_property_sanitizing_twice_changes_nothing_more(text: str) -> None:
    once = sanitize(text).html
    assert sanitize(once).html == once or PLACEHOLDER in once
