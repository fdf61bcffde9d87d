"""Mail HTML made safe to render: an nh3 (ammonia) allow-list of tags and attributes, URLs limited to
http(s)/mailto links and our own inline images, inline CSS reduced to declarations that cannot fetch,
and remote images replaced by a placeholder unless the reader asked for them for this message.

Untrusted input: the HTML part of a stored submitted message (anything a client sent: scripts, event
handlers, `javascript:`/`data:` URLs, CSS `url()`/`@import`/`expression()`, SVG, meta refresh, base,
forms, objects, srcset). The result is meant for the preview frame, which also forbids scripts and every
fetch by its own CSP and sandbox; this module does not rely on that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import nh3

__all__ = ["PLACEHOLDER", "Sanitized", "safe_style", "sanitize"]

MAX_HTML_CHARS = 2_000_000
MAX_REMOTE_HOSTS = 20

TAGS = frozenset({
    "a", "abbr", "address", "article", "aside", "b", "bdi", "big", "blockquote", "br", "caption", "center",
    "cite", "code", "col", "colgroup", "dd", "del", "dfn", "div", "dl", "dt", "em", "figcaption", "figure",
    "font", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "i", "img", "ins", "kbd", "li",
    "mark", "ol", "p", "pre", "q", "s", "samp", "section", "small", "span", "strike", "strong", "sub",
    "sup", "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
})
# Dropped with everything inside them (the others not in TAGS lose the tag and keep their text).
DROPPED_WITH_CONTENT = frozenset({
    "script", "style", "title", "head", "noscript", "template", "textarea", "select", "option", "svg",
    "math", "object", "embed", "iframe", "frame", "frameset", "applet", "audio", "video", "canvas",
    "button", "form", "noembed", "noframes", "xmp", "plaintext",
})
_LAYOUT = {"align", "valign", "width", "height", "dir", "lang", "title", "style", "bgcolor"}
ATTRIBUTES: dict[str, set[str]] = {
    "*": _LAYOUT,
    "a": {"href"},
    "img": {"src", "alt", "border", "hspace", "vspace"},
    "table": {"border", "cellpadding", "cellspacing", "summary"},
    "td": {"colspan", "rowspan", "nowrap"},
    "th": {"colspan", "rowspan", "nowrap", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type"},
    "ul": {"type"},
    "li": {"value"},
    "time": {"datetime"},
    "hr": {"size", "noshade"},
}
LINK_SCHEMES = frozenset({"http", "https", "mailto"})
INLINE_TYPES = frozenset({"image/png", "image/gif", "image/jpeg", "image/webp"})

# A light grey 1x1 GIF standing in for a remote image, keeping its box (width/height stay).
PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAIAAAMzMzAAAACwAAAAAAQABAAACAkQBADs="

CSS_PROPERTIES = frozenset({
    "color", "background-color", "background", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "text-align", "text-decoration", "text-indent", "text-transform",
    "line-height", "letter-spacing", "word-spacing", "white-space", "word-break", "word-wrap",
    "overflow-wrap", "vertical-align", "direction", "margin", "margin-top", "margin-right",
    "margin-bottom", "margin-left", "padding", "padding-top", "padding-right", "padding-bottom",
    "padding-left", "border", "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-style", "border-width", "border-radius", "border-collapse", "border-spacing", "width",
    "height", "max-width", "min-width", "max-height", "min-height", "display", "table-layout",
    "list-style-type", "text-overflow", "overflow", "opacity", "float", "clear",
})
# A value is plain words, numbers, units, colours and quoted font names, with colour functions as the
# only parentheses: no url(), image-set(), expression(), var(), no escapes, comments or at-rules.
_COLOR_FN = re.compile(r"\b(?:rgb|rgba|hsl|hsla)\(\s*[0-9.,%\s/]*\)", re.IGNORECASE)
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9#%.,\s'\"!+-]*")
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def safe_style(style: str) -> str | None:
    """The declarations of an inline `style` that are allowed and cannot fetch; None if none is left."""
    kept = []
    for declaration in style.split(";"):
        name, sep, value = declaration.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not sep or name not in CSS_PROPERTIES or not value or len(value) > 200:
            continue
        if "/*" in value or not _PLAIN_VALUE.fullmatch(_COLOR_FN.sub("0", value)):
            continue
        kept.append(f"{name}: {value}")
    return "; ".join(kept) or None


def _remote_origin(url: str) -> str | None:
    """`scheme://host[:port]` of an http(s) image URL, as a CSP source; None unless plainly writable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() not in ("http", "https") or not _HOST.fullmatch(host):
        return None
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True)
class Sanitized:
    """Safe HTML, how many remote images it held, and (when they were allowed) their origins for CSP."""

    html: str
    remote_images: int
    remote_origins: tuple[str, ...] = field(default=())


@dataclass
class _Pass:
    inline: Mapping[str, str]
    remote: bool
    remote_images: int = 0
    origins: list[str] = field(default_factory=list)

    def image(self, url: str) -> str | None:
        if url.lower().startswith("cid:"):
            return self.inline.get(url[4:].strip("<> ").lower())
        if _scheme(url) not in ("http", "https"):
            return None
        self.remote_images += 1
        origin = _remote_origin(url)
        if not self.remote or origin is None:
            return PLACEHOLDER
        if origin not in self.origins:
            if len(self.origins) >= MAX_REMOTE_HOSTS:
                return PLACEHOLDER
            self.origins.append(origin)
        return url

    def attribute(self, tag: str, name: str, value: str) -> str | None:
        value = value.strip()
        if name == "style":
            return safe_style(value)
        if tag == "img" and name == "src":
            return self.image(value)
        if name == "href":
            return value if _scheme(value) in LINK_SCHEMES else None
        return value


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition(":")
    return scheme.lower() if sep and scheme.isascii() and scheme.isalpha() else ""


def sanitize(html: str, inline_images: Mapping[str, str] | None = None, remote: bool = False) -> Sanitized:
    """Sanitize `html`. `inline_images` maps a Content-ID (lower case, no angle brackets) to the data URL
    its `cid:` references become; `remote` keeps http(s) image sources (and reports their origins)."""
    state = _Pass(inline_images or {}, remote)
    cleaned = nh3.clean(
        html[:MAX_HTML_CHARS],
        tags=set(TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
        attribute_filter=state.attribute,
        url_schemes={"http", "https", "mailto", "cid"},
        url_relative="deny",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
    return Sanitized(cleaned, state.remote_images, tuple(state.origins))
