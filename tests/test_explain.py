"""Explanations scored locally: a latent planted to fire on one token (" the", read from the token ids of real
IMDb text), an explainer and a scorer behind a local OpenAI-compatible server that answer by a fixed rule. The
oracle explanation scores >= 0.9 balanced accuracy by detection and fuzzing, a shuffled one (another word)
about 0.5; unparseable replies count as failures; a re-run is served from the cache."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest
import torch
from torch import nn

from actlab.explain import collect, detection, explain, fuzzing, mark, parse_list, simulation
from actlab.explain.scoring import EXPLAIN, parse_digits
from actlab.llm import ReplyCache, endpoint_asker
from conftest import shared_path
from openai_server import openai_server

THE, AND = 265, 269  # stories260k's ids of " the" and " and"


class OneHot(nn.Module):
    """A 'dictionary' whose latent j fires (1.0) exactly on token j: the planted ground truth."""

    def __init__(self, vocab: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.cfg = type("Cfg", (), {"d_sae": vocab})()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _read(vocab: int):
    def read(batch):
        return torch.nn.functional.one_hot(batch["input_ids"], vocab).float(), batch["attention_mask"].sum(1)

    return read


def _rule(messages, model):
    """Explainer: names the most common marked token. Scorer: 1 where the explained word is in the snippet
    (detection) or is exactly what is marked (fuzzing)."""
    system, user = messages[0]["content"], messages[-1]["content"]
    snippets = re.findall(r"^Snippet \d+: (.*)$", user, re.M)
    if system == EXPLAIN:
        marked = Counter(m for s in snippets for m in re.findall(r"<<(.+?)>>", s))
        return f'Explanation: the token "{marked.most_common(1)[0][0]}"'
    word = re.search(r'the token "(.+?)"', system).group(1)
    if "garbage" in model:
        return "I think the first one, maybe."
    if "some tokens are marked" in system:  # fuzzing
        out = [int(bool(re.findall(r"<<(.+?)>>", s)) and all(m == word for m in re.findall(r"<<(.+?)>>", s)))
               for s in snippets]
    else:
        out = [int(bool(re.search(rf"(?<![A-Za-z<]){re.escape(word)}(?![A-Za-z>])", s))) for s in snippets]
    return str(out)


@pytest.fixture(scope="module")
def examples():
    import actlab
    from actlab.data import read_texts

    shared_path("models", "stories260k")
    model = actlab.load_model("stories260k")
    texts = read_texts(shared_path("data", "imdb", "imdb_train_sample.csv"), limit=120)
    vocab = len(model.tokenizer)
    ex = collect(model, OneHot(vocab), "blocks.0.resid_post", texts, [THE, AND], read=_read(vocab), n_top=10,
                 n_quantile=10, n_negative=20, max_length=64)
    return {e.latent: e for e in ex}


def test_examples_mark_the_planted_token_and_negatives_are_silent(examples):
    the = examples[THE]
    assert len(the.top) == 10 and len(the.quantile) == 10 and len(the.negative) == 20
    assert all(e.tokens[i] == " the" for e in the.top + the.quantile for i in e.active)
    assert all(not e.active for e in the.negative)
    assert mark([" a", " the", " cat"], [1]) == "a <<the>> cat"


def test_oracle_explanation_scores_high_and_a_shuffled_one_about_half(examples, tmp_path):
    with openai_server(_rule) as (url, requests):
        asker = endpoint_asker(url, "scorer", cache=ReplyCache(tmp_path / "cache"), concurrency=4, retries=0)
        explanation, _ = explain(asker, examples[THE])
        assert explanation == 'the token "the"'
        det, fuz = detection(asker, explanation, examples[THE]), fuzzing(asker, explanation, examples[THE])
        print("oracle", det["balanced_accuracy"], fuz["balanced_accuracy"])
        assert det["balanced_accuracy"] >= 0.9 and fuz["balanced_accuracy"] >= 0.9
        assert det["failed_replies"] == 0 and det["n"] == 40 and fuz["n"] == 40
        wrong = 'the token "and"'  # the other latent's explanation
        det_w, fuz_w = detection(asker, wrong, examples[THE]), fuzzing(asker, wrong, examples[THE])
        print("shuffled", det_w["balanced_accuracy"], fuz_w["balanced_accuracy"])
        assert 0.3 <= det_w["balanced_accuracy"] <= 0.7 and 0.3 <= fuz_w["balanced_accuracy"] <= 0.7
        n = len(requests)
        again = endpoint_asker(url, "scorer", cache=ReplyCache(tmp_path / "cache"), concurrency=4, retries=0)
        assert detection(again, explanation, examples[THE]) == {**det}
        assert again.requests == 0 and len(requests) == n  # every reply from the cache


def test_unparseable_replies_count_as_failures(examples):
    with openai_server(_rule) as (url, _):
        asker = endpoint_asker(url, "garbage-scorer", concurrency=2, retries=0)
        det = detection(asker, 'the token "the"', examples[THE], per_request=5)
    assert det["failed_replies"] == 8 and det["failed_items"] == 40
    assert det["balanced_accuracy"] == 0.0 and det["tp"] == 0 and det["tn"] == 0


# -- log-probabilities: AUC and simulation ----------------------------------------------------------------------
def _tokens(values: list[int], tops: list[dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    """A list reply as a tokenizer would write it: "[", "1", ",", " 0", ..., "]" with the digits' alternatives."""
    out: list[tuple[str, dict[str, float]]] = [("[", {"[": 0.0})]
    for i, (v, top) in enumerate(zip(values, tops, strict=True)):
        tok = str(v) if i == 0 else f" {v}"
        others = {(a if i == 0 else f" {a}"): lp for a, lp in top.items() if a != str(v)}
        out.append((tok, {tok: top[str(v)], **others}))
        out.append(("," if i < len(values) - 1 else "]", {}))
    return out


def _graded_rule(emitted: dict[str, float]):
    """Detection with a graded confidence: P(1) grows with how often the explained word occurs, and (for
    snippets without it) with the snippet's length, so an AUC differs from the hard answers' accuracy;
    ``emitted`` records each snippet's P(1). Simulation: 9 with probability 0.8 on the explained word's tokens,
    0 with probability 0.9 elsewhere."""

    def rule(messages, model):
        system, user = messages[0]["content"], messages[-1]["content"]
        word = re.search(r'the token "(.+?)"', system).group(1)
        if "Predict how strongly" in system:
            toks = [json.loads(line.split("\t", 1)[1]) for line in user.splitlines()]
            vals, tops = [], []
            for t in toks:
                hit = t.strip() == word
                vals.append(9 if hit else 0)
                tops.append({"9": math.log(0.8), "0": math.log(0.2)} if hit else
                            {"0": math.log(0.9), "9": math.log(0.1)})
            return {"content": str(vals), "tokens": _tokens(vals, tops)}
        snippets = re.findall(r"^Snippet \d+: (.*)$", user, re.M)
        vals, tops = [], []
        for snip in snippets:
            c = len(re.findall(rf"(?<![A-Za-z<]){re.escape(word)}(?![A-Za-z>])", snip))
            p1 = min(0.97, 0.55 + 0.1 * c) if c else min(0.45, len(snip) / 400)
            emitted[snip] = p1
            vals.append(int(p1 > 0.5))
            tops.append({"1": math.log(p1), "0": math.log(1 - p1)})
        return {"content": str(vals), "tokens": _tokens(vals, tops)}

    return rule


def test_detection_auc_from_logprobs_equals_sklearn_on_what_the_server_said(examples):
    from sklearn.metrics import roc_auc_score

    ex = examples[THE]
    truth = {mark(e.tokens, []): 1 for e in ex.top + ex.quantile} | {mark(e.tokens, []): 0 for e in ex.negative}
    emitted: dict[str, float] = {}
    with openai_server(_graded_rule(emitted)) as (url, requests):
        lp = endpoint_asker(url, "scorer", concurrency=4, retries=0, top_logprobs=5)
        for word in ("the", "and"):
            emitted.clear()
            det = detection(lp, f'the token "{word}"', ex)
            want = roc_auc_score([truth[s] for s in emitted], [emitted[s] for s in emitted])
            print(word, det["auc"], det["balanced_accuracy"])
            assert det["auc"] == pytest.approx(want, abs=1e-12)
            assert (det["auc"] >= 0.9) if word == "the" else (0.25 <= det["auc"] <= 0.75)
        assert requests[-1]["logprobs"] is True and requests[-1]["top_logprobs"] == 5
        plain = endpoint_asker(url, "scorer", concurrency=4, retries=0)  # no log-probabilities asked for
        det_plain = detection(plain, 'the token "the"', ex)
    assert det_plain["auc"] is None and det_plain["balanced_accuracy"] >= 0.9


def test_simulation_correlates_an_oracle_and_not_a_wrong_explanation(examples):
    ex = examples[THE]
    with openai_server(_graded_rule({})) as (url, _):
        lp = endpoint_asker(url, "scorer", concurrency=4, retries=0, top_logprobs=5)
        plain = endpoint_asker(url, "scorer", concurrency=4, retries=0)
        right = simulation(lp, 'the token "the"', ex)
        wrong = simulation(lp, 'the token "and"', ex)
        hard = simulation(plain, 'the token "the"', ex)
    print("simulation", right["correlation"], wrong["correlation"], hard["correlation"])
    assert right["expected_value"] and not hard["expected_value"]
    assert right["n_contexts"] == 40 and right["failed_replies"] == 0
    assert right["correlation"] > 0.99 and hard["correlation"] > 0.99  # the planted latent is the indicator
    assert wrong["correlation"] < 0.2


def test_parse_digits_is_strict():
    assert parse_digits("[0, 9, 3]", 3) == [0, 9, 3]
    for bad in ("[0, 10, 3]", "[0, 9]", "0 9 3", "[a, b, c]"):
        assert parse_digits(bad, 3) is None


def test_parse_list_is_strict():
    assert parse_list("[1, 0, 1]", 3) == [1, 0, 1]
    assert parse_list("Answer: [0,1]\nfinal [1, 1, 0]", 3) == [1, 1, 0]
    for bad in ("[1, 0]", "[1, 0, 2]", "1, 0, 1", "", "[yes, no, yes]"):
        assert parse_list(bad, 3) is None


# -- the command -----------------------------------------------------------------------------------------------
def _sae(tmp_path):
    from actlab.sae import SAEConfig, SparseAutoencoder
    from actlab.sae.io import save_sae

    sae = SparseAutoencoder(SAEConfig(64, 32, hook_point="blocks.2.resid_post", name="tiny"),
                            generator=torch.Generator().manual_seed(0))
    return save_sae(sae, tmp_path / "sae")


def test_sae_explain_command_writes_scores_reuses_its_cache_and_names_a_dead_url(tmp_path, capsys):
    import json

    from actlab.report.html import Page
    from test_cli import run

    shared_path("models", "stories260k")
    sae = _sae(tmp_path)
    imdb = str(shared_path("data", "imdb", "imdb_train_sample.csv"))
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"3": 'the token "the"', "5": 'the token "and"'}))
    with openai_server(_rule) as (url, requests):
        argv = ["sae", "explain", "stories260k", str(sae), "--data", imdb, "--limit", "40", "--scorer-url", url,
                "--scorer-model", "scorer", "--out", str(tmp_path / "out")]
        code, _, err = run([*argv, "--explanations", str(given)], capsys)
        assert code == 0, err[-2000:]
        res = json.loads((tmp_path / "out" / "explanations.json").read_text())
        assert [r["latent"] for r in res["latents"]] == [3, 5] and res["summary"]["requests"] > 0
        for r in res["latents"]:
            assert r["source"] == "given" and r["n_active"] > 0
            assert {"balanced_accuracy", "f1", "failed_replies"} <= set(r["detection"]) <= set(r["fuzzing"])
        n = len(requests)
        code, _, err = run([*argv, "--explanations", str(given)], capsys)  # again: every reply from the cache
        assert code == 0 and len(requests) == n, err[-2000:]
        code, _, err = run(["sae", "explain", "stories260k", str(sae), "--data", imdb, "--limit", "40",
                            "--explainer-url", url, "--explainer-model", "explainer", "--top-k", "2", "--out",
                            str(tmp_path / "explained")], capsys)
        assert code == 0, err[-2000:]
        res = json.loads((tmp_path / "explained" / "explanations.json").read_text())
        assert len(res["latents"]) == 2 and all(r["source"] == "explainer" and r["explanation"].startswith("the token")
                                                for r in res["latents"])
    from actlab.report.run_report import _render_json
    from actlab.report.sections import Context

    path = tmp_path / "explained" / "explanations.json"
    obj = json.loads(path.read_text())
    obj["latents"][0]["explanation"] = "<img src=x onerror=alert(1)>"
    path.write_text(json.dumps(obj))
    page = Page("t")
    _render_json(page, path, Context(path, {}, set(), {p.name: p for p in path.parent.iterdir()}))
    assert "<img src=x" not in page.render() and "&lt;img src=x" in page.render()
    dead = "http://127.0.0.1:9/v1"
    code, _, err = run(["sae", "explain", "stories260k", str(sae), "--data", imdb, "--limit", "10", "--scorer-url",
                        dead, "--scorer-model", "s", "--explanations", str(given), "--out", str(tmp_path / "dead")],
                       capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code != 0 and len(lines) == 1 and dead in lines[0] and "Traceback" not in err, err[-2000:]


def test_sae_explain_command_reports_auc_and_simulation_with_logprobs(tmp_path, capsys):
    import json

    from test_cli import run

    shared_path("models", "stories260k")
    sae = _sae(tmp_path)
    imdb = str(shared_path("data", "imdb", "imdb_train_sample.csv"))
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"3": 'the token "the"'}))
    with openai_server(_graded_rule({})) as (url, requests):
        code, out, err = run(["sae", "explain", "stories260k", str(sae), "--data", imdb, "--limit", "30",
                              "--scorer-url", url, "--scorer-model", "scorer", "--explanations", str(given),
                              "--logprobs", "5", "--simulate", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err[-2000:]
    res = json.loads((tmp_path / "out" / "explanations.json").read_text())
    row, summary = res["latents"][0], res["summary"]
    assert 0 <= row["detection"]["auc"] <= 1 and row["simulation"]["expected_value"]
    assert summary["detection_auc"] == row["detection"]["auc"]
    assert summary["simulation_correlation"] == row["simulation"]["correlation"]
    assert all(r.get("top_logprobs") == 5 for r in requests)
    assert "AUC (mean): detection" in out and "simulation: correlation" in out
    code, _, err = run(["sae", "explain", "stories260k", str(sae), "--data", imdb, "--scorer-url", "http://x/v1",
                        "--scorer-model", "s", "--explanations", str(given), "--logprobs", "50", "--out",
                        str(tmp_path / "bad")], capsys)
    assert code != 0 and "--logprobs" in err and "50" in err


def test_a_local_hf_chat_model_explains_and_its_replies_are_cached(examples, smollm, tmp_path):
    """The explainer as a local chat model (SmolLM2-135M-Instruct from the shared GGUF): the contexts go through
    its chat template, the reply is parsed like an endpoint's, and a second ask is served from the cache."""
    from actlab.llm import local_chat_asker

    asker = local_chat_asker(smollm, cache=ReplyCache(tmp_path / "cache"), max_new_tokens=40)
    assert asker.name.startswith("hf:")
    explanation, reply = explain(asker, examples[THE], n_contexts=4)
    print("local explanation:", reply)
    assert reply.strip() and explanation and asker.requests == 1
    again = local_chat_asker(smollm, cache=ReplyCache(tmp_path / "cache"), max_new_tokens=40)
    assert explain(again, examples[THE], n_contexts=4) == (explanation, reply) and again.requests == 0
