"""`compare behaviours`: several behaviours on two models in one command (issue 25, base-vs-chat note), checked
against a planted difference (a copy perturbed from layer 1 on) and against `steer extract` run by hand."""

from __future__ import annotations

import json

import pytest
import torch

import actlab
from actlab.jobs.compare import behaviour_comparison, behaviour_label
from actlab.steering import SteeringVector
from conftest import shared_path
from test_cli import run


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory, tinystories):
    """TinyStories with layer 1's MLP perturbed: resid_post of layer 0 is untouched, layer 1's is not."""
    import copy

    hf = copy.deepcopy(tinystories.hf)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = hf.model.layers[1].mlp.down_proj.weight
        w += torch.randn(w.shape, generator=g) * 0.2
    path = tmp_path_factory.mktemp("perturbed") / "tinystories-perturbed"
    actlab.Model(hf, tinystories.tokenizer, name="perturbed").save(path)
    return path


def test_behaviour_labels():
    assert behaviour_label("caa/generate/sycophancy/generate_dataset.json") == "sycophancy"
    assert behaviour_label("data/my_behaviour.json") == "my_behaviour"


def test_compare_behaviours_cli(tmp_path, capsys, perturbed):
    data = [shared_path("data", "caa", "generate", b, "generate_dataset.json") for b in ("sycophancy", "refusal")]
    out = tmp_path / "cmp"
    args = ["compare", "behaviours", "tinystories-656k", str(perturbed), "--data", str(data[0]), "--data",
            str(data[1]), "--limit", "6", "--out", str(out)]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    res = json.loads((out / "behaviours.json").read_text())
    assert res["behaviours"] == ["sycophancy", "refusal"] and "sycophancy, tinystories-656k vs" in stdout
    for label in res["behaviours"]:
        a = SteeringVector.load(out / "vectors" / f"A_{label}.safetensors")
        b = SteeringVector.load(out / "vectors" / f"B_{label}.safetensors")
        per = res["cross_model"][label]
        assert per["0"] == pytest.approx(1.0, abs=1e-6)  # before the perturbation: the same direction
        assert per["1"] < 0.999  # after it: moved
        for k in (0, 1):
            direct = float(a[k].double() @ b[k].double() / (a[k].double().norm() * b[k].double().norm()))
            assert per[str(k)] == pytest.approx(direct, abs=1e-9)
    within = res["between_behaviours"]["tinystories-656k"]["1"]
    assert within[0][0] == pytest.approx(1.0) and within[0][1] == pytest.approx(within[1][0])
    # the same vector `steer extract` makes by hand (the 2N+1 calls this command replaces)
    by_hand = tmp_path / "hand.safetensors"
    code, _, err = run(["steer", "extract", "tinystories-656k", "--data", str(data[1]), "--limit", "6", "--out",
                        str(by_hand)], capsys)
    assert code == 0, err
    hand, mine = SteeringVector.load(by_hand), SteeringVector.load(out / "vectors" / "A_refusal.safetensors")
    assert hand.layers == mine.layers and all(torch.equal(hand[k], mine[k]) for k in hand.layers)
    assert (out / "vector_comparison_cross_model.png").is_file()
    code, _, err = run(["report", str(out)], capsys)
    assert code == 0, err
    html = next(out.glob("*.html")).read_text()
    assert "mean cosine across models" in html and "between behaviours, tinystories-656k" in html
    code, _, err = run([*args[:-2], "--label", "only-one", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "--label" in err


def test_compare_behaviours_resumes_without_loading_again(tmp_path, tinystories):
    data = [shared_path("data", "caa", "generate", b, "generate_dataset.json") for b in ("sycophancy", "refusal")]
    loads = []

    def load(name):
        loads.append(name)
        return tinystories

    first = behaviour_comparison("a", "b", data, tmp_path, limit=4, load=load)
    assert loads == ["a", "b"]
    again = behaviour_comparison("a", "b", data, tmp_path, limit=4, load=load)
    assert loads == ["a", "b"] and again["cross_model"] == first["cross_model"]
    assert all(v == pytest.approx(1.0) for per in first["cross_model"].values() for v in per.values())
