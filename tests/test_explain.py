"""Explanations scored locally: a latent planted to fire on one token (" the", read from the token ids of real
IMDb text), an explainer and a scorer behind a local OpenAI-compatible server that answer by a fixed rule. The
oracle explanation scores >= 0.9 balanced accuracy by detection and fuzzing, a shuffled one (another word)
about 0.5; unparseable replies count as failures; a re-run is served from the cache."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
from torch import nn

from actlab.explain import collect, detection, explain, fuzzing, mark, parse_list
from actlab.explain.scoring import EXPLAIN
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
