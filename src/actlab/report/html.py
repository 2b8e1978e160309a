"""Self-contained offline HTML pages: inline CSS, images embedded as data URIs, every text escaped.

No page makes a network request. Build a :class:`Page`, add sections, then :meth:`Page.write` it
(atomically).
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..runs import write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1b1b1b;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #ddd;padding-bottom:.3rem}h2{font-size:1.25rem;margin-top:2rem}
h3{font-size:1.05rem}table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem;display:block;max-width:100%;
overflow-x:auto}
th,td{border:1px solid #d5d5d5;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.tok{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f6f6f6;
padding:0 .2rem;border-radius:3px;white-space:pre}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5rem 0}
nav ul{columns:2}.muted{color:#666;font-size:.85rem}pre{background:#f6f6f6;padding:.6rem;overflow:auto}
.how{font-size:.88rem;color:#333;background:#f4f8fb;border-left:3px solid #5b9bd5;padding:.3rem .6rem}
.warn{background:#fff4e5;border-left:3px solid #e67e22;padding:.3rem .6rem;font-size:.88rem}
.figs{display:grid;grid-template-columns:1fr 1fr;gap:.5rem}.figs img{margin:0}
details{margin:.4rem 0}summary{cursor:pointer;color:#555;font-size:.85rem}
"""


def esc(text: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(text), quote=True)


def number(x: Any, what: str = "value") -> float:
    """``x`` as a float when it is a real number (an int or a float, not a bool); anything else - a string read
    from an edited result file, say - raises ``ValueError`` naming it, so no such value reaches a page unescaped
    (the report then falls back to its escaped generic tables)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{what} must be a number, got {type(x).__name__} {str(x)[:40]!r}")
    return float(x)


def count(x: Any, what: str = "count") -> int:
    """``x`` as an int when it is a whole number (an int, or a float with no fraction); else ``ValueError``."""
    f = number(x, what)
    if f != f or f in (float("inf"), float("-inf")) or f != int(f):
        raise ValueError(f"{what} must be a whole number, got {x!r}")
    return int(f)


def num(x: Any, spec: str = ".4g", what: str = "value") -> str:
    """A number formatted with ``spec`` (``ValueError`` for anything that is not a number, see :func:`number`)."""
    return format(number(x, what), spec)


def visible(text: str) -> str:
    """Token text with whitespace made visible: newlines and tabs as symbols, a token that is only spaces as
    open boxes (otherwise a space token renders as an empty box)."""
    shown = text.replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "\u240d")
    if shown and not shown.strip(" "):
        shown = "\u2423" * len(shown)
    return shown


def tok(text: str) -> str:
    """A token string shown verbatim (whitespace visible), escaped."""
    return f'<span class="tok">{esc(visible(text))}</span>'


def data_uri(png: bytes | str | os.PathLike[str]) -> str:
    """A PNG as a ``data:`` URI (from bytes or a file path)."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


class Page:
    """An HTML page assembled from escaped sections."""

    def __init__(self, title: str, subtitle: str | None = None):
        self.title = title
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.nav_list = True  # the contents list from the section titles (off when the caller writes its own)
        if subtitle:
            self.parts.append(f'<p class="muted">{esc(subtitle)}</p>')

    def fork(self) -> Page:
        """An empty page to render into on trial; :meth:`merge` adds it here when the rendering succeeded."""
        return Page(self.title)

    def merge(self, other: Page) -> Page:
        self.parts.extend(other.parts)
        self.toc.extend(other.toc)
        return self

    def section(self, title: str, anchor: str | None = None) -> Page:
        anchor = anchor or f"s{len(self.toc) + 1}"
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{esc(anchor)}">{esc(title)}</h2>')
        return self

    def heading(self, text: str) -> Page:
        self.parts.append(f"<h3>{esc(text)}</h3>")
        return self

    def text(self, text: str, *, muted: bool = False) -> Page:
        cls = ' class="muted"' if muted else ""
        self.parts.append(f"<p{cls}>{esc(text)}</p>")
        return self

    def pre(self, text: str) -> Page:
        self.parts.append(f"<pre>{esc(text)}</pre>")
        return self

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_cells: bool = False) -> Page:
        """A table; cells are escaped unless ``raw_cells`` (then each cell must be built with esc/tok)."""
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = []
        for row in rows:
            cells = []
            for c in row:
                if isinstance(c, float):
                    cells.append(f'<td class="num">{c:.4g}</td>')
                elif isinstance(c, int) and not isinstance(c, bool):
                    cells.append(f'<td class="num">{c}</td>')
                else:
                    cells.append(f"<td>{c if raw_cells else esc(c)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        return self

    def image(self, png: bytes | str | os.PathLike[str], alt: str) -> Page:
        self.parts.append(f'<img src="{data_uri(png)}" alt="{esc(alt)}">')
        return self

    def html(self, fragment: str) -> Page:
        """Append a fragment the caller built from escaped pieces."""
        self.parts.append(fragment)
        return self

    def render(self) -> str:
        nav = ""
        if self.nav_list and len(self.toc) > 1:
            items = "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t in self.toc)
            nav = f"<nav><h2>Contents</h2><ul>{items}</ul></nav>"
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(self.title)}</h1>{nav}{''.join(self.parts)}</body></html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        return write_text(path, self.render())
