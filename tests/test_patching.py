"""Gradients at hook points, activation patching and attribution patching.

Checked against independent computations: captured gradients equal torch.autograd.grad on HF's own
hidden_states and on a raw torch hook's tensor; patching every position of a layer with the clean run
restores the clean metric exactly; attribution patching matches activation patching for a small corruption;
batched patching equals one patch per forward.
"""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.hooks.core import count_hooks
from actlab.patching import activation_patching, attribution_patching, logit_diff
from tiny_models import FAMILIES, tiny_model


def _pair(seed: int = 0, T: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 90, (1, T), generator=g)
    corrupt = clean.clone()
    corrupt[0, 2] = 3 + (int(clean[0, 2]) + 11) % 80  # one token differs
    return clean, corrupt


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_gradients_equal_autograd_on_the_models_own_tensors(family):
    m = tiny_model(family)
    ids, _ = _pair()
    layer = 1
    o_proj = m.module("attn_o", layer)
    raw = {}
    with torch.no_grad():  # transformers 5 records hidden states through hooks it installs on first use
        m.hf(input_ids=ids, output_hidden_states=True)
    baseline = count_hooks(m.hf)

    def keep(mod, args):
        args[0].retain_grad()
        raw["z"] = args[0]

    handle = o_proj.register_forward_pre_hook(keep)
    try:
        with m.capture(f"blocks.{layer}.resid_post,blocks.{layer}.attn.z,blocks.{layer}.attn.pattern",
                       grad=True) as acts:
            out = m.hf(input_ids=ids, output_hidden_states=True)
            metric = out.logits[0, -1, 5] - out.logits[0, -1, 9]
            (g_hidden,) = torch.autograd.grad(metric, out.hidden_states[layer + 1], retain_graph=True)
            metric.backward()
    finally:
        handle.remove()
    assert torch.allclose(acts.grads[f"blocks.{layer}.resid_post"], g_hidden, atol=1e-6)
    z_grad = raw["z"].grad.view(*raw["z"].shape[:-1], m.n_heads, -1)
    assert torch.allclose(acts.grads[f"blocks.{layer}.attn.z"], z_grad, atol=1e-6)
    assert acts.grads[f"blocks.{layer}.attn.pattern"].shape == acts[f"blocks.{layer}.attn.pattern"].shape
    assert count_hooks(m.hf) == baseline


def test_grad_capture_refuses_no_grad_clearly():
    m = tiny_model("llama")
    ids, _ = _pair()
    with pytest.raises(actlab.ActlabError, match="does not require grad"), torch.no_grad(), \
            m.capture("blocks.0.resid_post", grad=True):
        m.hf(input_ids=ids)
    assert count_hooks(m.hf) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_a_whole_layer_restores_the_clean_metric(family):
    m = tiny_model(family)
    clean, corrupt = _pair(1)
    metric = logit_diff(5, 9)
    res = activation_patching(m, clean, corrupt, metric, kinds="resid_pre,attn_out,mlp_out", layers="0,2")
    with torch.no_grad(), m.capture("blocks.1.resid_pre", dtype=None) as acts:
        m.hf(input_ids=clean)
    with torch.no_grad(), m.hooks({"blocks.1.resid_pre": lambda x: acts["blocks.1.resid_pre"].to(x.dtype)}):
        restored = float(metric(m.hf(input_ids=corrupt).logits[:, -1]))
    assert restored == pytest.approx(res.clean_metric, abs=1e-5)
    # at layer 0 only the position whose token differs matters, and patching it there restores the clean run
    row = res.grids["resid_pre"][0]
    assert row[2].item() == pytest.approx(res.clean_metric, abs=1e-5)
    others = torch.cat([row[:2], row[3:]])
    assert torch.allclose(others, torch.full_like(others, res.corrupt_metric), atol=1e-5)
    assert res.normalised("resid_pre")[0, 2].item() == pytest.approx(1.0, abs=1e-4)
    assert count_hooks(m.hf) == 0


def test_batched_patching_equals_one_patch_per_forward():
    m = tiny_model("qwen2")
    clean, corrupt = _pair(2)
    metric = logit_diff(4, 8)
    kw = dict(kinds="resid_pre,attn.z", layers="all")
    a = activation_patching(m, clean, corrupt, metric, batch_size=1, **kw)
    b = activation_patching(m, clean, corrupt, metric, batch_size=64, **kw)
    for k in a.grids:
        assert torch.allclose(a.grids[k], b.grids[k], atol=1e-5)
    h1 = activation_patching(m, clean, corrupt, metric, kinds="attn.z", per_head=True, batch_size=1)
    h2 = activation_patching(m, clean, corrupt, metric, kinds="attn.z", per_head=True, batch_size=7)
    assert h1.grids["attn.z"].shape == (m.n_layers, m.n_heads)
    assert torch.allclose(h1.grids["attn.z"], h2.grids["attn.z"], atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neo", "phi3"])
def test_attribution_matches_activation_patching_for_a_small_corruption(family):
    m = tiny_model(family)
    clean, _ = _pair(3)
    torch.manual_seed(0)
    noise = 1e-3 * torch.randn(1, clean.shape[1], m.d_model)
    corruption = [actlab.Hook("embed", lambda x: x + noise.to(x.dtype), label="noise")]
    metric = logit_diff(5, 9)
    kinds = "resid_pre,attn_out,mlp_out,attn.z"
    act = activation_patching(m, clean, clean, metric, kinds=kinds, corrupt_edits=corruption)
    att = attribution_patching(m, clean, clean, metric, kinds=kinds, corrupt_edits=corruption)
    assert att.corrupt_metric == pytest.approx(act.corrupt_metric, abs=1e-6)
    for k in act.grids:
        exact = act.grids[k] - act.corrupt_metric
        scale = exact.abs().max()
        assert scale > 1e-5  # the corruption moves the metric
        assert (att.grids[k] - exact).abs().max() < 0.05 * scale, k
    heads = activation_patching(m, clean, clean, metric, kinds="attn.z", per_head=True, corrupt_edits=corruption)
    heads_att = attribution_patching(m, clean, clean, metric, kinds="attn.z", per_head=True,
                                     corrupt_edits=corruption)
    exact = heads.grids["attn.z"] - heads.corrupt_metric
    assert (heads_att.grids["attn.z"] - exact).abs().max() < 0.05 * exact.abs().max()
    assert count_hooks(m.hf) == 0


def test_bad_patching_requests_fail_clearly():
    m = tiny_model("llama")
    clean, corrupt = _pair()
    metric = logit_diff(5, 9)
    with pytest.raises(actlab.ActlabError, match="same number of tokens"):
        activation_patching(m, clean, corrupt[:, :4], metric)
    with pytest.raises(actlab.ActlabError, match="per-head patching needs per-head kinds"):
        activation_patching(m, clean, corrupt, metric, kinds="resid_pre", per_head=True)
    with pytest.raises(actlab.ActlabError, match="not the pattern"):
        attribution_patching(m, clean, corrupt, metric, kinds="attn.pattern")
    with pytest.raises(actlab.ActlabError, match="unknown hook-point kind 'resid_psot'"):
        activation_patching(m, clean, corrupt, metric, kinds="resid_psot")


def test_patch_command_writes_json_figures_and_a_report_section(tmp_path, capsys):
    from actlab.report.run_report import build_report
    from conftest import shared_path
    from test_cli import run

    shared_path("models", "stories260k")
    out = tmp_path / "patch"
    args = ["patch", "stories260k", "--clean", "Once upon a time there was a big dog", "--corrupt",
            "Once upon a time there was the big dog", "--answer", " and", "--wrong", " was", "--layers", "0-4",
            "--out", str(out)]
    code, _, err = run(args, capsys)
    assert code == 0, err
    import json

    doc = json.loads((out / "patching.json").read_text())
    assert doc["kind"] == "patching" and set(doc["methods"]) == {"activation", "attribution"}
    grid = doc["methods"]["activation"]["normalised"]["resid_pre"]
    assert len(grid) == 5 and len(grid[0]) == len(doc["tokens"])
    assert max(grid[0]) == pytest.approx(1.0, abs=1e-4)  # layer 0, the token that differs: the clean run back
    assert (out / "patching_activation.png").stat().st_size > 0 and (out / "run.json").is_file()
    html = build_report(out).read_text()
    assert "How to read this" in html and "largest effect at" in html
    code, _, err = run([*args[:-2], "--out", str(tmp_path / "p2"), "--method", "gradient"], capsys)
    assert code == 2 and "'gradient'" in err and "attribution" in err
    code, _, err = run(["patch", "stories260k", "--clean", "Once upon a time", "--corrupt", "Once",
                        "--answer", " there", "--wrong", " a", "--out", str(tmp_path / "p3")], capsys)
    assert code == 2 and "same number of tokens" in err


def test_grad_capture_of_a_derived_point_is_refused_clearly():
    m = tiny_model("gpt_neox")  # parallel residual: resid_mid has no module of its own
    with pytest.raises(actlab.ActlabError, match=r"blocks\.1\.resid_mid is a sum with no module"), \
            m.capture("blocks.1.resid_mid", grad=True):
        pass
    assert count_hooks(m.hf) == 0
