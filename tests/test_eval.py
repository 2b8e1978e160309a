"""``actlab eval``: the harness's protocol, each piece against an independent computation or a planted truth.

- a method's A/B curve = ``steer sweep`` for the same vector and grid;
- selection never reads the test split (poisoned test items, same choice);
- the letter-balance check flags a model steered towards the letter "A";
- steerability slopes = a hand least-squares fit;
- the judge client against a local OpenAI-compatible server (scores parsed, unparsed counted, retries, cache,
  dead URL); an evaluation with a judge resumes without paying twice;
- a behaviour planted in stories260k's weights: mean difference recovers it on test, prompting does not;
- rotation by 0 degrees = no intervention, by 180 = the activation reversed (raw torch hook);
- kill -9 part way, resume, identical files; torchrun (2 processes) = 1 process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actlab.data import ABItem
from actlab.eval import EvalConfig, run_eval, select
from actlab.eval.behaviours import load_behaviour
from actlab.eval.context import Context
from actlab.eval.grid import ab_pass, per_item, summary
from actlab.eval.methods import MeanDiff
from actlab.eval.metrics import slopes, steerability
from actlab.hooks.points import HookPoint
from actlab.steering.prefix import CellEdits, cell_logits
from conftest import shared_path
from openai_server import Status, openai_server


def _cfg(tmp_path: Path, **over) -> EvalConfig:
    """A small evaluation of stories260k on one CAA behaviour."""
    base = {"model": "stories260k", "out": str(tmp_path / "run"), "data_dir": str(shared_path("data")),
            "behaviours": [{"name": "corrigible-neutral-HHH", "source": "caa"}],
            "methods": ["prompt", "mean_diff", "rotation"],
            "grid": {"layers": "1,3", "multipliers": [-2.0, 2.0], "angles": [90.0]},
            "extraction_limit": 16, "ab_limit": 16, "open_ended": {"n": 0}, "side_effects": {"n_neutral": 8},
            "bootstrap": 100, "steerability": {"multipliers": [-2.0, 0.0, 2.0]}}
    for k, v in over.items():
        base[k] = v
    return EvalConfig.model_validate(base)


def _chosen(board: dict) -> dict:
    return {r["method"]: (r["layer"], r["strength"]) for r in board["rows"]}


# -- the A/B grid is the sweep's ------------------------------------------------------------------------------
def test_method_curve_equals_steer_sweep(tmp_path, smollm):
    """The mean-difference method's cells, evaluated by the harness (both letter orders, every variant's cells
    in one pass), give for the as-given order exactly the p(matching) ``steer sweep`` computes per question."""
    from actlab.steering.evaluate import ab_sweep

    cfg = _cfg(tmp_path, model="smollm", behaviours=[{"name": "sycophancy", "source": "caa"}],
               grid={"layers": "3,6", "multipliers": [-1.0, 2.0]}, extraction_limit=8, ab_limit=8)
    beh = load_behaviour(cfg.behaviours[0], cfg)
    ctx = Context(cfg, smollm, tmp_path / "run", None, [3, 6])
    cells = MeanDiff().cells(ctx, beh, [3, 6])
    items = beh.validation + beh.test
    ab = ab_pass(ctx, items, ctx.style(beh, "plain"), cells, "test")
    vec = ctx.vector(beh, "mean_diff")
    res = ab_sweep(smollm, vec, items, layers=[3, 6], multipliers=[-1.0, 2.0], style=ctx.style(beh, "plain"),
                   positions="auto")
    assert len(cells) == 4
    for j, c in enumerate(cells):
        mine = per_item(ab, j, len(items))["p_orig"]
        ref = torch.tensor(res.cells[f"{c.layer}:{c.strength:g}"]["per_question"], dtype=torch.float64)
        torch.testing.assert_close(mine, ref, rtol=0, atol=2e-5)
    assert ab["steered_from_eoi"] == len(ab["src"])  # the chat template: every row steered from its EOI


# -- selection ------------------------------------------------------------------------------------------------
def test_select_takes_the_largest_effect_within_the_kl_limit():
    c = [{"effect": 0.3, "kl": 2.0, "strength": 4.0, "layer": 1}, {"effect": 0.2, "kl": 0.5, "strength": 2.0,
                                                                     "layer": 1},
         {"effect": 0.2, "kl": 0.4, "strength": 1.0, "layer": 2}, {"effect": -0.4, "kl": 0.1, "strength": -2.0,
                                                                     "layer": 1}]
    assert select(c, 1.0) == (2, True)  # 0.3 is over the limit; the tie goes to the weaker strength
    assert select(c, 1.0, "decrease") == (3, True)
    assert select(c, 0.05) == (3, False)  # nothing within: the smallest KL


def test_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    """The same evaluation with the test split's answers swapped (and questions changed): every method's chosen
    cell is the same, while the test numbers change."""
    import actlab.eval.harness as harness

    clean = run_eval(_cfg(tmp_path / "a"))
    real = harness.load_behaviour

    def poisoned(spec, cfg):
        beh = real(spec, cfg)
        beh.test = [ABItem("Ignore this. " + it.question, it.not_matching, it.matching) for it in beh.test]
        return beh

    monkeypatch.setattr(harness, "load_behaviour", poisoned)
    bad = run_eval(_cfg(tmp_path / "b"))
    assert _chosen(clean) == _chosen(bad)
    for a, b in zip(clean["rows"], bad["rows"], strict=True):
        assert a["validation_effect"] == b["validation_effect"] and a["kl"] == b["kl"]
    assert any(abs(a["test_p"] - b["test_p"]) > 1e-3 for a, b in zip(clean["rows"], bad["rows"], strict=True))


# -- letter balance ------------------------------------------------------------------------------------------
def test_letter_balance_flags_a_model_steered_to_answer_a(tmp_path, stories260k):
    """A vector along W_U[A] - W_U[B] at the last layer makes stories260k say "A" whatever the question: its
    cell is flagged letter-driven (p(first) near 1, order consistency near 0) and the leaderboard warns; the
    unsteered model is not flagged."""
    from actlab.steering.evaluate import ab_prompts
    from actlab.steering.prompts import resolve_style
    from actlab.steering.vector import SteeringVector

    cfg = _cfg(tmp_path)
    beh = load_behaviour(cfg.behaviours[0], cfg)
    pr = ab_prompts(stories260k, beh.test[:1], resolve_style(stories260k))[0]
    a_id, b_id = (pr.match_id, pr.other_id) if pr.match_label == "A" else (pr.other_id, pr.match_id)
    w = stories260k.hf.get_output_embeddings().weight.detach()
    last = stories260k.n_layers - 1
    vec = SteeringVector({last: 40 * (w[a_id] - w[b_id])}, "resid_post", {"method": "letter"})
    vec.save(tmp_path / "letter.safetensors")
    board = run_eval(_cfg(tmp_path, methods=["file"], vectors={"letter": str(tmp_path / "letter.safetensors")},
                          grid={"layers": str(last), "multipliers": [1.0]}))
    rows = {r["method"]: r for r in board["rows"]}
    assert rows["file"]["test_letter_driven"] and rows["file"]["test_p_first"] > 0.9
    assert rows["file"]["test_order_consistency"] < 0.2
    assert not rows["baseline"]["test_letter_driven"]
    assert any("follow the letter" in w for w in board["warnings"])


def test_letter_balance_summary_on_hand_made_numbers():
    """Two items, each in both orders; a model that always prefers the first letter scores p(first) 1."""
    ab = {"ld": [[5.0], [-5.0], [5.0], [-5.0]], "src": [0, 0, 1, 1], "order": [0, 1, 0, 1], "index": [0],
          "first_is_match": [True, False, True, False]}
    s = summary(ab, 0, slice(0, 2), 2, None, n_boot=100, seed=0)
    assert s["p_first"] > 0.99 and s["letter_driven"] and abs(s["p"] - 0.5) < 1e-9


# -- steerability ---------------------------------------------------------------------------------------------
def test_steerability_slopes_equal_a_hand_least_squares_fit():
    g = torch.Generator().manual_seed(3)
    mults = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    y = torch.randn(25, len(mults), generator=g, dtype=torch.float64)
    a = np.stack([np.array(mults), np.ones(len(mults))], 1)
    ref = np.array([np.linalg.lstsq(a, row, rcond=None)[0][0] for row in y.numpy()])
    np.testing.assert_allclose(slopes(mults, y).numpy(), ref, rtol=0, atol=1e-12)
    s = steerability(mults, y)
    assert s["anti_steerable_fraction"] == pytest.approx(float((ref <= 0).mean()))
    assert s["mean_slope"] == pytest.approx(float(ref.mean()))
    with pytest.raises(ValueError):
        slopes([1.0, 1.0], y[:, :2])


# -- the judge ------------------------------------------------------------------------------------------------
def _reply(fail_first: int = 0):
    calls = {"n": 0}

    def reply(messages, model):
        calls["n"] += 1
        if calls["n"] <= fail_first:
            raise Status(503)
        system = messages[0]["content"]
        if system.startswith("Score how strongly"):
            return "7"
        if "concept" in system:
            return "Rating: [[2]]"
        if "instruction" in system:
            return "I cannot rate this."
        return None  # fluency: no content, as a reasoning server may answer
    return reply


def test_judge_parses_scores_counts_unparsed_retries_and_caches(tmp_path):
    from actlab.eval.judge import ReplyCache, endpoint_judge, summarise

    with openai_server(_reply(fail_first=2)) as (url, requests):
        judge = endpoint_judge(url, "judge-model", cache=ReplyCache(tmp_path / "cache"), concurrency=4, retries=3,
                               timeout=10)
        judge.backoff = 0.01
        rubrics = ["behaviour", "concept", "instruction", "fluency"]
        got = judge.rate(rubrics, "sycophancy", ["p1", "p2", "p3"], ["t1", "t2", "t3"])
        assert len(requests) == 12 + 2  # two 503s retried
        assert [g["behaviour"].score for g in got] == [7.0] * 3
        assert [g["concept"].score for g in got] == [2.0] * 3
        assert all(not g["instruction"].parsed and g["instruction"].score == 0 for g in got)
        assert all(not g["fluency"].parsed and g["fluency"].reply == "" for g in got)
        s = summarise(got)
        assert s["judge_behaviour"] == 7.0 and s["judge_unparsed"] == 6 and s["judge_axbench_hm"] == 0.0
        again = endpoint_judge(url, "judge-model", cache=ReplyCache(tmp_path / "cache"), concurrency=4, retries=0,
                               timeout=10).rate(rubrics, "sycophancy", ["p1", "p2", "p3"], ["t1", "t2", "t3"])
        assert len(requests) == 14 and all(r.cached for g in again for r in g.values())
        assert requests[-1]["model"] == "judge-model"


def test_judge_on_a_dead_url_is_one_clear_error(tmp_path):
    import socket

    from actlab.eval.judge import endpoint_judge
    from actlab.llm import EndpointError

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    judge = endpoint_judge(f"http://127.0.0.1:{port}/v1", "m", cache=None, concurrency=2, retries=1, timeout=2)
    judge.backoff = 0.01
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}/v1/chat/completions is unreachable"):
        judge.rate(["behaviour"], "x", ["p"], ["t"])


def test_evaluation_with_a_judge_logs_every_rating_and_resumes_without_paying_twice(tmp_path):
    with openai_server(_reply()) as (url, requests):
        cfg = _cfg(tmp_path, methods=["mean_diff"], open_ended={"n": 2, "max_new_tokens": 8},
                   judge={"base_url": url, "model": "j"})
        board = run_eval(cfg)
        n = len(requests)
        assert n == 2 * 2 * 4  # baseline + mean_diff, 2 prompts, 4 rubrics
        row = next(r for r in board["rows"] if r["method"] == "mean_diff")
        assert row["judge_behaviour"] == 7.0 and row["judge_unparsed"] == 4
        log = [json.loads(x) for x in (cfg.out / "judgements.jsonl").read_text().splitlines()]
        assert len(log) == n and {"prompt", "text", "reply", "score", "rubric"} <= set(log[0])
        again = run_eval(cfg)
        assert len(requests) == n and again["rows"] == board["rows"]


# -- a planted behaviour ----------------------------------------------------------------------------------------
def test_planted_behaviour_is_recovered_by_mean_difference_not_by_prompting(tmp_path):
    """stories260k with a direction u planted in its (tied) embeddings: the answer token "happy" gets +c u, "big"
    gets -c u, so u in the residual stream reads and writes the answer. On questions it never saw (IMDb review
    openings), the mean-difference vector recovers u and raises p("happy") on the test split; an instruction
    the model cannot read does not do better."""
    import actlab
    from actlab.data import imdb_prefixes

    m = actlab.load_model("stories260k")
    ids = [m.tokenizer("Answer: " + w, add_special_tokens=False)["input_ids"][-1] for w in ("happy", "big")]
    g = torch.Generator().manual_seed(0)
    u = torch.randn(m.d_model, generator=g)
    u /= u.norm()
    emb = m.hf.get_input_embeddings().weight
    with torch.no_grad():
        c = 0.5 * float(emb.norm(dim=-1).mean())
        emb[ids[0]] += c * u
        emb[ids[1]] -= c * u
    qs = imdb_prefixes(shared_path("data", "imdb", "imdb_test_sample.csv"), 72, words=10)
    rows = [{"question": q, "answer_matching_behavior": "happy", "answer_not_matching_behavior": "big"}
            for q in qs]
    (tmp_path / "ext.json").write_text(json.dumps(rows[:32]))
    (tmp_path / "ab.json").write_text(json.dumps(rows[32:]))
    cfg = _cfg(tmp_path, behaviours=[{"name": "happy", "source": "file", "extraction": str(tmp_path / "ext.json"),
                                      "ab": str(tmp_path / "ab.json"), "description": "answering happy"}],
               methods=["prompt", "mean_diff"], grid={"layers": "0-2", "multipliers": [0.5, 1.0, 2.0]},
               ab_limit=40, extraction_limit=32, selection={"max_kl": 5.0})
    board = run_eval(cfg, model=m)
    rows_ = {r["method"]: r for r in board["rows"]}
    md, pr = rows_["mean_diff"], rows_["prompt"]
    assert md["test_effect_low"] > 0.02, md
    assert md["test_effect"] > pr["test_effect"] + 0.02, (md["test_effect"], pr["test_effect"])
    from actlab.steering.vector import SteeringVector

    vec = SteeringVector.load(cfg.out / "vectors" / "happy.mean_diff.safetensors")
    from actlab.jobs.steering import extract_vector, read_contrast

    unplanted = extract_vector(actlab.load_model("stories260k"), read_contrast(tmp_path / "ext.json"), layers=[0])
    along = float(vec[0].double() @ u.double()) - float(unplanted[0].double() @ u.double())
    print(f"planted c={c:.3f}; mean difference along u at layer 0, planted minus unplanted: {along:.3f}; test "
          f"effect {md['test_effect']:.3f} vs prompt {pr['test_effect']:.3f}")
    assert along > c  # the planted 2c u, read back at the answer token


# -- rotation -------------------------------------------------------------------------------------------------
def test_rotation_by_0_is_no_intervention_and_by_180_reverses_the_activation(stories260k):
    m = stories260k
    texts = ["Once upon a time there was a cat", "The dog ran to the park and", "Lily liked red"]
    rows = [m.tokenizer(t)["input_ids"] for t in texts]
    starts = [3, 2, 4]
    point = HookPoint(2, "resid_post")
    d = torch.randn(m.d_model, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d /= d.norm()
    got = cell_logits(m, rows, starts, [{}, CellEdits(rotate=(point, d, 0.0, "by")),
                                        CellEdits(rotate=(point, d, 180.0, "by"))], batch_size=2)
    torch.testing.assert_close(got[:, 1], got[:, 0], rtol=0, atol=1e-5)
    layer = m.hf.model.layers[2]
    for i, (r, s) in enumerate(zip(rows, starts, strict=True)):
        def negate(module, args, out, s=s):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[:, s:] = -h[:, s:]
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handle = layer.register_forward_hook(negate)
        try:
            with torch.no_grad():
                ref = m.hf(input_ids=torch.tensor([r])).logits[0, -1]
        finally:
            handle.remove()
        torch.testing.assert_close(got[i, 2], ref.float(), rtol=0, atol=2e-4 * float(ref.abs().max()))


# -- resume and torchrun -------------------------------------------------------------------------------------
def _yaml(tmp_path: Path, out: Path, **over) -> Path:
    import yaml

    cfg = _cfg(tmp_path, **over).model_dump(mode="json")
    cfg["out"] = str(out)
    p = tmp_path / f"{out.name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _outputs(folder: Path) -> tuple[list, str]:
    board = json.loads((folder / "leaderboard.json").read_text())
    return board["rows"], (folder / "results.jsonl").read_text()


def test_eval_resumes_after_kill_9_with_identical_results(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    over = {"open_ended": {"n": 2, "max_new_tokens": 6}}
    one = _yaml(tmp_path, tmp_path / "clean", **over)
    subprocess.run([sys.executable, "-m", "actlab", "eval", "run", str(one)], check=True, env=env,
                   capture_output=True, timeout=600)
    cfg = _yaml(tmp_path, tmp_path / "killed", **over)
    p = subprocess.Popen([sys.executable, "-m", "actlab", "eval", "run", str(cfg)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps = tmp_path / "killed" / ".resume" / "eval.steps"
    t0 = time.time()
    while p.poll() is None and len(list(steps.glob("*.json"))) < 3 and time.time() - t0 < 300:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed" / "leaderboard.json").exists()
    r = subprocess.run([sys.executable, "-m", "actlab", "eval", "run", str(cfg)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _outputs(tmp_path / "killed") == _outputs(tmp_path / "clean")


def test_torchrun_eval_equals_one_process(tmp_path):
    from test_scale import _one_process, _torchrun

    over = {"open_ended": {"n": 3, "max_new_tokens": 6}, "batch_size": 4}
    _torchrun(["eval", "run", str(_yaml(tmp_path, tmp_path / "two", **over))])
    _one_process(["eval", "run", str(_yaml(tmp_path, tmp_path / "one", **over))])
    assert _outputs(tmp_path / "two") == _outputs(tmp_path / "one")


def test_sentiment_refusal_and_persona_behaviours_run_end_to_end(tmp_path):
    """The built-in sources without A/B items (sentiment: VADER on IMDb continuations; refusal: the refusal
    rate on harmless instructions) are selected on validation generations; a persona Yes/No file becomes A/B
    choices with the Yes letter balanced. On stories260k, for the plumbing: every row present and numeric."""
    persona = tmp_path / "persona.jsonl"
    rows = [{"question": f"Is the following statement something you would say?\n\"I like number {i}\"",
             "statement": f"I like number {i}", "answer_matching_behavior": " Yes" if i % 3 else " No",
             "answer_not_matching_behavior": " No" if i % 3 else " Yes"} for i in range(24)]
    persona.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path, behaviours=[{"name": "sentiment", "source": "sentiment"},
                                     {"name": "refusal", "source": "refusal"},
                                     {"name": "numbers", "source": "persona", "file": str(persona)}],
               methods=["prompt", "mean_diff"], grid={"layers": "2", "multipliers": [-2.0, 2.0]},
               extraction_limit=8, ab_limit=12, open_ended={"n": 2, "max_new_tokens": 6})
    board = run_eval(cfg)
    by = {(r["behaviour"], r["method"]): r for r in board["rows"]}
    assert set(by) == {(b, m) for b in ("sentiment", "refusal", "numbers") for m in ("baseline", "prompt",
                                                                                     "mean_diff")}
    for b in ("sentiment", "refusal"):
        assert isinstance(by[(b, "mean_diff")]["open_effect"], float)
        assert isinstance(by[(b, "mean_diff")]["open_score"], float)
    assert isinstance(by[("numbers", "mean_diff")]["test_p"], float)
    letters = [json.loads(x) for x in (cfg.out / "results.jsonl").read_text().splitlines()
               if json.loads(x)["behaviour"] == "numbers"]
    assert letters and all("p_swapped" in r for r in letters)  # every persona item seen in both orders
