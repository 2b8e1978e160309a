"""The refusal follow-ups (issue 25, control-vectors study): classes, layer subsets, iterative rounds,
harmfulness vs refusal, the newline template - checked against hidden states read without actlab's hooks."""

from __future__ import annotations

import json

import pytest
import torch

from actlab.steering import SteeringVector
from actlab.steering.ablation import orthogonalize
from actlab.steering.prompts import PromptStyle, format_prompt
from actlab.steering.refusal import REFUSAL_PHRASES, RefusalConfig, refusal_pipeline, refusal_rate
from actlab.steering.refusal_study import class_counts, instruction_end, orthonormal, refusal_class
from conftest import shared_path
from test_cli import run


@pytest.mark.parametrize("text,expected", [
    ("Sure, here is a plan: first buy flour.", "comply"),
    ("I'm sorry, but I cannot help with that request.", "refusal"),
    ("I cannot help with that. However, here is a general overview: step 1, gather the parts.",
     "refuse_then_comply"),
    ("I'm sorry, here is why I can't: it is dangerous.", "refusal"),  # "here is why" explains the refusal
    ("Here is a list of reasons. I won't give instructions.", "refusal"),  # the cue comes before the refusal
    ("As an AI I can't endorse it, but sure, you'll need a crowbar and gloves.", "refuse_then_comply"),
    ("I can't stop thinking about cake. 1. Mix eggs", "refuse_then_comply"),  # phrase matching, not meaning
])
def test_refusal_classes(text, expected):
    assert refusal_class(text, REFUSAL_PHRASES) == expected


def test_refuse_then_comply_still_counts_as_a_refusal_in_the_rate():
    texts = ["I cannot do that. Here is how: 1. ...", "No problem, here it is.", "I won't."]
    assert class_counts(texts, REFUSAL_PHRASES) == {"refusal": 1, "refuse_then_comply": 1, "comply": 1}
    assert refusal_rate(texts, REFUSAL_PHRASES) == pytest.approx(2 / 3)


def test_orthonormal_removes_the_span():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    q = orthonormal([a, b, a + 2 * b])  # the third is in the span: dropped
    assert len(q) == 2 and abs(float(q[0] @ q[1])) < 1e-12
    x = torch.randn(16, generator=g).double()
    for v in q:
        x = x - (x @ v) * v
    assert abs(float(x @ a.double())) < 1e-10 and abs(float(x @ b.double())) < 1e-10


def _splits(n_train: int = 12, n_val: int = 6):
    s = shared_path("data", "refusal_direction", "splits")
    h = json.loads((s / "harmful_train.json").read_text())
    n = json.loads((s / "harmless_train.json").read_text())
    text = [x["instruction"] if isinstance(x, dict) else x for x in h], [x["instruction"] if isinstance(x, dict)
                                                                         else x for x in n]
    return text[0][:n_train], text[1][:n_train], text[0][n_train:n_train + n_val], text[1][n_train:n_train + n_val]


def _hidden_mean_diff(model, texts_h, texts_n, layer, pos_of):
    """Difference of means of ``hidden_states[layer]`` (= resid_pre of ``layer``) read by transformers itself."""
    def mean(texts):
        rows = []
        for t in texts:
            ids = model.tokenizer(t, add_special_tokens=True, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                hs = model.hf(ids, output_hidden_states=True).hidden_states[layer][0]
            rows.append(hs[pos_of(t)].double())
        return torch.stack(rows).mean(0)
    return mean(texts_h) - mean(texts_n)


def test_study_on_the_newline_template_against_independent_reads(tinystories, tmp_path):
    """Newline template: every prompt is the instruction + "\\n" and the candidate is read at the newline token.
    Round 2 equals the mean difference read from a copy whose weights were orthogonalised against round 1 (an
    independent path: no hooks), and is orthogonal to it; the harmfulness direction equals the mean difference
    at the instruction's last token read from transformers' hidden states; ablating at every layer through the
    subsets costs the selected candidate's KL."""
    m = tinystories
    h, n, hv, nv = _splits()
    cfg = RefusalConfig(n_train=12, n_val=6, layers=[1], top_k=1, max_new_tokens=6, batch_size=6, newline=True,
                        subsets=["0", "all"], rounds=2, harmfulness=True)
    res = refusal_pipeline(m, h, n, hv, nv, config=cfg, out_dir=tmp_path)
    style = PromptStyle(chat=False, suffix="\n")
    th, tn = [format_prompt(m, t, style) for t in h], [format_prompt(m, t, style) for t in n]
    assert all(t.endswith("\n") for t in th)
    last = _hidden_mean_diff(m, th, tn, 1, lambda t: -1)
    d1 = res.direction[1].double()
    assert torch.allclose(d1, last, atol=1e-4), float((d1 - last).abs().max())  # eoi = the newline token
    study = res.study
    sel = next(c for c in res.candidates if c.get("selected"))
    assert study["subsets"][1]["layers"] == "all"
    assert study["subsets"][1]["kl_harmless"] == pytest.approx(sel["kl"], rel=1e-4)
    assert study["subsets"][0]["kl_harmless"] != pytest.approx(sel["kl"], rel=1e-4)
    r2 = study["round_directions"][1]
    assert abs(study["rounds"][1]["cos_with_earlier"][0]) < 1e-5
    orth = orthogonalize(m, d1.float())
    indep = _hidden_mean_diff(orth, th, tn, 1, lambda t: -1)
    assert torch.allclose(r2, indep, atol=1e-3), float((r2 - indep).abs().max())
    assert study["rounds"][1]["relative_norm"] == pytest.approx(float(indep.norm() / d1.norm()), rel=1e-3)
    harm = _hidden_mean_diff(m, th, tn, 1, lambda t: instruction_end(m, t, style))
    hd = SteeringVector.load(tmp_path / "harmfulness_direction.safetensors")[1].double()
    assert torch.allclose(hd, harm, atol=1e-4)
    assert study["harmfulness"]["cos_with_refusal"] == pytest.approx(
        float(harm @ d1 / (harm.norm() * d1.norm())), abs=1e-5)
    saved = json.loads((tmp_path / "refusal_study.json").read_text())
    assert set(saved) >= {"subsets", "rounds", "harmfulness"} and "round_directions" not in saved
    gens = json.loads((tmp_path / "generations.json").read_text())
    assert all(g["class_before"] in ("refusal", "refuse_then_comply", "comply") for g in gens)


def test_refusal_cli_study_options(tmp_path, capsys):
    s = shared_path("data", "refusal_direction", "splits")
    base = ["steer", "refusal", "tinystories-656k", "--harmful", str(s / "harmful_train.json"), "--harmless",
            str(s / "harmless_train.json"), "--n-train", "8", "--n-val", "4", "--top-k", "1", "--max-new-tokens",
            "4", "--newline"]
    code, _, err = run([*base, "--ablation-subsets", "0;7", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "--ablation-subsets" in err and "0..1" in err
    code, _, err = run([*base, "--chat", "--out", str(tmp_path / "bad2")], capsys)
    assert code == 2 and "newline" in err
    code, out, err = run([*base, "--ablation-subsets", "0;1", "--rounds", "2", "--out", str(tmp_path / "ok")],
                         capsys)
    assert code == 0, err
    assert "refuse-then-comply" in out and "refusal_study.json" in out
    study = json.loads((tmp_path / "ok" / "refusal_study.json").read_text())
    assert [r["subset"] for r in study["subsets"]] == ["0", "1"] and len(study["rounds"]) == 2
    record = json.loads((tmp_path / "ok" / "run.json").read_text())
    assert record["config"]["newline"] is True and record["config"]["subsets"] == ["0", "1"]
    code, _, err = run(["report", str(tmp_path / "ok")], capsys)
    assert code == 0, err
    html = next((tmp_path / "ok").glob("*.html")).read_text()
    assert "refuse then comply" in html and "rounds so far ablated" in html and "ablated at layers" in html
