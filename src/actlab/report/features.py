"""Feature pages (sae_vis-style) from :func:`actlab.sae.dashboard.feature_dashboards` data: an index with search
and sort, and one card per feature - statistics, an activation histogram, promoted/suppressed tokens and the
top contexts with every token shaded by its activation. Offline: inline CSS, JS and SVG, all text escaped."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .html import Page, count, esc, num, number, visible

CSS = """
.card{display:none;border:1px solid #ddd;border-radius:6px;padding:.4rem 1rem;margin:1rem 0}
.card:target,.card.shown,.open .card{display:block}
.ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;line-height:1.9;margin:.15rem 0;
white-space:pre-wrap}
.ctx span{border-radius:2px}.ctx .top{outline:2px solid #c0392b}
.cols{display:flex;gap:2rem;flex-wrap:wrap}.idx tr{cursor:pointer}.idx tr:hover td{background:#fff6e8}
th.sort{cursor:pointer;text-decoration:underline dotted}input.search{padding:.3rem;width:22rem;margin:.4rem 0}
"""

JS = """
<script>
(function(){
  var q=document.getElementById('search'), rows=[].slice.call(document.querySelectorAll('table.idx tbody tr'));
  q.addEventListener('input',function(){var t=q.value.toLowerCase();
    rows.forEach(function(r){r.style.display=r.textContent.toLowerCase().indexOf(t)>=0?'':'none';});});
  rows.forEach(function(r){r.addEventListener('click',function(){location.hash=r.dataset.target;});});
  [].slice.call(document.querySelectorAll('th.sort')).forEach(function(th,i){
    th.addEventListener('click',function(){var tb=th.closest('table').tBodies[0], asc=th.dataset.asc!=='1';
      th.dataset.asc=asc?'1':'0';
      var rs=[].slice.call(tb.rows).sort(function(a,b){var x=a.cells[i].dataset.v, y=b.cells[i].dataset.v;
        var nx=parseFloat(x), ny=parseFloat(y); var c=(isNaN(nx)||isNaN(ny))?String(x).localeCompare(y):nx-ny;
        return asc?c:-c;});
      rs.forEach(function(r){tb.appendChild(r);});});});
  function show(){var cards=document.querySelectorAll('.card');
    [].forEach.call(cards,function(c){c.classList.remove('shown');});
    if(!location.hash&&cards.length){cards[0].classList.add('shown');}}
  window.addEventListener('hashchange',show); show();
})();
</script>
"""


def histogram_svg(edges: Sequence[float], counts: Sequence[int], *, width: int = 360, height: int = 120,
                  xlabel: str = "activation", color: str = "#e67e22") -> str:
    """A bar chart as inline SVG with its x range and the tallest count labelled (every value checked to be a
    number: a result file edited to carry markup raises ``ValueError`` instead of reaching the page)."""
    counts = [count(c, "histogram count") for c in counts]
    edges = [number(e, "histogram edge") for e in edges]
    n = len(counts)
    top = max(counts) if counts else 0
    if n == 0 or top == 0:
        return '<p class="muted">no non-zero values</p>'
    if len(edges) != n + 1:
        raise ValueError(f"a histogram of {n} bars needs {n + 1} edges, got {len(edges)}")
    pad_l, pad_b, pad_t = 34, 28, 8
    w, h = width - pad_l - 4, height - pad_b - pad_t
    bw = w / n
    bars = "".join(
        f'<rect x="{pad_l + i * bw:.1f}" y="{pad_t + h - h * c / top:.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{h * c / top:.1f}" fill="{color}"><title>{esc(f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {c}")}'
        f"</title></rect>" for i, c in enumerate(counts))
    axes = (f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>'
            f'<text x="{pad_l}" y="{height - 14}" font-size="10">{esc(f"{edges[0]:.3g}")}</text>'
            f'<text x="{pad_l + w}" y="{height - 14}" font-size="10" text-anchor="end">{esc(f"{edges[-1]:.3g}")}'
            f'</text><text x="{pad_l + w / 2}" y="{height - 2}" font-size="10" text-anchor="middle">'
            f'{esc(xlabel)}</text><text x="{pad_l - 4}" y="{pad_t + 8}" font-size="10" text-anchor="end">'
            f"{top}</text>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{esc(xlabel)} histogram">{bars}{axes}</svg>')


def context_html(example: Mapping[str, Any], scale: float) -> str:
    """One context: every token shaded by the feature's activation there (orange, opacity = value / the
    feature's maximum), its value on hover, the top token outlined; whitespace visible."""
    spans = []
    tokens = [str(t) for t in example["tokens"]]
    values = [number(v, "activation") for v in (example.get("values") or [0.0] * len(tokens))]
    highlight = example.get("highlight")
    highlight = None if highlight is None else count(highlight, "highlight")
    for j, (t, v) in enumerate(zip(tokens, values, strict=False)):
        a = min(max(v / scale, 0.0), 1.0) if scale > 0 else 0.0
        cls = ' class="top"' if j == highlight else ""
        shown = visible(t) if (not t.strip() or "\n" in t) else t
        spans.append(f'<span{cls} style="background:rgba(230,126,34,{a:.2f})" title="{v:.3f}">'
                     f"{esc(shown)}</span>")
    return f'<div class="ctx"><code>{num(example["value"], ".3g")}</code> {"".join(spans)}</div>'


def _logit_table(rows: Sequence[Sequence[Any]], title: str) -> str:
    body = "".join(f'<tr><td><span class="tok">{esc(visible(str(t)))}</span></td><td class="num">{num(v, "+.3f")}'
                   f"</td></tr>" for t, v in rows)
    return f"<div><h4>{esc(title)}</h4><table><tbody>{body}</tbody></table></div>"


def feature_card(card: Mapping[str, Any]) -> str:
    """One feature's card. Every number is checked to be one (see :func:`~actlab.report.html.number`), every
    text escaped: a dashboard file edited to carry markup cannot put it into the page."""
    f = count(card["feature"], "feature")
    density, top = number(card["density"], "density"), number(card["max"], "max")
    parts = [f'<section class="card" id="f{f}"><h3>feature {f}</h3>']
    if card.get("explanation"):
        parts.append(f"<p><b>Explanation:</b> {esc(card['explanation'])}</p>")
    stats = (f"<table><tbody><tr><th>density</th><td class=\"num\">{100 * density:.3g}% of tokens "
             f"({count(card['n_active'], 'n_active')})</td></tr><tr><th>largest activation</th><td class=\"num\">"
             f"{top:.4g}</td></tr><tr><th>mean when active</th><td class=\"num\">"
             f"{num(card['mean_active'], '.4g', 'mean_active')}</td></tr></tbody></table>")
    hist = card["histogram"]
    cols = [f"<div>{stats}</div>",
            f"<div><h4>activations when active</h4>{histogram_svg(hist['edges'], hist['counts'])}</div>"]
    if "logits" in card:
        cols.append(_logit_table(card["logits"]["positive"], "promoted tokens"))
        cols.append(_logit_table(card["logits"]["negative"], "suppressed tokens"))
    parts.append(f'<div class="cols">{"".join(cols)}</div>')
    parts.append("<h4>top contexts</h4>")
    if not card["examples"]:
        parts.append('<p class="muted">never active on these texts</p>')
    parts += [context_html(ex, top) for ex in card["examples"]]
    parts.append("</section>")
    return "".join(parts)


def feature_index(cards: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f'<th class="sort">{esc(h)}</th>' for h in ("feature", "density", "max", "promotes",
                                                                "explanation"))
    rows = []
    for c in cards:
        f = count(c["feature"], "feature")
        density, top = number(c["density"], "density"), number(c["max"], "max")
        promotes = ", ".join(visible(str(t)) for t, _ in c.get("logits", {}).get("positive", [])[:4])
        expl = str(c.get("explanation", ""))
        rows.append(f'<tr data-target="f{f}"><td data-v="{f}">{f}</td><td class="num" data-v="{density!r}">'
                    f'{100 * density:.3g}%</td><td class="num" data-v="{top!r}">{top:.4g}</td>'
                    f'<td data-v="{esc(promotes)}">{esc(promotes)}</td><td data-v="{esc(expl)}">{esc(expl)}</td></tr>')
    return (f'<input id="search" class="search" type="search" placeholder="filter by feature, token or '
            f'explanation"><table class="idx"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            "</table>")


def feature_page(dash: Mapping[str, Any], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """The whole page: how to read it, the index, the cards (one shown at a time; the index selects)."""
    page = Page(title or f"features of {dash.get('dictionary', '')} at {dash.get('point', '')}",
                f"{dash.get('model', '')}: {len(dash['features'])} of {dash.get('d_sae', '?')} features, read "
                f"over {dash.get('n_texts', '?')} texts ({dash.get('n_tokens', '?')} tokens)")
    page.html(f"<style>{CSS}</style>")
    page.text("How to read this: pick a feature in the index (click a column title to sort, type to filter). Its "
              "card shows how often it fires (density), the distribution of its non-zero activations, the tokens "
              "its decoder direction promotes and suppresses through the unembedding, and the contexts where it "
              "fires most, every token shaded by the feature's activation there (hover for the value; the "
              "outlined token is the maximum).", muted=True)
    if dash.get("logit_note"):
        page.text(dash["logit_note"], muted=True)
    page.html(feature_index(dash["features"]))
    for card in dash["features"]:
        page.html(feature_card(card))
    page.html(JS)
    return page.write(path)


def render_dashboards(page: Page, dash: Mapping[str, Any], *, cards: int = 1) -> None:
    """Report section for ``top_examples.json`` (feature dashboards): a static index and the first cards; the
    full interactive page is the run's own ``top_examples.html``."""
    page.html(f"<style>{CSS}</style>")
    feats = dash["features"]
    page.table(["feature", "density", "largest activation", "promotes"],
               [[count(c["feature"], "feature"), f"{100 * number(c['density'], 'density'):.3g}%",
                 number(c["max"], "max"),
                 ", ".join(visible(str(t)) for t, _ in c.get("logits", {}).get("positive", [])[:4])]
                for c in feats[:10]])
    page.html('<div class="open">' + "".join(feature_card(c) for c in feats[:cards]) + "</div>")
    if len(feats) > cards:
        page.text(f"{len(feats) - cards} more feature cards, with search and sort, in top_examples.html.",
                  muted=True)
