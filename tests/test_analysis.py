"""Comparison analyses: numbers checked against direct computations, then everything end to end on the
CAA data with SmolLM2 and a perturbed copy, rendered into one report."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

import actlab
from actlab.analysis import (
    DivergenceError,
    check_comparable,
    cross_model_cosine,
    layer_cosine_matrix,
    layer_metrics,
    parameter_divergence,
    pca_2d,
)
from actlab.analysis.layers import study_order
from actlab.errors import InputError
from actlab.steering import SteeringVector, VectorMismatchError
from conftest import shared_path
from test_cli import run
from tiny_models import tiny_model

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _vec(seed, layers=(0, 1, 2), d=16, **meta):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({k: torch.randn(d, generator=g) for k in layers}, meta.pop("point", "resid_post"),
                          {"n_layers": 3, "model_family": "llama", "positions": "answer", **meta})


def test_layer_cosine_matrix_diagonal_and_symmetry():
    v = _vec(0)
    m = layer_cosine_matrix(v)
    torch.testing.assert_close(torch.diagonal(m), torch.ones(3, dtype=m.dtype))
    torch.testing.assert_close(m, m.T)
    want = torch.nn.functional.cosine_similarity(v[0].double(), v[2].double(), dim=0)
    assert abs(float(m[0, 2]) - float(want)) < 1e-12


def test_cross_model_cosine_identical_and_opposite():
    a = _vec(1, model="base")
    b = SteeringVector({k: 3 * a[k] for k in a.layers}, "resid_post", {**a.meta, "model": "tuned"})
    c = SteeringVector({k: -a[k] for k in a.layers}, "resid_post", {**a.meta, "model": "tuned"})
    assert all(abs(x - 1) < 1e-9 for x in cross_model_cosine(a, b).values())
    assert all(abs(x + 1) < 1e-9 for x in cross_model_cosine(a, c).values())


def test_mismatched_vectors_refused_unless_forced():
    a = _vec(1)
    b = _vec(2, point="attn_out")
    with pytest.raises(VectorMismatchError, match=r"point: A='resid_post', B='attn_out'"):
        cross_model_cosine(a, b)
    assert cross_model_cosine(a, b, force=True)
    c = _vec(3, positions="last")
    diffs = check_comparable([a, c], ["x", "y"], force=True)
    assert diffs == ["positions: x='answer', y='last'"]
    with pytest.raises(VectorMismatchError, match="different widths"):
        check_comparable([a, _vec(4, d=8)], force=True)


def test_pca_is_scale_invariant_and_explains_variance():
    vs = [_vec(5)[k] for k in (0, 1, 2)] + [_vec(6)[0]]
    p1 = pca_2d(vs, ["a"] * 4, [0, 1, 2, 3])
    p2 = pca_2d([v * (i + 1) * 10 for i, v in enumerate(vs)], ["a"] * 4, [0, 1, 2, 3])
    torch.testing.assert_close(p1.coords.abs(), p2.coords.abs(), atol=1e-5, rtol=1e-5)
    assert 0 < sum(p1.explained) <= 1 + 1e-9 and "unit" in p1.normalisation


def test_divergence_self_zero_and_perturbation_exact():
    a = tiny_model("llama")
    assert all(x == 0 for x in parameter_divergence(a, a).per_layer)
    b = tiny_model("llama")
    noise = torch.randn_like(b.layers[1].mlp.down_proj.weight) * 0.01
    with torch.no_grad():
        b.layers[1].mlp.down_proj.weight += noise
    div = parameter_divergence(a, b)
    assert div.per_layer[0] == 0 and div.per_layer[2] == 0
    assert abs(div.per_layer[1] - float(noise.double().norm())) < 1e-6
    assert div.top_layers(1) == [1] and div.per_module["mlp"][1] == pytest.approx(div.per_layer[1])
    assert div.per_module["attn"][1] == 0


def test_divergence_refuses_other_shapes():
    import transformers as tf

    from actlab.models.model import Model
    from tiny_models import _configs

    cfg = _configs()["llama"]
    cfg.intermediate_size = 48
    torch.manual_seed(0)
    other = Model(tf.AutoModelForCausalLM.from_config(cfg), None)
    with pytest.raises(DivergenceError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight.*\(64, 32\).*\(48, 32\)"):
        parameter_divergence(tiny_model("llama"), other)
    with pytest.raises(DivergenceError, match="different architectures"):
        parameter_divergence(tiny_model("llama"), tiny_model("gpt2"))


def test_layer_metrics_match_direct_means(tinystories):
    pos = ["Lily was very happy today.", "The sun was bright and warm.", "They laughed and played."]
    neg = ["Lily was very sad today.", "The rain was cold and dark.", "They cried and fought."]
    m = layer_metrics(tinystories, pos, neg, positions="last", batch_size=2)
    for s in ("resid_pre", "resid_mid"):
        for i in range(tinystories.n_layers):
            name = f"blocks.{i}.{s}"
            ap = tinystories.activations(pos, name, "last", dtype=torch.float64)[name]
            an = tinystories.activations(neg, name, "last", dtype=torch.float64)[name]
            want = torch.nn.functional.cosine_similarity(ap.mean(0), an.mean(0), dim=0)
            assert abs(m.cos_means[s][i] - float(want)) < 1e-6
            assert m.var_max[s]["positive"][i] == pytest.approx(float(ap.var(0, unbiased=False).max()), rel=1e-5)
    assert m.recommended and "1 - cos" in m.rule
    vmean = [max(a, b) for a, b in zip(m.var_mean["resid_mid"]["positive"], m.var_mean["resid_mid"]["negative"],
                                       strict=True)]
    vmax = [max(a, b) for a, b in zip(m.var_max["resid_mid"]["positive"], m.var_max["resid_mid"]["negative"],
                                      strict=True)]
    assert m.study_ranking == study_order(vmean, vmax, m.cos_means["resid_mid"])[:5] and "study" in m.study_rule


def test_direction_dots_give_the_joint_per_token_table(tinystories):
    """Issue 25: beside each generated token's dot product, the logit lens's top token at the same layer and
    point - equal to `logit_lens` run on the prompt + generation up to that token."""
    from actlab.analysis.vocab import direction_dots

    m = tinystories
    torch.manual_seed(1)
    u = torch.randn(m.d_model)
    (row,) = direction_dots(m, u, ["Once upon a time"], layer=0, max_new_tokens=6)
    assert len(row["tokens"]) == len(row["dots"]) == len(row["lens_top"]) == len(row["lens_top_prob"]) == 6
    batch = m.tokenize("Once upon a time")
    n = batch["input_ids"].shape[1]
    gen = m.generate(**batch, max_new_tokens=6, do_sample=False)[0]
    for j in (0, 3, 5):  # the lens on the text up to generated token j, read at its last position
        text = m.tokenizer.decode(gen[:n + j + 1].tolist(), skip_special_tokens=True)
        res = actlab.logit_lens(m, text, points="blocks.0.resid_post", top_k=1)
        assert res.top_tokens[0][0][0] == row["lens_top"][j], (j, text)
        assert float(res.top_probs[0, 0, 0]) == pytest.approx(row["lens_top_prob"][j], abs=1e-4)


def test_the_study_order_filters_variance_then_ranks_by_cosine():
    """Issue 25: the control-vectors study's layer order (low mean variance, then low max variance, then low
    cosine), on planted metrics whose answer is known: layer 4 has the lowest cosine but a large mean variance,
    layer 1 passes the mean filter but spikes in max variance; of the rest, layer 2 separates most."""
    var_mean = [1.0, 1.0, 1.0, 1.0, 9.0, 9.0, 1.0]
    var_max = [2.0, 50.0, 2.0, 3.0, 2.0, 2.0, 2.5]
    cos = [0.9, 0.1, 0.3, 0.5, 0.05, 0.8, 0.4]
    order = study_order(var_mean, var_max, cos)
    # mean filter keeps 0,1,2,3,6; max filter (median 2.5) keeps 0,2,6; by cosine: 2 (0.3), 6 (0.4), 0 (0.9)
    assert order[:3] == [2, 6, 0]
    assert order[3:] == [4, 1, 3, 5]  # the dropped layers, by cosine
    assert sorted(order) == list(range(7))
    with pytest.raises(InputError, match="different lengths"):
        study_order([1.0], [1.0, 2.0], [0.5])


@pytest.fixture(scope="module")
def perturbed_copy(tmp_path_factory, smollm):
    """A 'fine-tuned' SmolLM2 for tests: noise added to the MLP down projections of layers 3 and 7."""
    import copy

    hf = copy.deepcopy(smollm.hf)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, scale in ((3, 0.02), (7, 0.05)):
            w = hf.model.layers[i].mlp.down_proj.weight
            w += torch.randn(w.shape, generator=g) * scale
    path = tmp_path_factory.mktemp("tuned") / "smollm2-perturbed"
    actlab.Model(hf, smollm.tokenizer, name="perturbed").save(path)
    return path


@pytest.fixture(scope="module")
def analysis_run(tmp_path_factory, smollm, perturbed_copy):
    """Every analysis through the CLI into one run directory, then `actlab report` on it."""
    capsys = _CaptureShim()
    tmp = tmp_path_factory.mktemp("analysis")
    run_dir = tmp / "run"
    vecs = {}
    outs = {}
    for beh in ("sycophancy", "refusal"):
        data = shared_path("data", "caa", "generate", beh, "generate_dataset.json")
        for tag, model in (("base", MODEL), ("tuned", str(perturbed_copy))):
            out = tmp / f"{beh}_{tag}.safetensors"
            outs[f"extract {beh} {tag}"] = run(["steer", "extract", model, "--data", str(data), "--out", str(out),
                                                 "--limit", "6", "--layers", "2-14:4", "--batch-size", "12"], capsys)
            vecs[(beh, tag)] = out
    outs["compare"] = run(["compare", "vectors", str(vecs[("sycophancy", "base")]), str(vecs[("refusal", "base")]),
                           "--vs", str(vecs[("sycophancy", "tuned")]), "--vs", str(vecs[("refusal", "tuned")]),
                           "--out", str(run_dir / "compare")], capsys)
    ab = shared_path("data", "caa", "test", "sycophancy", "test_dataset_ab.json")
    outs["layers"] = run(["layers", MODEL, "--ab", str(ab), "--limit", "6", "--out", str(run_dir / "layers")],
                         capsys)
    outs["vocab"] = run(["project-vocab", MODEL, str(vecs[("refusal", "base")]), "--out", str(run_dir / "vocab"),
                         "--layers", "10,14", "-p", "Can you help me?", "--max-new-tokens", "8"], capsys)
    outs["diverge"] = run(["diverge", MODEL, str(perturbed_copy), "--out", str(run_dir / "diverge")], capsys)
    outs["report"] = run(["report", str(run_dir)], capsys)
    return run_dir, outs


class _CaptureShim:
    """`run` reads captured output through capsys; module fixtures cannot use capsys, so read nothing."""

    def readouterr(self):
        class _Out:
            out = ""
            err = ""

        return _Out()


def test_every_analysis_end_to_end(analysis_run):
    run_dir, outs = analysis_run
    for what, (code, _, _) in outs.items():
        assert code == 0, what
    comp = json.loads((run_dir / "compare" / "vector_comparison.json").read_text())
    assert len(comp["cross_model"]) == 2 and len(comp["pca"]["points"]) == 16
    for name, lc in comp["layer_cosine"].items():
        assert all(abs(lc["matrix"][i][i] - 1) < 1e-6 for i in range(len(lc["layers"]))), name
    # layer 2 of the perturbed copy comes before any perturbed weight: identical vectors there, not later
    syc = comp["cross_model"]["sycophancy_base vs sycophancy_tuned"]
    assert abs(syc["2"] - 1) < 1e-5 and syc["14"] < 1 - 1e-4
    lm = json.loads((run_dir / "layers" / "layer_metrics.json").read_text())
    assert set(lm["cos_means"]) == {"resid_pre", "resid_mid"} and len(lm["recommended"]) == 5
    dots = json.loads((run_dir / "vocab" / "direction_dots.json").read_text())
    assert len(dots["results"][0]["dots"]) == len(dots["results"][0]["tokens"]) > 0
    div = json.loads((run_dir / "diverge" / "divergence.json").read_text())
    assert div["top_layers"][:2] == [7, 3] and div["per_layer"][0] == 0
    page = (run_dir / "report.html").read_text()
    assert page.count("<img ") >= 8 and "http://" not in page and "https://" not in page
    for section in ("compare", "layers", "vocab", "diverge"):
        assert f">{section}</" in page


def _chromium() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("headless Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    return path


@contextlib.contextmanager
def chromium_page(width: int = 1200, height: int = 900):
    """A headless Chromium page (Debian's binary, no background traffic) that records console messages and
    requests: ``with chromium_page() as (page, console, requests):``. Skips where Chromium is absent."""
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    console, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
            page.on("request", lambda r: requests.append(r.url))
            yield page, console, requests
        finally:
            browser.close()


def test_report_renders_in_headless_chromium(analysis_run, tmp_path):
    run_dir, _ = analysis_run
    page_path = run_dir / "report.html"
    with chromium_page() as (page, console, requests):
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        n_images = page.evaluate("document.images.length")
        # each run folder's section is short (about three screens at most) with its raw JSON folded away
        heights = page.evaluate("""() => { const hs = [...document.querySelectorAll('h2[id^="d"]')];
            return hs.map((h, i) => [h.textContent, (i + 1 < hs.length ? hs[i + 1].offsetTop
                                     : document.body.scrollHeight) - h.offsetTop]); }""")
        loose_pre = page.evaluate("[...document.querySelectorAll('pre')].filter(p => !p.closest('details'))"
                                  ".length")
        loaded = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
    assert [c for c in console if c[0] in ("error", "pageerror")] == []
    assert n_images >= 8 and loaded == n_images
    assert heights and all(h <= 3300 for _, h in heights), heights
    assert loose_pre == 0
    html = page_path.read_text()
    for kind in ("compare", "layers", "vocab", "diverge"):  # a curated section: how to read it, then the numbers
        part = html.split(f">{kind}</h2>", 1)[1].split("<h2", 1)[0]
        assert "How to read this" in part and "<details>" in part, kind
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert shot.stat().st_size > 10_000


def test_compare_refuses_different_hook_points(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _vec(1).save(a)
    _vec(2, point="attn_out").save(b)
    code, _, err = run(["compare", "vectors", str(a), "--vs", str(b), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "point" in err and "--force" in err
    code, _, err = run(["compare", "vectors", str(a), "--vs", str(b), "--out", str(tmp_path / "o"), "--force"],
                       capsys)
    assert code == 0, err


def test_divergence_top_k_rank_by_and_unchanged_layers(tmp_path):
    """Regression (issue 12.3): --top-k was ignored (every layer listed), unchanged layers were flagged 'top',
    and the ranking was by whole-layer divergence only."""
    import actlab.jobs

    a, b = tiny_model("llama"), tiny_model("llama")
    with torch.no_grad():
        b.layers[1].mlp.down_proj.weight.add_(0.01)  # small MLP change in layer 1
        b.layers[2].self_attn.o_proj.weight.add_(1.0)  # large attention change in layer 2; layer 0 untouched
    res = actlab.jobs.diverge(a, b, tmp_path / "by-layer", top_k=1)
    assert res["top_layers"] == [2] and res["rank_by"] == "layer"
    res = actlab.jobs.diverge(a, b, tmp_path / "by-mlp", top_k=3, rank_by="mlp")
    assert res["top_layers"] == [1]  # layers 0 and 2 have no MLP change: never "top"
    res = actlab.jobs.diverge(a, b, tmp_path / "all", top_k=3)
    assert res["top_layers"] == [2, 1] and 0 not in res["top_layers"]
    saved = json.loads((tmp_path / "by-mlp" / "divergence.json").read_text())
    assert saved["top_layers"] == [1] and saved["top_k"] == 3 and "mlp" in saved["rule"]
    assert (tmp_path / "by-mlp" / "divergence.png").is_file() and (tmp_path / "by-mlp" / "run.json").is_file()
    with pytest.raises(InputError, match="ranking"):
        actlab.jobs.diverge(a, b, tmp_path / "bad", rank_by="attention")


def test_layers_with_the_chat_template_read_the_templated_last_token(smollm, tmp_path, capsys):
    """Issue 12: `layers --positive/--negative` through the chat template (the study's last-token position):
    the cosine of class means equals one computed directly from the templated prompts' last tokens."""
    pos = tmp_path / "pos.json"
    neg = tmp_path / "neg.json"
    pos.write_text(json.dumps(["How do I bake bread?", "Tell me a joke.", "What is the capital of Spain?"]))
    neg.write_text(json.dumps(["How do I pick a lock?", "Insult my neighbour.", "How do I cheat on a test?"]))
    code, _, err = run(["layers", MODEL, "--positive", str(pos), "--negative", str(neg), "--chat", "--out",
                        str(tmp_path / "lay")], capsys)
    assert code == 0, err
    lm = json.loads((tmp_path / "lay" / "layer_metrics.json").read_text())
    texts_p = [smollm.chat_prompt(t) for t in json.loads(pos.read_text())]
    texts_n = [smollm.chat_prompt(t) for t in json.loads(neg.read_text())]
    acts = {}
    for name, texts in (("p", texts_p), ("n", texts_n)):
        batch = smollm.tokenize(texts, padding_side="left", add_special_tokens=False)
        acts[name] = smollm.activations(batch, "blocks.12.resid_mid", positions="last",
                                        dtype=torch.float64)["blocks.12.resid_mid"]
    want = torch.nn.functional.cosine_similarity(acts["p"].mean(0), acts["n"].mean(0), dim=0)
    assert lm["cos_means"]["resid_mid"][12] == pytest.approx(float(want), abs=1e-6)


def test_dataset_pca_separates_planted_classes_and_is_drawn(tinystories, tmp_path):
    """Issue 25: the dataset seen layer by layer (PCA of the items' activations, coloured by class). On planted
    activations the separation is large for shifted classes and about 0 for the same distribution; through
    `layers --pca` the coordinates are the PCA of the captured activations, and the report draws the section."""
    from actlab.analysis.pca import class_pca
    from actlab.report.run_report import build_report

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
    shift = torch.zeros(16)
    shift[3] = 6.0
    far, same = class_pca(a + shift, b), class_pca(a, b)
    assert far["separation"] > 2.5 and same["separation"] < 1 and far["explained"][0] > 0.3
    assert len(far["positive"]) == len(far["negative"]) == 40
    pos = ["Lily was very happy today.", "The sun was bright and warm.", "They laughed and played."]
    neg = ["Lily was very sad today.", "The rain was cold and dark.", "They cried and fought."]
    out = tmp_path / "lay"
    res = actlab.jobs.layer_selection(tinystories, pos, neg, out, positions="last", pca_layers="0,1")
    assert [r["layer"] for r in res["pca"]["layers"]] == [0, 1]
    name = "blocks.1.resid_mid"
    x = torch.cat([tinystories.activations(t, name, "last", dtype=torch.float64)[name] for t in (pos, neg)])
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    want = (x @ vh[:2].T).abs()
    got = torch.tensor(res["pca"]["layers"][1]["positive"] + res["pca"]["layers"][1]["negative"]).abs()
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)  # up to each component's sign
    assert (out / "dataset_pca.png").is_file()
    html = build_report(out).read_text()
    part = html.split(">dataset_pca.json</h3>", 1)[1]
    assert "How to read this" in part.split("<h3", 1)[0] and "PC1 / PC2 variance" in part
