"""kill -9, then resume: every resumable job ends with the same results as a run that was never interrupted.

Each job runs once uninterrupted (the reference), then again as a separate process that is sent SIGKILL as soon as
its resume record shows progress (whatever it was doing at that instant), then once more in the same folder to
finish. The results must equal the reference bit for bit, and the killed folder must have been resumed (not
started over) with no temp file left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import shared_path
from test_cli import run

TINY = "stories260k"


def _killed(argv: list[str], ready: Callable[[], bool], timeout: float = 120) -> bool:
    """Run ``actlab argv`` in a process and SIGKILL it once ``ready()``; True when it was killed mid-way."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "actlab", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                return False
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                return True
            time.sleep(0.01)
        raise AssertionError(f"{argv[:2]} made no progress in {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()


def _record(folder: Path, job: str) -> dict:
    p = folder / ".resume" / f"{job}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp") if p.is_file()] + list(folder.rglob(".tmp_step_*"))


def _resume_case(tmp_path, capsys, argv: Callable[[Path], list[str]], ready: Callable[[Path], bool]) -> Path:
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    code, _, err = run(argv(ref), capsys)
    assert code == 0, err
    assert _killed(argv(crashed), lambda: ready(crashed)), "the job finished before it could be killed"
    code, _, err = run(argv(crashed), capsys)
    assert code == 0, err
    assert not _temps(crashed), _temps(crashed)
    return ref


def _vector(tmp_path, capsys, layers: str) -> tuple[Path, Path]:
    """A CAA vector of the tiny model and the behaviour's A/B test questions."""
    data = shared_path("data", "caa")
    vec = tmp_path / "v.safetensors"
    gen = data / "generate" / "corrigible-neutral-HHH" / "generate_dataset.json"
    assert run(["steer", "extract", TINY, "--data", str(gen), "--limit", "8", "--layers", layers, "--truncate",
                "skip", "--out", str(vec)], capsys)[0] == 0
    return vec, data / "test" / "corrigible-neutral-HHH" / "test_dataset_ab.json"


def test_sweep(tmp_path, capsys):
    vec, ab = _vector(tmp_path, capsys, "1-3")

    def argv(out):
        return ["steer", "sweep", TINY, "--vector", str(vec), "--data", str(ab), "--layers", "1-3", "--multipliers",
                "-3,-1,0,1,3", "--batch-size", "1", "--out", str(out)]

    ref = _resume_case(tmp_path, capsys, argv,
                       lambda f: bool((_record(f, "steer-sweep").get("progress") or {}).get("state", {})
                                      .get("rows_done")))
    a = json.loads((ref / "sweep.json").read_text())["cells"]
    b = json.loads((tmp_path / "crashed" / "sweep.json").read_text())["cells"]
    assert a.keys() == b.keys() and all(a[k]["per_question"] == b[k]["per_question"] for k in a)


def test_activation_cache(tmp_path, capsys):
    imdb = shared_path("data", "imdb", "imdb_train_sample.csv")

    def argv(out):
        return ["acts", "cache", TINY, "--data", str(imdb), "--limit", "300", "--max-length", "64", "--batch-size",
                "2", "--shard-tokens", "200", "--points", "blocks.1.resid_post,blocks.3.mlp_out", "--out", str(out)]

    ref = _resume_case(tmp_path, capsys, argv,
                       lambda f: len(((_record(f, "acts-cache").get("progress") or {}).get("state") or {})
                                     .get("shards", [])) >= 2)
    a = json.loads((ref / "manifest.json").read_text())
    b = json.loads((tmp_path / "crashed" / "manifest.json").read_text())
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]] and b["complete"]


def test_sae_training(tmp_path, capsys):
    imdb = shared_path("data", "imdb", "imdb_train_sample.csv")
    cache = tmp_path / "cache"
    assert run(["acts", "cache", TINY, "--data", str(imdb), "--limit", "120", "--max-length", "64", "--points",
                "blocks.2.resid_post", "--out", str(cache)], capsys)[0] == 0

    def argv(out):
        return ["sae", "train", "--cache", str(cache), "--point", "blocks.2.resid_post", "--expansion", "2,4",
                "--steps", "1500", "--batch-size", "256", "--checkpoint-every", "100", "--out", str(out)]

    ref = _resume_case(tmp_path, capsys, argv, lambda f: any((f / "checkpoints").glob("step_*/state.json")))
    rec = json.loads((tmp_path / "crashed" / "train_config.json").read_text())
    assert rec["resumed"]["from_step"] > 0
    from safetensors.torch import load_file

    for d in (ref / "saes").iterdir():
        a, b = load_file(str(d / "sae_weights.safetensors")), load_file(str(tmp_path / "crashed" / "saes" / d.name
                                                                             / "sae_weights.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), d.name


def test_tuned_lens_training(tmp_path, capsys):
    imdb = shared_path("data", "imdb", "imdb_train_sample.csv")

    def argv(out):
        return ["tuned-lens", "tinystories-656k", "--data", str(imdb), "--limit", "80", "--held-out", "8",
                "--steps", "60", "--checkpoint-every", "5", "--max-length", "48", "--out", str(out)]

    ref = _resume_case(tmp_path, capsys, argv, lambda f: any((f / "checkpoints").glob("step_*/state.json")))
    from safetensors.torch import load_file

    a = load_file(str(ref / "lens" / "params.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "lens" / "params.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((ref / "tuned_lens.json").read_text())["history"] == \
        json.loads((tmp_path / "crashed" / "tuned_lens.json").read_text())["history"]


def test_refusal_candidates(tmp_path, capsys):
    splits = shared_path("data", "refusal_direction", "splits")

    def argv(out):
        return ["steer", "refusal", TINY, "--harmful", str(splits / "harmful_train.json"), "--harmless",
                str(splits / "harmless_train.json"), "--n-train", "32", "--n-val", "16", "--positions", "last:3",
                "--top-k", "2", "--max-new-tokens", "8", "--out", str(out)]

    ref = _resume_case(tmp_path, capsys, argv, lambda f: "candidates" in _record(f, "steer-refusal").get("steps", {}))
    from actlab.steering import SteeringVector

    a, b = SteeringVector.load(ref / "direction.safetensors"), SteeringVector.load(tmp_path / "crashed" /
                                                                                   "direction.safetensors")
    assert a.layers == b.layers and all(torch.equal(a[k], b[k]) for k in a.layers)
    assert json.loads((ref / "candidates.json").read_text()) == \
        json.loads((tmp_path / "crashed" / "candidates.json").read_text())


@pytest.mark.parametrize("change", ["--layers 1-3 --multipliers -3,0,3", "--layers 1-2 --multipliers -3,-1,0,1,3"])
def test_changed_settings_are_refused_with_one_message(tmp_path, capsys, change):
    vec, ab = _vector(tmp_path, capsys, "1-4")
    base = ["steer", "sweep", TINY, "--vector", str(vec), "--data", str(ab), "--limit", "4", "--out",
            str(tmp_path / "s")]
    assert run([*base, "--layers", "1-2", "--multipliers", "-3,0,3"], capsys)[0] == 0
    before = (tmp_path / "s" / "run.json").read_text()
    code, _, err = run([*base, *change.split()], capsys)
    if change.startswith("--layers 1-3"):  # another layer is another vector: the sweep's fingerprint changed
        assert code == 2 and "with other settings: vector_sha256" in err and "--overwrite" in err
        # the folder still holds the first sweep's results: its record is not turned into a failed run
        assert (tmp_path / "s" / "run.json").read_text() == before and json.loads(before)["status"] == "ok"
        assert "refused, run.json left as it was" in (tmp_path / "s" / "run.log").read_text()
    else:  # the same vector and questions: finished cells are reused, new ones computed
        assert code == 0, err
        cells = json.loads((tmp_path / "s" / "sweep.json").read_text())["cells"]
        assert len(cells) == 10


def test_a_refused_resume_after_recorded_work_ends_refused_not_failed(tmp_path):
    """When the attempt recorded something before its resume record refused it, run.json says ``refused`` with
    the reason and keeps the earlier attempt under ``previous``; any other error still ends ``failed``."""
    from actlab.errors import ResumeRefused
    from actlab.runs import Resume, Run

    with Run(tmp_path, "job", {"a": 1}):
        Resume(tmp_path, "job", {"a": 1}).mark("step")
    with pytest.raises(ResumeRefused), Run(tmp_path, "job", {"a": 2}) as r:
        r.results["cached"] = 3
        Resume(tmp_path, "job", {"a": 2})
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["status"] == "refused" and "other settings: a (1 -> 2)" in rec["results"]["error"]
    assert rec["previous"][-1]["status"] == "ok"
    with pytest.raises(RuntimeError), Run(tmp_path, "job", {"a": 2}):
        raise RuntimeError("boom")
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"
