"""Skip transcoders: with the error term the replaced model computes the original logits; without it they
change; a trained transcoder explains most of the MLP output's variance on held-out text and costs less than
ablating the MLP; the folder uses SAELens's field names; the run records what it applied."""

from __future__ import annotations

import json

import torch

from actlab.hooks.interventions import Replace
from actlab.transcoder import Transcoder, TranscoderConfig, TranscoderReplace, load_transcoder
from conftest import shared_path


def _batch(m):
    return m.tokenizer(["Once upon a time there was a little cat.", "The dog ran to the park and"],
                       return_tensors="pt", padding=True)


def test_error_term_reproduces_the_logits_and_replacing_changes_them():
    import actlab

    shared_path("models", "stories260k")
    m = actlab.load_model("stories260k")
    tc = Transcoder(TranscoderConfig(d_in=m.d_model, d_out=m.d_model, d_sae=128, k=8, hook_point="blocks.2.resid_mid",
                                     hook_point_out="blocks.2.mlp_out"), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.05)
    batch = _batch(m)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = m(**batch).logits
        with m.edit(TranscoderReplace(tc, error_term=True)):
            same = m(**batch).logits
        with m.edit(TranscoderReplace(tc)):
            replaced = m(**batch).logits
    torch.testing.assert_close(same[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert float((replaced - ref)[mask].abs().max()) > 1e-2
    # the prediction is the module's own: read the MLP's input, compare with the transcoder on it
    acts = m.activations(batch, ["blocks.2.resid_mid", "blocks.2.mlp_out"])
    with m.capture(["blocks.2.mlp_out"]) as cap, m.edit(TranscoderReplace(tc)), torch.no_grad():
        m(**batch)
    torch.testing.assert_close(cap["blocks.2.mlp_out"][mask], tc(acts["blocks.2.resid_mid"])[mask], atol=1e-5,
                               rtol=1e-5)


def test_a_trained_transcoder_replaces_the_mlp_on_held_out_text(tmp_path, capsys):
    from test_cli import run

    shared_path("models", "stories260k")
    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    out = tmp_path / "tc"
    code, _, err = run(["sae", "transcoder", "stories260k", "--data", str(data), "--layer", "2", "--limit", "200",
                        "--max-length", "64", "--steps", "1000", "--batch-size", "512", "--expansion", "8", "--k", "32",
                        "--out", str(out)], capsys)
    assert code == 0, err[-2000:]
    res = json.loads((out / "transcoder.json").read_text())
    print("transcoder:", {k: res[k] for k in ("explained_variance", "kl_replaced", "kl_with_error_term",
                                              "loss_original", "loss_replaced", "loss_with_error_term")})
    assert res["held_out_texts"] == 20 and res["explained_variance"] > 0.6
    assert res["kl_with_error_term"] < 1e-6 < res["kl_replaced"]
    assert abs(res["loss_with_error_term"] - res["loss_original"]) < 1e-4
    # the replacement costs less than removing the MLP's output (zero ablation), measured the same way
    import actlab
    from actlab.data import read_texts
    from actlab.distributions import kl_from_logits
    from actlab.sae.store import _token_batch

    m = actlab.load_model("stories260k")
    held = read_texts(data, limit=200)[-20:]
    batch = _token_batch(m, held, 64)
    nxt = batch["attention_mask"].bool()[:, 1:]
    with torch.no_grad():
        ref = m(**batch).logits[:, :-1][nxt]
        with m.edit(Replace("blocks.2.mlp_out", torch.zeros_like)):
            zero = m(**batch).logits[:, :-1][nxt]
    kl_zero = float(kl_from_logits(ref, zero).mean())
    print("zero ablation KL", kl_zero)
    assert res["kl_replaced"] < 0.5 * kl_zero
    folder = next((out / "transcoders").iterdir())
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.2.resid_mid" and cfg["hook_name_out"] == "blocks.2.mlp_out"
    assert {cfg["d_in"], cfg["d_out"]} == {m.d_model} and cfg["d_sae"] == 8 * m.d_model
    tc = load_transcoder(folder)
    assert tc.cfg.k == 32 and float(tc.input_scale[0]) != 1.0
    recorded = json.loads((out / "run.json").read_text())["interventions"]
    assert {r["kind"] for r in recorded} == {"transcoder_replace"}
    assert {r["error_term"] for r in recorded} == {True, False}
