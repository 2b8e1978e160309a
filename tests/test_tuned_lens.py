"""The tuned lens: identity at initialisation (= the logit lens), exact at the output, files that round-trip
(ours and the released tuned-lens format, never unpickling code), training that beats the logit lens on
held-out text of a real model, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import actlab
from actlab.tuned_lens import TunedLens, evaluate_lens, train_tuned_lens
from tiny_models import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_an_untrained_tuned_lens_is_the_logit_lens_and_exact_at_the_output(family):
    m = tiny_model(family)
    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pts = ["embed", "resid_pre", "resid_post"]
    lens = TunedLens.for_model(m)
    plain = actlab.logit_lens(m, batch, points=pts, top_k=3)
    tuned = actlab.logit_lens(m, batch, points=pts, top_k=3, lens=lens)
    assert torch.equal(plain.top_ids, tuned.top_ids) and torch.allclose(plain.top_probs, tuned.top_probs)
    assert tuned.to_dict()["lens"] == "tuned"
    # a trained-looking lens changes every translated layer but not the model's own output
    with torch.no_grad():
        for t in lens.translators:
            t.weight.normal_(0, 0.3)
    out = actlab.logit_lens(m, batch, points=f"blocks.{m.n_layers - 1}.resid_post", top_k=5, lens=lens)
    with torch.no_grad():
        logits = m.hf(**batch).logits[:, -1]
    assert torch.allclose(out.top_probs[:, 0], torch.softmax(logits.float(), -1).topk(5).values, atol=1e-5)
    moved = actlab.logit_lens(m, batch, points="blocks.0.resid_post", top_k=3, lens=lens)
    j = plain.index("blocks.0.resid_post")
    assert not torch.allclose(moved.top_probs[:, 0], plain.top_probs[:, j], atol=1e-3)
    with pytest.raises(actlab.ActlabError, match=r"no translator for blocks\.0\.mlp_out"):
        actlab.logit_lens(m, batch, points="blocks.0.mlp_out", lens=lens)


def test_files_round_trip_and_released_checkpoints_load_without_running_code(tmp_path):
    m = tiny_model("llama")
    lens = TunedLens.for_model(m)
    with torch.no_grad():
        for t in lens.translators:
            t.weight.normal_(0, 0.1)
            t.bias.normal_(0, 0.1)
    h = torch.randn(2, 5, m.d_model)
    want = lens.translate(1, h)
    back = TunedLens.load(lens.save(tmp_path / "ours"), m)
    assert torch.equal(back.translate(1, h), want)
    # the tuned-lens package's layout: params.pt (the translators' state dict) + config.json
    released = tmp_path / "released"
    released.mkdir()
    torch.save({k: v for k, v in lens.translators.state_dict().items()}, released / "params.pt")
    (released / "config.json").write_text(json.dumps({"d_model": m.d_model, "num_hidden_layers": m.n_layers,
                                                      "bias": True, "base_model_name_or_path": "x"}))
    assert torch.equal(TunedLens.load(released, m).translate(1, h), want)
    # a checkpoint that would run code when unpickled is refused, and nothing runs
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((released / "config.json").read_text())

    class Boom:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(tmp_path / 'ran')!r}).write_text('ran')",))

    torch.save({"0.weight": Boom()}, evil / "params.pt")
    with pytest.raises(actlab.ActlabError, match="refusing to unpickle"):
        TunedLens.load(evil, m)
    assert not (tmp_path / "ran").exists()
    other = TunedLens(m.d_model * 2, m.n_layers).save(tmp_path / "wider")
    with pytest.raises(actlab.ActlabError, match="is for d_model 64"):
        TunedLens.load(other, m)
    with pytest.raises(actlab.ActlabError, match="not a tuned-lens folder"):
        TunedLens.load(tmp_path / "nowhere", m)


def test_training_beats_the_logit_lens_on_held_out_text_of_a_real_model(tinystories):
    from actlab.data.texts import read_texts
    from conftest import shared_path

    texts = read_texts(shared_path("data", "imdb", "imdb_train_sample.csv"), limit=120)
    train, held = texts[:-16], texts[-16:]
    lens, history = train_tuned_lens(tinystories, train, steps=40, batch_size=8, max_length=64)
    assert history[-1]["kl"] < history[0]["kl"]
    logit = evaluate_lens(tinystories, held, None, max_length=64)
    tuned = evaluate_lens(tinystories, held, lens, max_length=64)
    assert all(t < g for t, g in zip(tuned["kl"], logit["kl"], strict=True)), (tuned["kl"], logit["kl"])
    assert all(t < g for t, g in zip(tuned["cross_entropy"], logit["cross_entropy"], strict=True))
    assert not any(p.requires_grad is False for p in lens.parameters())
    assert all(p.requires_grad for p in tinystories.hf.parameters())  # the model's flags are restored


def test_cli_trains_reports_and_decodes_with_the_tuned_lens(tmp_path, capsys):
    from actlab.report.run_report import build_report
    from conftest import shared_path
    from test_cli import run

    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    shared_path("models", "stories260k")
    out = tmp_path / "tl"
    code, _, err = run(["tuned-lens", "stories260k", "--data", str(data), "--limit", "48", "--held-out", "8",
                        "--steps", "10", "--max-length", "48", "--out", str(out)], capsys)
    assert code == 0, err
    res = json.loads((out / "tuned_lens.json").read_text())
    assert res["kind"] == "tuned_lens_eval" and len(res["kl"]["tuned"]) == 5 and (out / "tuned_lens.png").is_file()
    assert "How to read this" in build_report(out).read_text()
    lens_json = tmp_path / "lens.json"
    code, _, err = run(["lens", "stories260k", "-p", "Once upon a time", "--points", "resid_post",
                        "--lens", f"tuned:{out / 'lens'}", "--json", str(lens_json)], capsys)
    assert code == 0, err
    assert json.loads(lens_json.read_text())["lens"] == "tuned"
    code, _, err = run(["lens", "stories260k", "-p", "Once", "--lens", "tunde:x"], capsys)
    assert code == 2 and "unknown --lens 'tunde:x'" in err
    code, _, err = run(["lens", "stories260k", "-p", "Once", "--lens", f"tuned:{tmp_path / 'missing'}"], capsys)
    assert code == 2 and "missing" in err
    code, _, err = run(["tuned-lens", "stories260k", "--data", str(data), "--optimizer", "lbfgs", "--out",
                        str(tmp_path / "x")], capsys)
    assert code == 2 and "lbfgs" in err


def test_the_playground_and_the_lens_grid_offer_the_tuned_lens():
    pytest.importorskip("starlette")
    from actlab.lens import lens_grid
    from actlab.serve import Playground
    from conftest import shared_path

    shared_path("models", "stories260k")
    m = actlab.load_model("stories260k")
    lens = TunedLens.for_model(m)
    plain = lens_grid(m, "Once upon a time", "resid_post", top_k=3)
    same = lens_grid(m, "Once upon a time", "resid_post", top_k=3, lens=lens)
    assert same["lens"] == "tuned" and {**same, "lens": "logit"} == plain  # identity at initialisation
    with torch.no_grad():
        for t in lens.translators:
            t.weight.normal_(0, 0.3)
    pg = Playground(m, tuned_lens=lens)
    assert pg.info()["lenses"] == ["logit", "tuned"]
    got = pg.lens({"prompt": "Once upon a time", "kind": "resid_post", "top_k": 3, "lens": "tuned"})
    assert got == lens_grid(m, "Once upon a time", "resid_post", top_k=3, lens=lens) and got != same
    with pytest.raises(actlab.ActlabError, match=r"no translator for blocks\.0\.mlp_out"):
        pg.lens({"prompt": "Once", "kind": "mlp_out", "lens": "tuned"})
    with pytest.raises(actlab.ActlabError, match="unknown lens 'tuned'; available: logit"):
        Playground(m).lens({"prompt": "Once", "lens": "tuned"})


def test_smollm2_gradients_and_an_identity_tuned_lens(smollm):
    """The real model: captured gradients equal autograd on transformers' own hidden states, and an untrained
    tuned lens evaluates exactly as the logit lens (KL and cross-entropy, every layer)."""
    m = smollm
    batch = m.tokenize("The capital of France is the city of")
    with m.capture("blocks.10.resid_post,blocks.10.attn.z", grad=True) as acts:
        out = m.hf(**batch, output_hidden_states=True)
        metric = out.logits[0, -1, 100] - out.logits[0, -1, 200]
        (g,) = torch.autograd.grad(metric, out.hidden_states[11], retain_graph=True)
        metric.backward()
    m.hf.zero_grad(set_to_none=True)
    assert torch.allclose(acts.grads["blocks.10.resid_post"], g, atol=1e-5)
    assert acts.grads["blocks.10.attn.z"].shape == (1, batch["input_ids"].shape[1], 9, 64)
    texts = ["A slow film with one good scene.", "The actors were wonderful and the story moved me."]
    logit = evaluate_lens(m, texts, None, max_length=16)
    tuned = evaluate_lens(m, texts, TunedLens.for_model(m), max_length=16)
    for key in ("kl", "cross_entropy"):
        assert tuned[key] == pytest.approx(logit[key], rel=1e-5)
    assert len(logit["kl"]) == 30 and logit["kl"][-1] < logit["kl"][0]
