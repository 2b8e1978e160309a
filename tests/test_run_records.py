"""Every CLI command that edits a model records in its run.json what it actually applied: the records of the
interventions themselves (one vocabulary: full hook-point names), every cell of a sweep with its layer and
multiplier, weight edits too. The corpus (tests/corpus.py) watches every application while the commands run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actlab.hooks.points import parse_points

# command -> (its run folder under the corpus root, the kinds of interventions it must have applied and recorded)
EDITING = {
    "sweep": ("sweep", {"add"}),
    "mix": ("mix", {"mix"}),
    "refusal": ("refusal", {"add", "project_out"}),
    "ablate": ("ablated", {"orthogonalize"}),
    "patch": ("patch", {"hook"}),
    "prompting": ("prompting", {"replace"}),
    "curvature": ("curvature", {"add"}),
    "hessian": ("hessian", {"add"}),
    "sae_eval": ("sae/eval", {"replace"}),
    "eval": ("eval", {"add", "rotate", "project_out"}),
    "transcoder": ("transcoder", {"transcoder_replace"}),
}


def _key(rec: dict) -> str:
    return json.dumps({k: v for k, v in rec.items() if k != "order"}, sort_keys=True, default=str)


@pytest.mark.parametrize("name", sorted(EDITING))
def test_run_json_lists_what_the_command_applied(corpus, name):
    root, results = corpus
    code, argv, applied = results[name]
    assert code == 0, argv
    folder, kinds = EDITING[name]
    run = json.loads((Path(root) / folder / "run.json").read_text())
    recorded = run["interventions"]
    missing = {_key(r) for r in applied} - {_key(r) for r in recorded}
    assert applied or name == "ablate", f"{name} applied nothing"
    assert not missing, f"{name}: applied but not in run.json: {sorted(missing)[:2]}"
    assert kinds <= {r["kind"] for r in recorded}, (name, {r["kind"] for r in recorded})
    for r in recorded:  # one vocabulary: every point is a hook-point name the grammar reads back
        assert r.get("points"), (name, r)
        for p in r["points"]:
            assert parse_points(p, 5), (name, p)
        assert "point" not in r and "kinds" not in r, (name, r)


def test_a_sweep_records_every_cell(corpus):
    root, _results = corpus
    recorded = json.loads((Path(root) / "sweep" / "run.json").read_text())["interventions"]
    cells = [c for r in recorded if r["kind"] == "add" for c in r["cells"]]
    assert {(c.get("layer"), c["multiplier"]) for c in cells if c["multiplier"] != 0} == {
        (layer, m) for layer in (1, 3) for m in (-2.0, 2.0)}
    assert all(r["vector"]["source"]["sha256"] for r in recorded if r["kind"] == "add")


def test_commands_that_edit_nothing_record_nothing(corpus):
    root, results = corpus
    for name, folder in (("cache", "cache"), ("tuned_lens", "tuned_lens"), ("diverge", "diverge")):
        assert results[name][2] == [], name
        assert json.loads((Path(root) / folder / "run.json").read_text())["interventions"] == [], name


def test_no_lock_file_is_left_behind(corpus):
    """A finished job removes its folder lock (a saved model folder gets uploaded as it is)."""
    root, _ = corpus
    assert not list(Path(root).rglob(".actlab.lock"))


def test_every_run_log_says_when_it_started_and_how_it_ended(corpus):
    root, _ = corpus
    logs = sorted(Path(root).rglob("run.log"))
    assert len(logs) >= 20
    for p in logs:
        lines = p.read_text().splitlines()
        assert lines and "started: actlab " in lines[0] and "finished: ok" in lines[-1], (p, lines[:2], lines[-1:])
