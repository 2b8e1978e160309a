"""`steer mix --sweep-layers`: activation mixing layer by layer with the logit lens's recommendation (issue 25,
logit-lens note), checked against the lens function and a raw transformers forward hook."""

from __future__ import annotations

import json

import pytest
import torch

import actlab
from test_cli import run


def test_mix_sweep_against_independent_reads(stories260k, tmp_path, capsys):
    m = stories260k
    source, prompts = "The little dog ran to the park", ["Once upon a time there was", "Tom saw a"]
    out = tmp_path / "mixs"
    code, stdout, err = run(["steer", "mix", "stories260k", "--source", source, "--point", "resid_post",
                             "--sweep-layers", "0-4", "-p", prompts[0], "-p", prompts[1], "--scale", "3",
                             "--max-new-tokens", "4", "--no-chat", "--out", str(out)], capsys)
    assert code == 0, err
    res = json.loads((out / "mix_sweep.json").read_text())
    cid = res["concept"]["id"]
    with torch.no_grad():  # the default concept: the source's own next-token prediction
        assert cid == int(m.hf(**m.tokenize(source)).logits[0, -1].argmax())
    by_lens = actlab.logit_lens(m, source, points="resid_post", target=cid, top_k=1)
    for r in res["layers"]:
        layer = r["layer"]
        assert r["lens_rank"] == int(by_lens.target_ranks[0, layer]), layer
        assert r["lens_prob"] == pytest.approx(float(by_lens.target_probs[0, layer]), abs=1e-5)
    first = next((r["layer"] for r in res["layers"] if r["lens_rank"] <= res["top_k"]), None)
    assert res["recommended_layer"] == first and first is not None  # the last layer's lens is the logits
    assert f"recommended mixing layer: {first}" in stdout
    # p(concept) with the mix at layer 1, by a raw forward hook adding 3x the source's last-token hidden state
    with torch.no_grad():
        src = m.hf(**m.tokenize(source), output_hidden_states=True).hidden_states[2][0, -1]

        def add(_mod, _inp, output):
            return (output[0] + 3 * src, *output[1:]) if isinstance(output, tuple) else output + 3 * src

        h = m.hf.model.layers[1].register_forward_hook(add)
        try:
            probs = [float(m.hf(**m.tokenize(p)).logits[0, -1].softmax(-1)[cid]) for p in prompts]
        finally:
            h.remove()
        plain = [float(m.hf(**m.tokenize(p)).logits[0, -1].softmax(-1)[cid]) for p in prompts]
    row = res["layers"][1]
    assert row["concept_prob_mixed"] == pytest.approx(sum(probs) / 2, abs=1e-5)
    assert row["concept_prob_unmixed"] == pytest.approx(sum(plain) / 2, abs=1e-5)
    assert (out / "mix_sweep.png").is_file()
    code, _, err = run(["report", str(out)], capsys)
    assert code == 0, err
    assert "(recommended)" in next(out.glob("*.html")).read_text()


def test_mix_sweep_concept_and_bad_input(tmp_path, capsys):
    base = ["steer", "mix", "stories260k", "--source", "The dog", "-p", "Tom saw a", "--max-new-tokens", "2",
            "--no-chat"]
    code, _, err = run([*base, "--point", "blocks.1.resid_post", "--sweep-layers", "all"], capsys)
    assert code == 2 and "is a kind" in err
    code, _, err = run([*base, "--point", "blocks.1.resid_post", "--concept", " a"], capsys)
    assert code == 2 and "--sweep-layers" in err
    code, _, err = run([*base, "--point", "resid_post", "--sweep-layers", "9"], capsys)
    assert code == 2 and "out of range" in err
    code, _, err = run([*base, "--point", "resid_post", "--sweep-layers", "3,4", "--concept", " a", "--top-k", "1",
                          "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "c" / "mix_sweep.json").read_text())
    assert res["concept"]["given"] and [r["layer"] for r in res["layers"]] == [3, 4]
    assert res["concept"]["token"].strip() == "a"
