"""SAELens and Gemma Scope dictionaries: every flag that changes the computed function is honoured (checked
against a reference written from SAELens's own formulas) or refused in one line; JumpReLU works for encode,
decode, splice and top examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from actlab.errors import InputError
from actlab.sae import FeatureEdit, SAEConfig, load_sae, save_sae, top_examples
from actlab.sae.train import TrainConfig, Trainer
from tiny_models import tiny_model

D_IN, D_SAE = 16, 40


def _weights(seed: int, jump: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.5,
         "W_dec": torch.randn(D_SAE, D_IN, generator=g) * torch.rand(D_SAE, 1, generator=g) * 3,  # rows not unit
         "b_enc": torch.randn(D_SAE, generator=g) * 0.3, "b_dec": torch.randn(D_IN, generator=g)}
    if jump:
        w["threshold"] = torch.rand(D_SAE, generator=g) * 0.8
    return w


def _folder(tmp_path, name, w, **cfg):
    d = tmp_path / name
    d.mkdir()
    save_file(w, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.1.hook_resid_post",
                                            "model_name": "m", **cfg}))
    return d


# references, written from SAELens's TopKSAE / JumpReLUSAE / StandardSAE encode and decode
def _ref_in(w, x, apply_b_dec=True):
    return (x - w["b_dec"] if apply_b_dec else x) @ w["W_enc"] + w["b_enc"]


def _ref_topk(w, x, k, rescale, apply_b_dec=True):
    pre = _ref_in(w, x, apply_b_dec)
    norms = w["W_dec"].norm(dim=-1)
    if rescale:
        pre = pre * norms
    top = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    out = (f / norms if rescale else f) @ w["W_dec"] + w["b_dec"]
    return f, out


def _ref_jumprelu(w, x):
    pre = _ref_in(w, x)
    f = torch.relu(pre) * (pre > w["threshold"]).float()
    return f, f @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("rescale", [False, True])
def test_saelens_topk_with_and_without_decoder_norm_rescaling(tmp_path, rescale):
    """Regression (issue 12.4): rescale_acts_by_decoder_norm=true loaded silently and encoded wrongly."""
    w = _weights(1)
    sae = load_sae(_folder(tmp_path, "topk", w, architecture="topk", k=6, rescale_acts_by_decoder_norm=rescale))
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(2)) * 2
    f_ref, out_ref = _ref_topk(w, x, 6, rescale)
    with torch.no_grad():
        out, f = sae(x)
    assert torch.equal(f > 0, f_ref > 0)  # the same active set
    torch.testing.assert_close(f, f_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-4)


def test_saelens_apply_b_dec_to_input_false_is_folded(tmp_path):
    w = _weights(3)
    sae = load_sae(_folder(tmp_path, "nob", w, architecture="standard", apply_b_dec_to_input=False))
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(4))
    f_ref = torch.relu(_ref_in(w, x, apply_b_dec=False))
    with torch.no_grad():
        out, f = sae(x)
    torch.testing.assert_close(f, f_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, f_ref @ w["W_dec"] + w["b_dec"], atol=1e-4, rtol=1e-4)


def test_saelens_jumprelu_and_gemma_scope_npz(tmp_path):
    w = _weights(5, jump=True)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(6))
    f_ref, out_ref = _ref_jumprelu(w, x)
    assert 0 < int((f_ref > 0).sum()) < f_ref.numel()  # the thresholds do cut
    for sae in (load_sae(_folder(tmp_path, "jump", w, architecture="jumprelu")),
                load_sae(_npz(tmp_path, w))):
        with torch.no_grad():
            out, f = sae(x)
        torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    back = load_sae(save_sae(load_sae(tmp_path / "jump"), tmp_path / "saved"))
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], out_ref, atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "saved" / "cfg.json").read_text())["architecture"] == "jumprelu"
    with pytest.raises(InputError, match="inference only"):
        Trainer([SAEConfig(D_IN, D_SAE, architecture="jumprelu")], TrainConfig(steps=1))


def _npz(tmp_path, w):
    d = tmp_path / "gemmascope"
    d.mkdir()
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in w.items()})
    return d / "params.npz"


@pytest.mark.parametrize("flag,value,match", [
    ("normalize_activations", "layer_norm", "normalize_activations='layer_norm'"),
    ("normalize_activations", "constant_norm_rescale", "constant_norm_rescale"),
    ("reshape_activations", "hook_z", "hook_z"),
    ("hook_head_index", 3, "hook_head_index"),
    ("finetuning_scaling_factor", True, "finetuning_scaling_factor"),
    ("architecture", "gated", "gated"),
    ("architecture", "batchtopk", "batchtopk"),
    ("activation_fn_str", "tanh-relu", "tanh-relu"),
    ("rescale_acts_by_decoder_norm", True, "only defined for TopK"),
])
def test_unsupported_flags_are_refused_in_one_line(tmp_path, flag, value, match):
    cfg = {"architecture": "standard", flag: value}
    with pytest.raises(InputError, match=match) as e:
        load_sae(_folder(tmp_path, "x", _weights(7), **cfg))
    assert "\n" not in str(e.value)


def test_expected_average_only_in_loads_as_identity_like_saelens(tmp_path):
    w = _weights(8)
    sae = load_sae(_folder(tmp_path, "ea", w, architecture="standard",
                           normalize_activations="expected_average_only_in"))
    x = torch.randn(8, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(sae(x)[0], torch.relu(_ref_in(w, x)) @ w["W_dec"] + w["b_dec"], atol=1e-4,
                                   rtol=1e-4)


def test_jumprelu_splices_keep_the_error_and_ablate_features():
    m = tiny_model("llama")
    torch.manual_seed(0)
    w = {"W_enc": torch.randn(m.d_model, 64) * 0.3, "W_dec": torch.randn(64, m.d_model) * 0.3,
         "b_enc": torch.zeros(64), "b_dec": torch.zeros(m.d_model), "threshold": torch.full((64,), 0.2)}
    from actlab.sae.io import _build

    sae = _build(None, SAEConfig(m.d_model, 64, architecture="jumprelu", hook_point="blocks.1.resid_post"), w, 1.0,
                 "-")
    ids = torch.randint(3, 90, (1, 7), generator=torch.Generator().manual_seed(1))
    p = "blocks.1.resid_post"
    with torch.no_grad():
        with m.capture(p) as clean:
            m(input_ids=ids)
        f = sae.encode(clean[p])
        alive = int((f > 0).sum((0, 1)).argmax())
        with m.edit(FeatureEdit(sae, ablate=[])), m.capture(p) as same:
            m(input_ids=ids)
        with m.edit(FeatureEdit(sae, ablate=[alive])), m.capture(p) as edited:
            m(input_ids=ids)
    torch.testing.assert_close(same[p], clean[p])
    want = clean[p] - f[..., alive:alive + 1] * sae.W_dec[alive]
    torch.testing.assert_close(edited[p], want, atol=1e-5, rtol=1e-5)


@pytest.mark.shared
def test_jumprelu_top_examples_on_a_real_model(tinystories, tmp_path):
    d = tinystories.d_model
    g = torch.Generator().manual_seed(3)
    w = {"W_enc": torch.randn(d, 32, generator=g), "W_dec": torch.randn(32, d, generator=g),
         "b_enc": torch.zeros(32), "b_dec": torch.zeros(d), "threshold": torch.full((32,), 1.0)}
    folder = _folder_d(tmp_path, w, d)
    sae = load_sae(folder)
    ex = top_examples(tinystories, sae, "blocks.1.mlp_out", ["Once upon a time there was a cat.",
                                                             "The dog ran to the park."], features=[0, 1, 2], k=3)
    assert any(ex.values())
    for rows in ex.values():
        for r in rows:
            assert r["value"] > 1.0  # every shown activation passed its threshold
            assert 0 <= r["highlight"] < len(r["tokens"])


def _folder_d(tmp_path, w, d):
    f = tmp_path / "jr"
    f.mkdir()
    save_file(w, str(f / "sae_weights.safetensors"))
    (f / "cfg.json").write_text(json.dumps({"d_in": d, "d_sae": 32, "architecture": "jumprelu",
                                            "hook_name": "blocks.1.mlp_out"}))
    return f
