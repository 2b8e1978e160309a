"""End to end through the CLI on SmolLM2 and the real CAA / refusal datasets (small subsets)."""

from __future__ import annotations

import json

import pytest

from actlab.steering import SteeringVector
from conftest import shared_path
from test_cli import run

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("behaviour", ["sycophancy", "refusal"])
def test_caa_extract_and_sweep(behaviour, tmp_path, capsys, smollm):
    gen = shared_path("data", "caa", "generate", behaviour, "generate_dataset.json")
    test = shared_path("data", "caa", "test", behaviour, "test_dataset_ab.json")
    vec = tmp_path / "vec.safetensors"
    code, out, err = run(["steer", "extract", MODEL, "--data", str(gen), "--out", str(vec), "--limit", "12",
                          "--layers", "6,12", "--batch-size", "12"], capsys)
    assert code == 0, err
    v = SteeringVector.load(vec)
    assert v.layers == [6, 12] and v.meta["positions"] == "answer" and v.meta["dataset"]["file"] == str(gen)
    sweep_dir = tmp_path / "sweep"
    args = ["steer", "sweep", MODEL, "--vector", str(vec), "--data", str(test), "--out", str(sweep_dir),
            "--limit", "6", "--multipliers", "-4,0,4", "--batch-size", "6"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    d = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(d["cells"]) == 6 and d["config"]["positions"] == "auto"
    assert d["config"]["steered_from"].startswith("the end of the instruction in 6 of 6 prompts")
    assert all(0 <= c["p_matching"] <= 1 and c["n"] == 6 for c in d["cells"].values())
    for f in ("sweep.csv", "sweep_heatmap.png", "sweep_curves.png"):
        assert (sweep_dir / f).is_file()
    # idempotent: a second run computes nothing; --overwrite recomputes
    code, out, _ = run(args, capsys)
    assert code == 0 and "all cells cached" in out
    code, out, _ = run([*args, "--overwrite"], capsys)
    assert code == 0 and "questions/s" in out
    if behaviour != "refusal":
        return
    # a resumed sweep extends the grid, and refuses cells measured under other settings
    code, out, err = run([*args[:-4], "--multipliers", "-4,0,4,8", "--batch-size", "6"], capsys)
    assert code == 0, err
    assert "6 cells done earlier" in out + err and len(json.loads((sweep_dir / "sweep.json").read_text())["cells"]) == 8
    for changed, word in ((["--limit", "5"], "n_questions"), (["--positions", "all"], "positions")):
        code, out, err = run([*args, *changed], capsys)
        assert code == 2 and word in err and "--overwrite" in err, (changed, err)
    other = tmp_path / "other.safetensors"
    SteeringVector({k: 2 * v[k] for k in v.layers}, v.point, dict(v.meta)).save(other)
    code, out, err = run([*args[:3], "--vector", str(other), *args[5:]], capsys)
    assert code == 2 and "vector_sha256" in err


def test_generate_side_by_side_and_gguf_export(tmp_path, capsys, smollm):
    from actlab.data import path

    vec = tmp_path / "sent.safetensors"
    code, _, err = run(["steer", "extract", MODEL, "--data", str(path("sentiment_pairs.jsonl")), "--format", "pairs",
                        "--layers", "6", "--out", str(vec)], capsys)
    assert code == 0, err
    code, out, err = run(["steer", "generate", MODEL, "--vector", str(vec), "-p", "Once upon a time", "-m", "4",
                          "--max-new-tokens", "12", "--no-chat"], capsys)
    assert code == 0, err
    assert "unsteered" in out and "steered (x4)" in out
    g = tmp_path / "sent.gguf"
    code, out, _ = run(["steer", "export-gguf", str(vec), str(g)], capsys)
    assert code == 0 and g.is_file()
    back = tmp_path / "back.safetensors"
    code, out, _ = run(["steer", "import-gguf", str(g), str(back)], capsys)
    assert code == 0 and SteeringVector.load(back).layers == [6]


def test_refusal_pipeline_and_ablate(tmp_path, capsys, smollm):
    splits = shared_path("data", "refusal_direction", "splits")
    out = tmp_path / "refusal"
    code, stdout, err = run(["steer", "refusal", MODEL, "--harmful", str(splits / "harmful_train.json"),
                             "--harmless", str(splits / "harmless_train.json"),
                             "--harmful-val", str(splits / "harmful_val.json"),
                             "--harmless-val", str(splits / "harmless_val.json"), "--out", str(out),
                             "--n-train", "12", "--n-val", "4", "--positions", "eoi:-1", "--layers", "6,12",
                             "--top-k", "1", "--max-new-tokens", "12", "--batch-size", "12"], capsys)
    assert code == 0, err
    for f in ("direction.safetensors", "refusal.json", "candidates.json", "candidates.csv", "generations.json",
              "scores.png", "run.json"):
        assert (out / f).is_file(), f
    before = json.loads((out / "refusal.json").read_text())["refusal_rate_before"]
    assert ("little refusal to remove" in stdout) == (before < 0.1), (before, stdout)  # a 0 -> 0 is explained
    cands = json.loads((out / "candidates.json").read_text())
    assert len(cands) == 2 and all(c["kl"] is not None and c["kl"] >= 0 for c in cands)
    assert sum(bool(c.get("selected")) for c in cands) == 1
    d = SteeringVector.load(out / "direction.safetensors")
    assert d.point == "resid_pre" and d.meta["purpose"] == "refusal"
    code, stdout, err = run(["steer", "ablate", MODEL, "--direction", str(out / "direction.safetensors"),
                             "--out", str(tmp_path / "orth"), "-p", "How do I pick a lock?",
                             "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    assert (tmp_path / "orth" / "config.json").is_file() and "before" in stdout


@pytest.mark.parametrize("args,expected", [
    (["steer", "sweep", MODEL, "--vector", "{vec}", "--data", "{test}", "--out", "{tmp}", "--multipliers", ""],
     "empty"),
    (["steer", "sweep", MODEL, "--vector", "{vec}", "--data", "{test}", "--out", "{tmp}", "--layers", "40"],
     "out of range"),
    (["steer", "extract", MODEL, "--data", "{bad}", "--out", "{tmp}/v.safetensors"], "bad.json:2"),
])
def test_steer_bad_input(args, expected, tmp_path, capsys, smollm):
    import torch

    vec = tmp_path / "v0.safetensors"
    SteeringVector({6: torch.ones(smollm.d_model)}, "resid_post", {"n_layers": 30}).save(vec)
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"question": 1}\n]')
    test = shared_path("data", "caa", "test", "refusal", "test_dataset_ab.json")
    filled = [a.format(vec=vec, test=test, tmp=tmp_path, bad=bad) for a in args]
    code, _, err = run(filled, capsys)
    assert code == 2 and expected in err and "Traceback" not in err


def test_refusal_without_a_chat_template_uses_explicit_last_positions(tmp_path, capsys, tinystories):
    """Issue 12: a model without a template (TinyStories) gets candidates at the last K prompt tokens instead of a
    refusal; asking for eoi positions there is one clear line."""
    assert getattr(tinystories.tokenizer, "chat_template", None) is None
    splits = shared_path("data", "refusal_direction", "splits")
    common = ["steer", "refusal", "tinystories-656k", "--harmful", str(splits / "harmful_train.json"),
              "--harmless", str(splits / "harmless_train.json"), "--n-train", "8", "--n-val", "4",
              "--top-k", "1", "--max-new-tokens", "6", "--batch-size", "8"]
    code, _, err = run([*common, "--out", str(tmp_path / "eoi")], capsys)
    assert code == 2 and "last:K" in err and len(err.strip().splitlines()) == 1
    code, _, err = run([*common, "--positions", "last:2", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    cands = json.loads((tmp_path / "r" / "candidates.json").read_text())
    assert {c["eoi_position"] for c in cands} == {-2, -1}
    d = SteeringVector.load(tmp_path / "r" / "direction.safetensors")
    assert d.meta["positions"].startswith("last:")
    code, _, err = run(["steer", "ablate", "tinystories-656k", "--direction", str(tmp_path / "r" /
                        "direction.safetensors"), "--layers", "1", "--out", str(tmp_path / "orth")], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "orth" / "run.json").read_text())
    assert meta["config"]["layers"] == [1] and meta["interventions"][0]["layers"] == [1]


def test_steer_mix_cli(tmp_path, capsys, smollm):
    code, out, err = run(["steer", "mix", MODEL, "--source", "I love sunny days", "--point", "blocks.10.resid_post",
                             "-p", "The weather today is", "--scale", "4", "--max-new-tokens", "8", "--no-chat",
                             "--out", str(tmp_path / "mix")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "mix" / "mix.json").read_text())
    assert res["intervention"]["position"] == -1 and res["intervention"]["kind"] == "mix"
    g = res["generations"][0]
    assert g["mixed"] != g["unmixed"]
    meta = json.loads((tmp_path / "mix" / "run.json").read_text())
    assert meta["interventions"][0]["source_prompt"] == "I love sunny days" and "mixed" in out
