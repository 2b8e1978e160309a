"""The playground page: one HTML document (CSS from ``static/`` inlined, the script served beside it from
``/playground.js``; it talks only to its own server). Token text from the model is inserted as text nodes,
never as markup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..report.features import CSS as FEATURE_CSS

_STATIC = Path(__file__).with_name("static")


def _asset(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def script_js() -> str:
    """The page's script, served from ``/playground.js`` (the page itself carries no inline script, so its
    Content-Security-Policy can forbid inline script)."""
    return _asset("playground.js")


def page_html(info: dict[str, Any]) -> str:
    """The page for a playground described by ``info`` (``Playground.info()``)."""
    from ..report.html import esc

    data = json.dumps(info, ensure_ascii=False).replace("</", "<\\/")
    chat = ('<label><input type="checkbox" id="chat" checked> chat template</label>' if info["chat_template"]
            else '<input type="checkbox" id="chat" hidden>')
    positions = "".join(f'<option value="{esc(p)}">{esc(p)}</option>' for p in info["positions"])
    kinds = "".join(f'<option value="{esc(k)}">{esc(k)}</option>' for k in info["lens_kinds"])
    lenses = "".join(f'<option value="{esc(k)}">{esc(k)} lens</option>' for k in info["lenses"])
    sae = info.get("sae")
    features_tab = '<button data-view="v-features">features</button>' if sae else ""
    ablate = ('<div class="row"><label>ablate features (e.g. 3,17)</label><input id="ablate" size="20">'
              '<span id="effect" class="muted"></span></div>' if sae else "")
    features_view = (f'''<section class="view" id="v-features"><p class="muted">Dictionary {esc(sae["name"])} at
      {esc(sae["point"])} ({sae["d_sae"]} features). The most active features at each token; click one for its
      page (contexts from {sae["texts"]} texts).</p><div class="row"><button class="act" id="run-features">show
      features</button><button id="export-features">export JSON</button></div><div id="features-out"></div>
      <div id="feature-card"></div></section>''' if sae else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>actlab playground: {esc(info["model"])}</title><style>{_asset("playground.css")}{FEATURE_CSS}</style>
</head><body>
<h1>actlab playground</h1><p class="muted">{esc(info["model"])} ({esc(info["family"])}, {info["layers"]} layers,
d_model {info["d_model"]}). Runs on this machine only; one request at a time.</p>
<nav><button class="on" data-view="v-steer">steer</button><button data-view="v-lens">lens</button>{features_tab}</nav>
<div class="row"><textarea id="prompt" rows="3">Once upon a time</textarea></div>
<div id="error" role="alert"></div>
<section class="view on" id="v-steer">
  <div id="vectors"></div>
  <div class="row"><button id="add-vector">add a vector</button>
    <label>positions <select id="positions">{positions}</select></label>{chat}
    <label>new tokens <input id="max-new" type="number" value="40" min="1" max="{info["max_new_tokens"]}"
      style="width:4rem"></label>
    <label><input type="checkbox" id="sample"> sample</label>
    <label>seed <input id="seed" type="number" value="0" style="width:4rem"></label></div>
  {ablate}
  <div class="row"><button class="act" id="generate">generate</button><button id="stop">stop</button>
    <button id="export-gen">export JSON</button><span id="status" class="muted"></span></div>
  <div class="outs"><div><h3>default</h3><div class="out" id="out-default"></div></div>
    <div><h3>steered</h3><div class="out" id="out-steered"></div></div></div>
  <details><summary>extract a vector from a few pairs</summary>
    <p class="muted">One pair per line: <code>positive text || negative text</code>. Mean difference of the
    residual stream (resid_post) over each text's tokens, at every layer.</p>
    <textarea id="pairs" rows="4"></textarea>
    <div class="row"><label>name <input id="vec-name" size="16"></label><button id="extract">extract</button>
      <span id="extract-status" class="muted"></span></div></details>
</section>
<section class="view" id="v-lens">
  <div class="row"><label>lens <select id="lens-which">{lenses}</select></label>
  <label>point <select id="lens-kind">{kinds}</select></label>
  <label title="add the steer view's vectors (layers, multipliers, positions) while the lens reads"><input
    type="checkbox" id="lens-steered"> steered run</label>
    <button class="act" id="run-lens">run the lens</button><button id="export-lens">export JSON</button></div>
  <p class="muted">Each cell: the top token when that layer's activation at that position is decoded through the
  final norm and unembedding - with the tuned lens, after that layer's learned translator (shade = its
  probability); hover for the top 5. The last row is the model's own prediction. With "steered run" ticked, the
  steer view's vectors (layers, multipliers, positions) are added while the lens reads.</p>
  <div id="lens-out"></div><div id="lens-tip"></div>
</section>
{features_view}
<script type="application/json" id="info">{data}</script>
<script src="/playground.js"></script>
</body></html>
"""
