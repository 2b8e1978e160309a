"""Acceptance: on a real model and real text, cache MLP activations of two layers, train a 1x and a 2x
dictionary, and show explained variance, L0, loss recovered and the overlap in a report."""

from __future__ import annotations

import json

import pytest

from conftest import shared_path
from test_cli import run

MODEL = "tinystories-656k"


@pytest.fixture(scope="module")
def sae_run(tmp_path_factory, tinystories):
    from test_analysis import _CaptureShim

    cap = _CaptureShim()
    root = tmp_path_factory.mktemp("sae") / "run"
    train_csv = shared_path("data", "imdb", "imdb_train_sample.csv")
    test_csv = shared_path("data", "imdb", "imdb_test_sample.csv")
    res = {}
    res["cache"] = run(["acts", "cache", MODEL, "--data", str(train_csv), "--points",
                        "blocks.0.mlp_out,blocks.1.mlp_out", "--out", str(root / "cache"), "--limit", "200",
                        "--max-length", "96", "--shard-tokens", "6000"], cap)
    cfg = root / "train.yaml"
    cfg.write_text(f"""
cache: {root / 'cache'}
point: blocks.0.mlp_out
out: {root / 'layer0'}
dictionaries:
  - {{expansion: 1, l1_coefficient: 1.0}}
  - {{expansion: 2, l1_coefficient: 1.0}}
train: {{steps: 150, batch_size: 512, lr: 0.001, warmup_steps: 10, l1_warmup_steps: 30, checkpoint_every: 50}}
eval_batches: 4
""")
    res["train0"] = run(["sae", "train", "--config", str(cfg)], cap)
    res["train1"] = run(["sae", "train", "--cache", str(root / "cache"), "--point", "blocks.1.mlp_out",
                         "--expansion", "1,2", "--l1", "1", "--steps", "150", "--batch-size", "512",
                         "--out", str(root / "layer1")], cap)
    saes1 = root / "layer1" / "saes"
    res["eval"] = run(["sae", "eval", str(saes1 / "relu-1x-l1_1"), str(saes1 / "relu-2x-l1_1"), "--cache",
                       str(root / "cache"), "--model", MODEL, "--data", str(test_csv), "--limit", "12",
                       "--batch-size", "512", "--max-batches", "4", "--out", str(root / "eval")], cap)
    res["overlap"] = run(["sae", "overlap", str(saes1 / "relu-1x-l1_1"), str(saes1 / "relu-2x-l1_1"),
                          "--out", str(root / "overlap")], cap)
    res["top"] = run(["sae", "top-examples", MODEL, str(saes1 / "relu-2x-l1_1"), "--data", str(test_csv),
                      "--limit", "30", "--top-k", "6", "--out", str(root / "top")], cap)
    res["report"] = run(["report", str(root)], cap)
    return root, res


def test_pipeline_runs_and_numbers_are_sane(sae_run):
    root, res = sae_run
    for what, (code, _, _) in res.items():
        assert code == 0, what
    man = json.loads((root / "cache" / "manifest.json").read_text())
    assert man["complete"] and man["points"] == ["blocks.0.mlp_out", "blocks.1.mlp_out"] and len(man["shards"]) >= 2
    for layer in ("layer0", "layer1"):
        m = json.loads((root / layer / "sae_metrics.json").read_text())["dictionaries"]
        assert [d["dictionary"] for d in m] == ["relu-1x-l1_1", "relu-2x-l1_1"]
        for d in m:
            assert 0.3 < d["explained_variance"] <= 1 and 0 < d["l0"] < 128
        assert (root / layer / "checkpoints").is_dir() or layer == "layer1"
    ev = json.loads((root / "eval" / "sae_eval.json").read_text())["dictionaries"]
    for d in ev:
        assert d["zero_ablation"] > d["clean"] and d["spliced"] < d["zero_ablation"]
        # a toy story model on movie reviews: the reconstruction may even beat the clean loss (ratio > 1)
        assert d["loss_recovered"] > 0.5
        assert d["loss_recovered"] == pytest.approx((d["zero_ablation"] - d["spliced"]) /
                                                    (d["zero_ablation"] - d["clean"]))
    ov = json.loads((root / "overlap" / "overlap.json").read_text())
    assert 0 < ov["hungarian_mean_cos"] <= ov["mean_max_cos_a_to_b"] <= 1
    top = json.loads((root / "top" / "top_examples.json").read_text())
    assert len(top["features"]) == 6 and (root / "top" / "top_examples.html").is_file()
    assert (root / "top" / "neuronpedia.json").is_file()
    page = (root / "report.html").read_text()
    for word in ("explained_variance", "loss_recovered", "hungarian_mean_cos", "l0", 'class="top"',
                 "promoted tokens"):
        assert word in page, word


def test_resume_after_interruption_continues(sae_run, capsys):
    root, _ = sae_run
    log = (root / "layer0" / "train_log.jsonl").read_text().splitlines()
    # other settings than the checkpoint's: refused unless asked for (issue 11), then recorded
    code, _, err = run(["sae", "train", "--config", str(root / "train.yaml"), "--steps", "200"], capsys)
    assert code == 2 and "train.steps (150 -> 200)" in err and "--resume-anyway" in err
    code, _, err = run(["sae", "train", "--config", str(root / "train.yaml"), "--steps", "200", "--resume-anyway"],
                       capsys)
    assert code == 0, err
    steps = [json.loads(x)["step"] for x in (root / "layer0" / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 200 and len(steps) > len(log)
    assert len(steps) == len(set(steps))  # resuming never repeats log rows
    rec = json.loads((root / "layer0" / "train_config.json").read_text())
    assert rec["train"]["steps"] == 200 and rec["resumed"]["settings_before"]["train"]["steps"] == 150
    saved = json.loads((root / "layer0" / "saes" / "relu-1x-l1_1" / "cfg.json").read_text())["actlab"]
    assert saved["steps"] == 200 and saved["resumed"]["from_step"] <= 150


def test_online_mode_and_bad_input(tmp_path, capsys, sae_run):
    root, _ = sae_run
    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    code, _, err = run(["sae", "train", "--model", MODEL, "--data", str(data), "--point", "blocks.1.mlp_out",
                          "--expansion", "1", "--l1", "1", "--steps", "20", "--batch-size", "256",
                          "--out", str(tmp_path / "online")], capsys)
    assert code == 0, err
    assert (tmp_path / "online" / "saes" / "relu-1x-l1_1" / "sae_weights.safetensors").is_file()
    code, _, err = run(["sae", "eval", str(root / "layer1" / "saes" / "relu-1x-l1_1"), "--cache",
                        str(root / "cache"), "--model", "stories260k", "--data", str(data), "--out",
                        str(tmp_path / "e")], capsys)
    assert code == 2 and "'tinystories-656k', not 'stories260k'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("point: blocks.0.mlp_out\nout: x\ncache: y\ntrain: {steps: -3}\n")
    code, _, err = run(["sae", "train", "--config", str(bad)], capsys)
    assert code == 2 and "train.steps" in err


def test_surprising_metrics_are_explained_in_the_terminal():
    """Issue 27: a mostly dense dictionary, loss_recovered above 1 and a mostly dead dictionary each get a line
    saying what the number means; ordinary numbers get none."""
    from actlab.cli.sae import metric_notes

    assert metric_notes({"ok": {"dense_fraction": 0.01, "loss_recovered": 0.93, "dead_fraction": 0.1}}) == []
    notes = metric_notes({"a": {"dense_fraction": 1.0, "loss_recovered": 1.18, "dead_fraction": 0.0},
                          "b": {"dense_fraction": 0.0, "loss_recovered": 0.5, "dead_fraction": 0.9}})
    assert len(notes) == 3
    assert "a are mostly dense" in notes[0] and "above 1 for a" in notes[1] and "of b never fired" in notes[2]
