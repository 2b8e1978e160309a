"""Feature dashboards: everything a feature page shows, as JSON-ready data (the page is drawn in
``actlab.report.features``).

Per feature, over a set of texts: density (fraction of tokens where it is active), the largest activation,
a histogram of its non-zero activations, the top-activating contexts with the activation of *every* token
in the window (not only the maximum), and the tokens its decoder direction promotes and suppresses most
(the direction through the model's final norm and unembedding, as :func:`actlab.analysis.vocab.vocab_view`
does for steering vectors; for ``mlp_hidden`` dictionaries the direction is first mapped through the MLP's
output projection). Two passes over the texts: the first finds the statistics and where the top
activations are, the second re-reads only the texts that hold a top context to record its window.

:func:`neuronpedia_export` writes the same data with the field names of the SAEDashboard/Neuronpedia batch
JSON (``pos_str``/``pos_values``, ``freq_hist_data_bar_heights``/``_values``, ``activations``...).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.points import HookPoint
from ..models.tokens import token_strings
from .dictionary import SparseAutoencoder
from .features import _TopK, feature_columns, scan_codes

if TYPE_CHECKING:
    from ..models.model import Model

RANK_BY = ("max", "density")


@torch.no_grad()
def residual_directions(model: Model, sae: SparseAutoencoder, feats: torch.Tensor) -> torch.Tensor | None:
    """Decoder rows of ``feats`` as residual-stream directions ``[F, d_model]``, or None where the dictionary's
    point is not in (or mapped linearly into) the residual stream."""
    rows = sae.W_dec.detach()[feats.to(sae.W_dec.device)].float().cpu()
    if rows.shape[1] == model.d_model:
        return rows
    p = HookPoint.parse(sae.cfg.hook_point, model.n_layers)
    if p.kind == "mlp_hidden" and p.layer is not None:
        down = model.layers[p.layer].get_submodule(model.adapter.mlp_down)
        w = down.weight.detach().float().cpu()  # [d_model, d_mlp]
        return rows @ w.T
    return None


@torch.no_grad()
def feature_dashboards(model: Model, sae: SparseAutoencoder, texts: Sequence[str], *,
                       features: Sequence[int] | None = None, n_features: int = 16, rank_by: str = "max",
                       contexts: int = 8, before: int = 12, after: int = 4, bins: int = 30, logit_k: int = 10,
                       batch_size: int = 8, max_length: int = 128, keep_bos: bool = False,
                       explanations: Mapping[int, str] | None = None, read: Any = None) -> dict[str, Any]:
    """Dashboards for ``features`` (default: the ``n_features`` ranked first by ``rank_by`` - largest
    activation or density - among those active at all). See the module docstring for what each holds.
    ``read`` replaces the capture of the dictionary's input (:func:`~actlab.sae.features.scan_codes`)."""
    if rank_by not in RANK_BY:
        raise InputError(f"unknown ranking {rank_by!r}; valid: {', '.join(RANK_BY)}")
    for value, what in ((contexts, "contexts"), (bins, "bins"), (logit_k, "logit_k"), (n_features, "n_features")):
        if value < 1:
            raise InputError(f"{what} must be at least 1, got {value}")
    point = sae.cfg.hook_point
    if not point:
        raise InputError("the dictionary does not record its hook point; set cfg.hook_point")
    cols = feature_columns(sae, features)
    F = len(cols)
    best = _TopK(F, contexts)
    active = torch.zeros(F, dtype=torch.long)
    n_tokens = 0
    nz_feature: list[torch.Tensor] = []
    nz_value: list[torch.Tensor] = []
    all_ids: list[list[int]] = []
    for s, ids, codes, valid in scan_codes(model, sae, point, texts, cols, batch_size=batch_size,
                                           max_length=max_length, keep_bos=keep_bos, what="feature statistics",
                                           read=read):
        best.update(codes, s)
        all_ids += ids
        on = codes > 0  # invalid positions hold -1
        active += on.sum((0, 1))
        n_tokens += int(valid.sum())
        idx = on.nonzero()
        nz_feature.append(idx[:, 2])
        nz_value.append(codes[idx[:, 0], idx[:, 1], idx[:, 2]])
    if n_tokens == 0:
        raise InputError("no tokens to read features from (empty texts?)")
    fidx = torch.cat(nz_feature) if nz_feature else torch.zeros(0, dtype=torch.long)
    fval = torch.cat(nz_value) if nz_value else torch.zeros(0)
    max_act = best.values[:, 0].clamp_min(0.0)
    if features is None:
        score = max_act if rank_by == "max" else active.double()
        order = [j for j in torch.argsort(score, descending=True).tolist() if active[j] > 0][:n_features]
    else:
        order = list(range(F))
    chosen = cols[order]

    # second pass: the per-token activations of each chosen feature around its top contexts
    wanted: dict[int, list[tuple[int, int, int, float]]] = {}  # text -> (slot, rank, token, value)
    for slot, j in enumerate(order):
        for rank, (v, t_i, p_i) in enumerate(best.winners(j)):
            wanted.setdefault(t_i, []).append((slot, rank, p_i, v))
    windows: dict[tuple[int, int], dict[str, Any]] = {}
    text_ids = sorted(wanted)
    for s, ids, codes, _ in scan_codes(model, sae, point, [texts[t] for t in text_ids], chosen,
                                       batch_size=batch_size, max_length=max_length, keep_bos=keep_bos,
                                       what="feature contexts", read=read):
        for b, row_ids in enumerate(ids):
            t_i = text_ids[s + b]
            for slot, rank, p_i, v in wanted[t_i]:
                lo, hi = max(0, p_i - before), min(len(row_ids), p_i + after + 1)
                vals = codes[b, lo:hi, slot].clamp_min(0.0)
                windows[(slot, rank)] = {
                    "value": v, "text_index": t_i, "token_index": p_i, "highlight": p_i - lo,
                    "tokens": token_strings(model.tokenizer, row_ids[lo:hi]),
                    "values": [round(float(x), 5) for x in vals]}

    dirs = residual_directions(model, sae, chosen)
    logits = model.unembed.directions_logits(dirs) if dirs is not None else None
    tok = model.tokenizer
    cards = []
    for slot, j in enumerate(order):
        f = int(cols[j])
        vals = fval[fidx == j]
        top = float(max_act[j])
        edges = torch.linspace(0.0, top if top > 0 else 1.0, bins + 1)
        counts = torch.histc(vals, bins=bins, min=0.0, max=float(edges[-1])) if len(vals) else torch.zeros(bins)
        card: dict[str, Any] = {
            "feature": f, "density": int(active[j]) / n_tokens, "n_active": int(active[j]), "max": top,
            "mean_active": float(vals.mean()) if len(vals) else 0.0,
            "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]},
            "examples": [windows[(slot, r)] for r in range(len(best.winners(j))) if (slot, r) in windows]}
        if logits is not None:
            row = logits[slot]
            k = min(logit_k, row.numel())
            pos, neg = row.topk(k), (-row).topk(k)
            card["logits"] = {
                "positive": [[token_strings(tok, [int(i)])[0], round(float(v), 5)]
                             for v, i in zip(pos.values, pos.indices, strict=True)],
                "negative": [[token_strings(tok, [int(i)])[0], round(float(-v), 5)]
                             for v, i in zip(neg.values, neg.indices, strict=True)]}
            lh = torch.histc(row, bins=bins, min=float(row.min()), max=float(row.max()))
            le = torch.linspace(float(row.min()), float(row.max()), bins + 1)
            card["logit_histogram"] = {"edges": [round(float(e), 6) for e in le], "counts": [int(c) for c in lh]}
        if explanations and f in explanations:
            card["explanation"] = explanations[f]
        cards.append(card)
    return {"kind": "feature_dashboards", "model": model.name, "point": point, "dictionary": sae.cfg.name,
            "d_sae": sae.cfg.d_sae, "n_texts": len(texts), "n_tokens": n_tokens, "rank_by": rank_by,
            "logit_note": None if logits is not None else
            f"no vocabulary effects: {point} is not in the residual stream",
            "features": cards}


def _centres(edges: Sequence[float]) -> list[float]:
    return [round((a + b) / 2, 6) for a, b in itertools.pairwise(edges)]


def neuronpedia_export(dash: Mapping[str, Any], *, model_id: str, layer: int | str, sae_set: str) -> dict[str, Any]:
    """The dashboards with SAEDashboard/Neuronpedia batch-JSON field names. Histogram arrays are parallel
    (bin centres and counts, the same length); each example is one ``activations`` entry with its tokens and
    per-token values and ``qualifying_token_index`` the top token."""
    feats = []
    for c in dash["features"]:
        e, n = c["histogram"]["edges"], c["histogram"]["counts"]
        item: dict[str, Any] = {
            "feature_index": c["feature"], "frac_nonzero": c["density"], "maxActApprox": c["max"],
            "freq_hist_data_bar_values": _centres(e),
            "freq_hist_data_bar_heights": list(n),
            "activations": [{"tokens": ex["tokens"], "values": ex["values"], "bin_min": -1, "bin_max": c["max"],
                             "bin_contains": 1.0, "qualifying_token_index": ex["highlight"]}
                            for ex in c["examples"]]}
        if "logits" in c:
            item.update(pos_str=[t for t, _ in c["logits"]["positive"]],
                        pos_values=[v for _, v in c["logits"]["positive"]],
                        neg_str=[t for t, _ in c["logits"]["negative"]],
                        neg_values=[v for _, v in c["logits"]["negative"]])
            le, ln = c["logit_histogram"]["edges"], c["logit_histogram"]["counts"]
            item.update(logits_hist_data_bar_values=_centres(le),
                        logits_hist_data_bar_heights=list(ln))
        if "explanation" in c:
            item["explanations"] = [{"description": c["explanation"]}]
        feats.append(item)
    return {"model_id": model_id, "layer": str(layer), "sae_set": sae_set, "features": feats}
