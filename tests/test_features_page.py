"""Feature dashboards: every number checked against a direct computation (capture + encode, the unembedding
by hand), token text spaced as the tokenizer decodes it, the Neuronpedia-style export well formed, and the
page driven in headless Chromium."""

from __future__ import annotations

import json

import pytest
import torch

from actlab.data import read_texts
from actlab.models.tokens import token_strings
from actlab.sae import SAEConfig, SparseAutoencoder
from actlab.sae.dashboard import feature_dashboards, neuronpedia_export, residual_directions
from conftest import shared_path


@pytest.fixture(scope="module")
def texts():
    return read_texts(shared_path("data", "imdb", "imdb_test_sample.csv"), limit=24)


def _sae(model, point, seed=0):
    torch.manual_seed(seed)
    width = model.d_mlp if point.endswith("mlp_hidden") else model.d_model
    sae = SparseAutoencoder(SAEConfig(width, 2 * width, hook_point=point))
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)  # sparser than a fresh dictionary, so densities are not all ~0.5
    return sae


@torch.no_grad()
def _direct_codes(model, sae, text, max_length=128):
    enc = model.tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    acts = model.activations(enc, sae.cfg.hook_point, positions="all", dtype=torch.float32)
    return enc["input_ids"][0].tolist(), sae.encode(acts[sae.cfg.hook_point][0])


@pytest.mark.parametrize("point", ["blocks.1.mlp_out", "blocks.0.mlp_hidden"])
def test_dashboard_numbers_match_a_direct_computation(tinystories, texts, point):
    model = tinystories
    sae = _sae(model, point)
    feats = [3, 17, 40]
    dash = feature_dashboards(model, sae, texts, features=feats, contexts=4, before=5, after=2, bins=12)
    # the reference: every text captured and encoded on its own, BOS left out as the dashboard does
    per_text = [_direct_codes(model, sae, t) for t in texts]
    bos = model.tokenizer.bos_token_id
    n_tokens = sum(len(ids) - (1 if ids and ids[0] == bos else 0) for ids, _ in per_text)
    assert dash["n_tokens"] == n_tokens
    for card, f in zip(dash["features"], feats, strict=True):
        assert card["feature"] == f
        vals = torch.cat([c[(1 if ids and ids[0] == bos else 0):, f] for ids, c in per_text])
        active = vals[vals > 0]
        assert card["n_active"] == len(active) and card["density"] == pytest.approx(len(active) / n_tokens)
        assert sum(card["histogram"]["counts"]) == len(active)
        assert card["max"] == pytest.approx(float(vals.max()), rel=1e-4, abs=1e-5)
        assert len(card["histogram"]["edges"]) == len(card["histogram"]["counts"]) + 1
        for ex in card["examples"]:
            ids, codes = per_text[ex["text_index"]]
            lo = ex["token_index"] - ex["highlight"]
            window = ids[lo:lo + len(ex["tokens"])]
            assert ex["values"] == pytest.approx(codes[lo:lo + len(window), f].clamp_min(0).tolist(),
                                                 rel=1e-4, abs=1e-4)
            assert ex["values"][ex["highlight"]] == pytest.approx(ex["value"], rel=1e-4, abs=1e-4)
            assert "".join(ex["tokens"]) == model.tokenizer.decode(window, clean_up_tokenization_spaces=False)
        values = [ex["value"] for ex in card["examples"]]
        assert values == sorted(values, reverse=True)
        if values:
            assert values[0] == pytest.approx(card["max"], rel=1e-4)
        # promoted tokens: the decoder direction through the final norm's gain and the unembedding, by hand
        d = sae.W_dec[f].detach()
        if point.endswith("mlp_hidden"):
            down = model.layers[0].mlp.down_proj.weight.detach()
            d = down @ d
        g = model.final_norm_module.weight.detach()
        by_hand = model.lm_head.weight.detach() @ (g * d)
        top = by_hand.topk(5).indices.tolist()
        shown = [t for t, _ in card["logits"]["positive"][:5]]
        assert shown == [token_strings(model.tokenizer, [i])[0] for i in top]
    assert torch.allclose(residual_directions(model, sae, torch.tensor(feats))[0],
                          (model.layers[0].mlp.down_proj.weight @ sae.W_dec[3]).detach()
                          if point.endswith("mlp_hidden") else sae.W_dec[3].detach(), atol=1e-5)


def test_default_selection_ranks_features_and_export_is_parallel(tinystories, texts):
    sae = _sae(tinystories, "blocks.1.mlp_out", seed=1)
    by_max = feature_dashboards(tinystories, sae, texts, n_features=5, contexts=2)
    by_density = feature_dashboards(tinystories, sae, texts, n_features=5, contexts=2, rank_by="density")
    maxes = [c["max"] for c in by_max["features"]]
    dens = [c["density"] for c in by_density["features"]]
    assert maxes == sorted(maxes, reverse=True) and dens == sorted(dens, reverse=True)
    every = feature_dashboards(tinystories, sae, texts, features=list(range(sae.cfg.d_sae)), contexts=1, bins=4)
    assert max(maxes) == pytest.approx(max(c["max"] for c in every["features"]))
    assert max(dens) == pytest.approx(max(c["density"] for c in every["features"]))
    np_json = neuronpedia_export(by_max, model_id="tinystories-656k", layer=1, sae_set="test")
    json.dumps(np_json, allow_nan=False)
    for item in np_json["features"]:
        assert len(item["freq_hist_data_bar_values"]) == len(item["freq_hist_data_bar_heights"])
        assert len(item["logits_hist_data_bar_values"]) == len(item["logits_hist_data_bar_heights"])
        assert len(item["pos_str"]) == len(item["pos_values"]) == 10
        for a in item["activations"]:
            assert len(a["tokens"]) == len(a["values"]) and 0 <= a["qualifying_token_index"] < len(a["tokens"])


def test_bad_arguments(tinystories, texts):
    sae = _sae(tinystories, "blocks.1.mlp_out")
    with pytest.raises(Exception, match=r"ranking"):
        feature_dashboards(tinystories, sae, texts, rank_by="loudness")
    with pytest.raises(Exception, match=r"features must be in 0\.\.255"):
        feature_dashboards(tinystories, sae, texts, features=[999])
    with pytest.raises(Exception, match="contexts must be at least 1"):
        feature_dashboards(tinystories, sae, texts, contexts=0)


def test_feature_page_in_chromium(tinystories, texts, tmp_path):
    from actlab.report.features import feature_page
    from test_analysis import _chromium, chromium_page

    _chromium()  # skip before any work where Chromium is absent
    sae = _sae(tinystories, "blocks.1.mlp_out", seed=2)
    dash = feature_dashboards(tinystories, sae, texts, n_features=6, contexts=3,
                              explanations={0: "<script>alert(1)</script> reviews"})
    dash["features"][0]["examples"][0]["tokens"][0] = "<b>x</b>"  # token text must stay text
    path = feature_page(dash, tmp_path / "features.html")
    html = path.read_text()
    assert "<b>x</b>" not in html and "<script>alert(1)" not in html
    with chromium_page() as (page, console, requests):
        page.goto(path.as_uri())
        first, second = dash["features"][0]["feature"], dash["features"][1]["feature"]
        assert page.is_visible(f"#f{first}") and not page.is_visible(f"#f{second}")  # one card at a time
        page.click(f"tr[data-target='f{second}']")
        page.wait_for_function(f"location.hash === '#f{second}'")
        assert page.is_visible(f"#f{second}") and not page.is_visible(f"#f{first}")
        page.fill("#search", str(second))
        shown = page.eval_on_selector_all("table.idx tbody tr", "rs => rs.filter(r => r.style.display !== "
                                          "'none').map(r => r.dataset.target)")
        assert f"f{second}" in shown and len(shown) < len(dash["features"])
        page.fill("#search", "")
        page.click("table.idx th:nth-child(3)")  # sort by max, ascending then descending
        page.click("table.idx th:nth-child(3)")
        order = page.eval_on_selector_all("table.idx tbody tr td:nth-child(3)", "tds => tds.map(t => "
                                          "parseFloat(t.dataset.v))")
        assert order == sorted(order, reverse=True)
        assert page.eval_on_selector_all(f"#f{second} .ctx span", "s => s.length") > 3
        page.screenshot(path=str(tmp_path / "features.png"), full_page=False)
    assert [c for c in console if c[0] in ("error", "pageerror")] == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
