"""The classifier reward (issue 25, the LFP study's Appendix B): any HF sequence-classification model's logit for a
label, tested with a tiny random classifier built here (the study's DistilBERT IMDb model needs the hub)."""

from __future__ import annotations

import json

import pytest
import torch

from actlab.errors import InputError
from actlab.finetune.rewards import ClassifierReward
from conftest import shared_path
from test_cli import run


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(shared_path("models", "tinystories-656k"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=2,
                      id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg).eval()
    path = tmp_path_factory.mktemp("clf") / "tiny-sentiment"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


def test_scores_are_the_labels_logit(tiny_classifier):
    path, model, tok = tiny_classifier
    r = ClassifierReward(str(path), "positive", batch_size=2)
    assert (r.index, r.label) == (1, "POSITIVE")
    texts = ["A wonderful, moving film.", "Dull.", "The worst acting I have seen in years, truly awful."]
    got = r(["p1 ", "p2 ", "p3 "], texts)
    for t, g in zip(texts, got, strict=True):  # one at a time, no padding: the model's own logit
        with torch.no_grad():
            want = model(**tok(t, return_tensors="pt")).logits[0, 1]
        assert g == pytest.approx(float(want), abs=1e-5)
    both = ClassifierReward(str(path), "1", text="prompt+completion")(["Great. "], ["Dull."])
    assert both == pytest.approx(r.scores(["Great. Dull."]), abs=1e-6)
    with pytest.raises(InputError, match="NEGATIVE, POSITIVE"):
        ClassifierReward(str(path), "joy")
    with pytest.raises(InputError, match="out of range"):
        ClassifierReward(str(path), 5)


def test_rl_with_the_classifier_reward(tiny_classifier, tmp_path, capsys):
    """A classifier whose head is zero gives every completion reward 0: the logged rewards are exactly 0, which
    the lexicon reward of sampled completions never is - so the classifier is what TRL called."""
    import copy

    _, model, tok = tiny_classifier
    flat = copy.deepcopy(model)
    with torch.no_grad():
        flat.score.weight.zero_()
    path = tmp_path / "flat"
    flat.save_pretrained(path)
    tok.save_pretrained(path)
    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    code, _, err = run(["finetune", "rl", "tinystories-656k", "--data", str(data), "--out", str(tmp_path / "ft"),
                        "--preset", "tiny", "--steps", "2", "--reward", "classifier", "--classifier", str(path),
                        "--classifier-label", "POSITIVE"], capsys)
    assert code == 0, err
    ft = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert "classifier" in ft["reward"] and ft["config"]["reward"] == "classifier" and ft["history"]
    rewards = [h["reward"] for h in ft["history"] if "reward" in h]
    assert rewards and all(x == 0.0 for x in rewards)
    code, _, err = run(["finetune", "rl", "tinystories-656k", "--data", str(data), "--out", str(tmp_path / "bad"),
                        "--preset", "tiny", "--reward", "classifier"], capsys)
    assert code == 2 and "classifier" in err
    code, _, err = run(["finetune", "rl", "tinystories-656k", "--data", str(data), "--out", str(tmp_path / "bad"),
                        "--classifier", str(path)], capsys)
    assert code == 2 and "--reward classifier" in err
    code, _, err = run(["finetune", "rl", "tinystories-656k", "--data", str(data), "--out", str(tmp_path / "none"),
                        "--reward", "classifier", "--classifier", str(tmp_path / "missing"),
                        "--classifier-label", "POSITIVE"], capsys)
    assert code == 2 and "cannot load the reward classifier" in err and "loading tinystories" not in err
    assert not (tmp_path / "none" / "run.json").exists()  # refused before the policy model loads or a run starts
    code, _, err = run(["finetune", "rl", "tinystories-656k", "--data", str(data), "--out", str(tmp_path / "none"),
                        "--reward", "classifier", "--classifier", str(path), "--classifier-label", "joy"], capsys)
    assert code == 2 and "NEGATIVE, POSITIVE" in err and not (tmp_path / "none" / "run.json").exists()
