"""Per-layer separability, distances and growth fits (issue 25, control-vectors study "layers untangle the
space"): planted ground truths for the pure functions, transformers' own hidden states for the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

from actlab.analysis.untangling import distances, exponential_fit, probe_accuracy, untangling
from test_cli import run


def test_exponential_fit_recovers_a_planted_growth():
    layers = list(range(1, 12))
    fit = exponential_fit(layers, [3.0 * 1.2 ** x for x in layers])
    assert fit["growth"] == pytest.approx(1.2, rel=1e-9) and fit["r2"] == pytest.approx(1.0)
    assert math.exp(fit["intercept"]) == pytest.approx(3.0, rel=1e-9)
    rng = np.random.default_rng(0)
    noisy = exponential_fit(layers, list(rng.uniform(1, 10, len(layers))))  # no growth: a poor fit
    assert noisy["r2"] < 0.5
    linear = exponential_fit(layers, [1.0 + x for x in layers])  # linear growth is not exponential: R2 < 1
    assert linear["r2"] < 0.97
    assert exponential_fit([1], [2.0]) is None and exponential_fit([1, 2], [0.0, -1.0]) is None


def test_probe_accuracy_separates_only_separable_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(80, 16, generator=g)
    b = torch.randn(80, 16, generator=g)
    shifted = b.clone()
    shifted[:, 3] += 6.0
    sep = probe_accuracy(a, shifted, seed=1)
    same = probe_accuracy(a, b, seed=1)
    assert sep["test_accuracy"] >= 0.95 and sep["n_test"] == 40 and sep["n_train"] == 120
    assert 0.3 <= same["test_accuracy"] <= 0.7 and same["chance"] == 0.5


def test_distances_match_scipy():
    g = torch.Generator().manual_seed(2)
    p, n = torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g) + 2
    d = distances(p, n)
    allp = np.concatenate([p.numpy(), n.numpy()]).astype(np.float64)
    assert d["all"] == pytest.approx(pdist(allp).mean(), rel=1e-9)
    within = np.concatenate([pdist(p.double().numpy()), pdist(n.double().numpy())]).mean()
    assert d["within"] == pytest.approx(within, rel=1e-9)
    assert d["between"] == pytest.approx(cdist(p.double().numpy(), n.double().numpy()).mean(), rel=1e-9)


def test_untangling_fits_a_planted_spread():
    """Activations whose spread is multiplied by 1.5 per layer: distance growth 1.5, variance growth 2.25."""
    g = torch.Generator().manual_seed(3)
    base_p, base_n = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
    layers = list(range(6))
    res = untangling(layers, [base_p * 1.5 ** i for i in layers], [base_n * 1.5 ** i for i in layers])
    assert res["distance_growth"]["growth"] == pytest.approx(1.5, rel=1e-6)
    assert res["variance_growth"]["growth"] == pytest.approx(2.25, rel=1e-6)
    assert res["distance_growth"]["layers"] == [1, 2, 3, 4, 5]  # the embeddings left out


def test_layers_untangle_against_transformers_hidden_states(tmp_path, capsys, tinystories):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"positive": f"I loved the film, it was great {i}", "negative": f"I hated the film, it was awful {i}"}
            for i in range(12)]
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "layers"
    code, stdout, err = run(["layers", "tinystories-656k", "--pairs", str(pairs), "--streams", "resid_pre",
                             "--untangle", "--out", str(out)], capsys)
    assert code == 0, err
    assert "held-out linear separability" in stdout and "mean variance grows" in stdout
    res = json.loads((out / "untangling.json").read_text())
    m = tinystories

    def last_hidden(texts, layer):
        ids = [m.tokenizer(t, return_tensors="pt")["input_ids"] for t in texts]
        with torch.no_grad():
            return torch.stack([m.hf(x, output_hidden_states=True).hidden_states[layer][0, -1] for x in ids])

    for layer in (0, 1):
        p = last_hidden([r["positive"] for r in rows], layer).double().numpy()
        n = last_hidden([r["negative"] for r in rows], layer).double().numpy()
        row = res["layers"][layer]
        assert row["distance"]["all"] == pytest.approx(pdist(np.concatenate([p, n])).mean(), rel=1e-4)
        assert row["mean_variance"] == pytest.approx(np.concatenate([p, n]).var(0, ddof=1).mean(), rel=1e-4)
        assert row["n_test"] == 6 and row["n_train"] == 18
    lm = json.loads((out / "layer_metrics.json").read_text())
    mean_var = [(a + b) / 2 for a, b in zip(lm["var_mean"]["resid_pre"]["positive"],
                                            lm["var_mean"]["resid_pre"]["negative"], strict=True)]
    b, _ = np.polyfit([0, 1], np.log(mean_var), 1)
    assert lm["variance_growth"]["resid_pre"]["growth"] == pytest.approx(math.exp(b), rel=1e-9)
    code, _, err = run(["report", str(out)], capsys)
    assert code == 0, err
    html = next(out.glob("*.html")).read_text()
    assert "held-out accuracy" in html and "growth per layer" in html and "mean variance grows per layer" in html


def test_paired_sets_are_split_by_pair():
    """Item i of each set shares a 'question' feature and differs only by an XOR-like answer code no linear probe
    reads: split by pair, the held-out accuracy sits near chance; split independently, a probe that matches
    questions scores far below chance (the leak the pairing prevents)."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(100, 32, generator=g) * 3
    letter = (torch.rand(100, generator=g) > 0.5).float()
    pos = torch.cat([q, letter[:, None]], 1)
    neg = torch.cat([q, 1 - letter[:, None]], 1)  # the other letter: the class is letter XOR label
    acc = probe_accuracy(pos, neg, seed=0)["test_accuracy"]
    assert 0.3 <= acc <= 0.7
    leaky = probe_accuracy(pos, neg[:-1], seed=0)["test_accuracy"]  # unequal lengths: split independently
    assert leaky < acc
