"""The CLI: info, lens (table, JSON, HTML), demo, and clean exit-2 errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from actlab.cli import main
from conftest import shared_path


def run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info(capsys):
    shared_path("models", "stories260k")
    code, out, _ = run(["info", "stories260k"], capsys)
    assert code == 0
    assert "LlamaForCausalLM" in out and "d_model" in out and "64" in out and "blocks.{i}.resid_mid" in out


def test_lens_json_and_html(tmp_path, capsys):
    shared_path("models", "stories260k")
    j, h = tmp_path / "lens.json", tmp_path / "lens.html"
    code, out, err = run(["lens", "stories260k", "--prompt", "Once upon a time there was <b>a", "--target", " a",
                          "--points", "resid_post,attn_out", "--top-k", "3", "--json", str(j), "--html", str(h)],
                         capsys)
    assert code == 0, err
    assert "resid_post" in out and "attn_out" in out
    assert "3 most likely next tokens" in out and "r = its rank" in out  # the cells' legend
    d = json.loads(j.read_text())
    pts = d["prompts"][0]["points"]
    assert len(pts["resid_post"]) == 5 and len(pts["resid_post"][0]["top"]) == 3
    assert {"token", "id", "prob"} <= set(pts["resid_post"][0]["top"][0])
    page = h.read_text()
    assert "&lt;b&gt;a" in page and "<b>a" not in page
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")


@pytest.mark.parametrize(
    "args,expected",
    [
        (["lens", "stories260k", "--prompt", "hi", "--points", "blocks.9.resid_post"], "out of range"),
        (["lens", "stories260k", "--prompt", "hi", "--points", "resid_psot"], "Did you mean 'resid_post'"),
        (["lens", "stories260k", "--prompt", ""], "empty"),
        (["lens", "stories260k", "--prompt", "word " * 600], "longer than the model's context"),
        (["info", "./no-such-model"], "not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, expected, capsys):
    shared_path("models", "stories260k")
    code, _, err = run(args, capsys)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_entry_point_subprocess(tmp_path):
    shared_path("models", "stories260k")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"XXXX1234")
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "actlab", "info", str(bad)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "not a GGUF file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "actlab", "lens", "--help"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and "--target" in r.stdout and "--json" in r.stdout


def test_demo_writes_report(tmp_path, capsys, smollm):
    out = tmp_path / "demo"
    code, _, err = run(["demo", "--out", str(out)], capsys)
    assert code == 0, err
    for f in ("index.html", "lens.json", "summary.json", "run.json", "lens_paris.png", "steering.json",
              "steering_vader.png", "sentiment_vector.safetensors"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    paris = next(r for r in summary["lens"] if r["prompt"] == "The capital of France is")
    assert paris["model_prediction"] == " Paris" and paris["final_prob"] > 0.5
    steering = summary["steering"]
    vader = steering["mean_vader"]
    assert steering["monotonic"] and vader["-4"] < vader["0"] < vader["4"]
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "<script" not in page
    run_meta = json.loads((out / "run.json").read_text())
    assert run_meta["versions"]["torch"] and run_meta["config"]["command"] == "demo"


def test_version_and_short_help(capsys):
    import importlib.metadata as md

    from actlab.version import __version__

    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith(f"actlab {__version__} (torch {md.version('torch')}, transformers ")
    for argv in (["-h"], ["steer", "sweep", "-h"], ["sae", "-h"]):
        code, out, err = run(argv, capsys)
        assert code == 0 and out.startswith("Usage: actlab"), (argv, err)


def test_ablate_names_which_layer_holds_the_direction_apart_from_where_it_is_removed(capsys):
    code, out, _ = run(["steer", "ablate", "--help"], capsys)
    assert code == 0 and "--direction-layer" in out and "see --layers" in " ".join(out.split())
