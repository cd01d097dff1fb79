"""The HTML shell both pages share: one stylesheet, one escape function, images, anchors, numbers."""

from __future__ import annotations

import base64
import html
import math
import re
from typing import Any

import numpy as np

# Tables: names and the first column left, numbers and their headers right; `.lab` (matrix row labels)
# and `.name` (run-page names) are the left-aligned cells, `.num` the monospaced numbers.
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d2330;
 max-width:1180px;margin:0 auto;padding:1.2em 1.6em 3em;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #dde1e8;
 padding-bottom:.2em}h3{font-size:1.02em;margin:1.2em 0 .4em;color:#3a4253}
.meta{color:#5b6475;margin:0 0 1em}nav{font-size:.9em;margin-bottom:1em}nav a{margin-right:1em;color:#2a5db0}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}caption{text-align:left;color:#5b6475;
 padding-bottom:.3em}th,td{padding:.25em .8em;border-bottom:1px solid #eceff3;text-align:right}
th:first-child,th.lab,td.lab,td.name{text-align:left}
thead th{border-bottom:2px solid #c9ced8}tr.group th{background:#f2f4f8;font-size:.85em;
 text-transform:uppercase;letter-spacing:.04em;color:#48516a}td.num{text-align:right;
 font-variant-numeric:tabular-nums;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
td.std{color:#5b6475}.paper{background:#fbf7ea;color:#5a4a1a}figure{margin:.4em 0 1em}
figcaption{font-size:.85em;color:#5b6475}
img{max-width:100%;height:auto}.figrow{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
.note{color:#8a5a00;background:#fff8e6;border-left:3px solid #e0b040;padding:.4em .8em}
.oracle{font-size:.75em;color:#7a3e00;background:#ffe9c7;border-radius:3px;padding:0 .35em;margin-left:.4em}
.bad{color:#c62828;font-weight:600}.good{color:#2e7d32;font-weight:600}
.tag{display:inline-block;padding:.1em .5em;border-radius:.3em;background:#eef1f6}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:.8em 1em;overflow:auto;font-size:.85em}
ul.notes li{margin:.2em 0}footer{margin-top:3em;color:#8a92a3;font-size:.8em}
"""


def escape(text: Any) -> str:
    """``text`` as HTML text or attribute value (quotes escaped too)."""
    return html.escape(str(text), quote=True)


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def slug(text: str, *, anchor: bool = False) -> str:
    """``text`` as a file name and matrix anchor (lower-case, other runs as '_'); with ``anchor``, as a
    run-page anchor (case, '_' and '-' kept, other runs as '-')."""
    if anchor:
        return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "table"


def header(heading: str, meta_html: str, links: list[tuple[str, str]]) -> str:
    """The page header: heading, a meta line (HTML) and a nav of (anchor, text) links."""
    nav = "".join(f"<a href='#{anchor}'>{escape(text)}</a>" for anchor, text in links)
    return f"<header><h1>{escape(heading)}</h1><p class='meta'>{meta_html}</p><nav>{nav}</nav></header>"


def page(title: str, header_html: str, body_html: str) -> str:
    """A whole self-contained page: doctype, head with the stylesheet, header, body."""
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{header_html}\n{body_html}\n</body>\n</html>\n"
    )


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def fmt_num(v: Any) -> str:
    """Numbers with 4 significant digits (integral values as integers); anything else as text."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):d}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        if math.isinf(f):
            return "∞" if f > 0 else "−∞"
        if f.is_integer() and 1 < abs(f) < 1e6:  # counts stored as floats
            return f"{int(f):d}"
        text = f"{f:#.4g}"  # 4 significant digits, trailing zeros kept: 1.000, 0.9500
        return text[:-1] if text.endswith(".") else text
    return str(v)
