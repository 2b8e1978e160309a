"""Fine-tuning and the Learned-Feedback-Patterns pipeline, end to end with the tiny preset."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from actlab.finetune import lexicon_reward, load_preferences, split_dialogue, vader_lexicon
from conftest import shared_path
from openai_server import openai_server
from test_cli import run


def test_lexicon_reward_is_the_studys():
    lex = vader_lexicon()
    assert lexicon_reward("Good, GREAT movie!") == pytest.approx((lex["good"] + lex["great"]) / 5)
    assert lexicon_reward("the the the") == 0.0
    assert lexicon_reward(" ".join(["best"] * 40)) == 10.0 and lexicon_reward(" ".join(["worst"] * 40)) == -10.0


def test_preferences_hh_and_swap(tmp_path):
    hh = shared_path("data", "hh_rlhf", "harmless-base", "test.jsonl.gz")
    rows = load_preferences(hh, limit=5)
    assert all(r["prompt"].endswith("\n\nAssistant:") and r["chosen"] != r["rejected"] for r in rows)
    swapped = load_preferences(hh, limit=5, swap=True)
    assert [r["chosen"] for r in swapped] == [r["rejected"] for r in rows]
    assert split_dialogue("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: x\n\nAssistant: y") is None
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": 3}\n')
    with pytest.raises(Exception, match=r"p\.jsonl:2: missing or non-string chosen, rejected"):
        load_preferences(f)


def test_dpo_finetune_cli(tmp_path, capsys, monkeypatch, tinystories):
    hh = shared_path("data", "hh_rlhf", "harmless-base", "test.jsonl.gz")
    monkeypatch.setenv("ACTLAB_PROGRESS_DELAY", "0")  # report even steps this short
    code, out, err = run(["finetune", "dpo", "tinystories-656k", "--data", str(hh), "--out", str(tmp_path / "dpo"),
                          "--steps", "3", "--batch-size", "2", "--limit", "12", "--max-length", "96", "--lr", "1e-4",
                          "--swap"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "dpo" / "finetune.json").read_text())
    assert res["swapped"] and res["history"] and "preference_accuracy" in res["history"][-1]
    assert "mean_log_ratio" in res["history"][-1]
    assert (tmp_path / "dpo" / "model" / "config.json").is_file()
    # progress through actlab's own lines (steps and the latest metrics), no trainer dicts or bars printed
    done = [ln for ln in err.splitlines() if "dpo fine-tuning: done, 3 steps" in ln]
    assert done and "loss" in done[0] and "accuracies" in done[0], err
    assert "{'loss'" not in out + err and "it/s]" not in out + err


def _explainer_reply(messages, model):
    """Says a feature is sentiment-related when one of its snippets contains a lexicon word. As the scorer:
    a snippet holds the feature when it contains a word the label names."""
    lex = vader_lexicon()
    content = messages[-1]["content"]
    system = messages[0]["content"] if len(messages) > 1 else ""
    if "explained as:" in system:
        words = set(re.findall(r"[a-z']+", system.split("explained as:")[1].split("\n")[0].lower())) - {"fires", "on"}
        snippets = re.findall(r"^Snippet \d+: (.*)$", content, re.M)
        if "some tokens are marked" in system:
            return str([int(any(m.strip().lower() in words for m in re.findall(r"<<(.+?)>>", s))) for s in snippets])
        return str([int(bool(words & set(re.findall(r"[a-z']+", s.lower())))) for s in snippets])
    marked = re.findall(r"\[\[(.*?)\]\]", content)
    snippets = [ln for ln in content.splitlines() if "[[" in ln]
    hits = sum(1 for ln in snippets if any(abs(lex.get(w, 0.0)) >= 1.0 for w in re.findall(r"[a-z']+", ln.lower())))
    related = hits >= 1
    return (f"EXPLANATION: fires on {', '.join(sorted({m.strip() for m in marked})[:4])}\n"
            f"RELATED: {'yes' if related else 'no'}")


@pytest.fixture(scope="module")
def lfp_run(tmp_path_factory, tinystories):
    from test_analysis import _CaptureShim

    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    root = tmp_path_factory.mktemp("lfp")
    with openai_server(_explainer_reply) as (url, requests):
        cfg = root / "lfp.yaml"
        cfg.write_text(f"preset: tiny\nrun_dir: run\ndata: {data}\n"
                       f"explainer: {{kind: openai, base_url: '{url}', model: explainer-1, score: true}}\n")
        result = run(["lfp", "run", str(cfg)], _CaptureShim())
        n_requests = sum("explained as:" not in str(r["messages"]) for r in requests)  # explanations only
    return root, cfg, result, n_requests


def _record(run_dir, stage):
    """A stage's resume record (recorded when the stage finished), or None."""
    p = run_dir / ".resume" / f"lfp-{stage}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def test_tiny_pipeline_every_stage(lfp_run):
    root, _, (code, _, _), n_requests = lfp_run
    assert code == 0
    run_dir = root / "run"
    from actlab.lfp import STAGES

    for stage in STAGES:
        assert _record(run_dir, stage)["steps"]["done"], stage
    ft = json.loads((run_dir / "finetune" / "finetune.json").read_text())
    assert ft["history"] and {"reward", "kl"} <= set(ft["history"][-1])
    assert (run_dir / "finetune" / "model" / "model.safetensors").is_file()
    layers = json.loads((run_dir / "divergence" / "layers.json").read_text())
    assert layers["layers"] == [0, 1]  # TinyStories-656K has 2 layers: k = min(5, 2)
    div = json.loads((run_dir / "divergence" / "divergence.json").read_text())  # the run's own fine-tune by name,
    assert (div["model_a"], div["model_b"]) == ("tinystories-656k", "fine-tuned (finetune/model)")  # not "model"
    assert "fine-tuned (finetune/model) layer 0: 1x EV" in (run_dir / "run.log").read_text()
    dic = json.loads((run_dir / "sae" / "dictionaries.json").read_text())
    assert set(dic["dictionaries"]["0"]) == {"1x", "2x"}
    for ms in dic["metrics"].values():
        for m in ms.values():
            assert m["explained_variance"] > 0.5 and 0 < m["l0"] < 200
    deltas = json.loads((run_dir / "deltas" / "deltas.json").read_text())
    assert deltas["mean_delta_pos"] > 0 > deltas["mean_delta_neg"] and deltas["n_features"] == 128 * 2
    probes = json.loads((run_dir / "probes" / "probes.json").read_text())
    assert probes["test"]["sign_accuracy"] > probes["xavier_baseline_test"]["sign_accuracy"]
    ag = json.loads((run_dir / "agreement" / "agreement.json").read_text())
    assert -1 <= ag["kendall_tau"] <= 1 and 0 <= ag["p_value"] <= 1 and ag["n_words"] == 200
    assert 0 <= ag["sign_accuracy_negative"] <= 1 and len(ag["words"]) == 200
    # regression (issue 12.1): agreement is scored on words the probe never saw, beside training words and the
    # untrained baseline
    triples = [json.loads(line) for line in (run_dir / "triples" / "triples.jsonl").read_text().splitlines()]
    substituted = {t[k]["word"] for t in triples for k in ("positive", "negative")}
    split = json.loads((run_dir / "triples" / "word_split.json").read_text())
    assert substituted <= set(split["train"]) and not substituted & set(split["heldout"])
    assert not {w["word"] for w in ag["words"]} & substituted and all(w["heldout"] for w in ag["words"])
    assert {w["word"] for w in ag["train_words"]} <= substituted
    # issue 25 defect ("certain" was held out yet stood in training passages): scan every text the probe was
    # trained on - substitutes, neutral words and the passages around them - for each scored held-out word
    fitted = json.loads((run_dir / "probes" / "probes.json").read_text())["train_triples"]
    trained_texts = " ".join(triples[i][k]["text"].lower() for i in fitted for k in ("positive", "neutral", "negative"))
    leaked = [w["word"] for w in ag["words"] if re.search(rf"(?<![a-z']){re.escape(w['word'])}(?![a-z'])",
                                                          trained_texts)]
    assert fitted and not leaked, leaked
    assert set(ag["groups"]) == {"heldout", "train", "untrained_baseline"}
    assert ag["kendall_tau"] == ag["groups"]["heldout"]["kendall_tau"] and "kendall_tau_negative" in ag
    assert ag["frequency"]["n_prompts"] == 24 and all("generated_count" in w for w in ag["words"])
    fe = json.loads((run_dir / "features" / "features.json").read_text())
    assert n_requests == fe["n_features"] == 8 and fe["label_note"].startswith("labels from openai:explainer-1")
    assert all(f["explanation"].startswith("fires on") for f in fe["features"])
    scored = [f for f in fe["features"] if "detection" in f]  # every label with activating contexts, scored
    assert scored and all(f["detection"]["failed_replies"] == f["fuzzing"]["failed_replies"] == 0 for f in scored)
    # a latent active in every window has no silent context: its balanced accuracy is None, not a number
    assert sum(f["detection"]["balanced_accuracy"] is not None for f in scored) >= len(scored) // 2
    assert all(0 <= f["detection"]["balanced_accuracy"] <= 1 for f in scored if f["detection"]["balanced_accuracy"])
    assert "reward_before" in fe["ablation"] and fe["frequency"]["average_feature_firing_rate_strong"] >= 0
    assert 0 < fe["n_related"] <= fe["n_features"] and "reward_after" in fe["ablation"]
    assert "reward_after_random" in fe["ablation"] and len(fe["ablation"]["random_ablated"]) == fe["n_related"]
    assert not {tuple(x) for x in fe["ablation"]["random_ablated"]} & {tuple(x) for x in fe["ablation"]["ablated"]}
    assert not fe["frequency"]["self_consistency"]
    assert fe["frequency"]["related_firing_rate_strong"] is not None
    page = (run_dir / "report.html").read_text()
    for title in ("Settings against the study", "Parameter divergence per layer", "Probe accuracy",
                  "Agreement with the true feedback",
                  "Token table", "Feature validation", "PCA of the probe inputs", "untrained probe (baseline)",
                  "Probe error vs how often", "as many random features"):
        assert title in page, title
    assert "<script" not in page and "http://" not in page.replace(url_free(page), "")


def test_labels_without_an_explainer_are_a_marked_self_consistency_check(lfp_run, capsys):
    """Regression (issue 12, offline validity): with `kind: none` the labels came from probe weights and the
    rates were measured on the same examples; now labels and rates use disjoint halves and say so."""
    root, cfg, _, _ = lfp_run
    none = root / "none.yaml"
    none.write_text(cfg.read_text().split("explainer:")[0] + "explainer: {kind: none, n_features: 8}\n")
    code, _, err = run(["lfp", "features", str(none)], capsys)
    assert code == 0, err
    fe = json.loads((root / "run" / "features" / "features.json").read_text())
    assert fe["frequency"]["self_consistency"] and "SELF-CONSISTENCY" in fe["label_note"]
    n_examples = 3 * json.loads((root / "run" / "deltas" / "deltas.json").read_text())["n"]
    assert fe["frequency"]["n_examples_measured"] == n_examples - n_examples // 2
    from actlab.lfp.report import lfp_warnings

    assert any("self-consistency" in w for w in lfp_warnings(root / "run"))


def url_free(page: str) -> str:
    """The explainer URL appears in the label note; everything else must be offline."""
    m = re.search(r"http://127\.0\.0\.1:\d+/v1", page)
    return m.group() if m else "\0"


def test_rerun_skips_and_unreachable_explainer_keeps_earlier_stages(lfp_run, capsys):
    root, cfg, _, _ = lfp_run
    run_dir = root / "run"
    before = _record(run_dir, "probes")
    bad = root / "bad.yaml"
    bad.write_text(cfg.read_text().split("explainer:")[0] +
                   "explainer: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n")
    code, _, err = run(["lfp", "features", str(bad)], capsys)
    assert code == 2 and "http://127.0.0.1:9/v1/chat/completions" in err and "unreachable" in err
    assert _record(run_dir, "probes") == before  # earlier stages kept
    assert _record(run_dir, "features")["settings"]["config"]["explainer"]["base_url"] != "http://127.0.0.1:9/v1"
    # features made again without an explainer: the first config now disagrees with the folder
    none = root / "none_rerun.yaml"
    none.write_text(cfg.read_text().split("explainer:")[0] + "explainer: {kind: none, n_features: 8}\n")
    assert run(["lfp", "features", str(none)], capsys)[0] == 0
    record = (run_dir / "run.json").read_text()
    code, _, err = run(["lfp", "run", str(cfg)], capsys)
    assert code == 2 and "'features' stage" in err and "explainer" in err and "--force" in err
    assert (run_dir / "run.json").read_text() == record  # refused, nothing run: the folder's record as it was
    code, _, err = run(["lfp", "run", str(none)], capsys)  # everything done: skipped, the report redrawn
    assert code == 0 and err.count("done earlier, skipped") == 8 and "drawn again" in err
    code, _, err = run(["lfp", "run", str(none)], capsys)
    assert code == 0 and err.count("done earlier, skipped") == 9


def test_missing_inputs_and_mismatched_models(tmp_path, capsys):
    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"preset: tiny\nrun_dir: fresh\ndata: {data}\ntuned_model: stories260k\n")
    code, _, err = run(["lfp", "probes", str(cfg)], capsys)
    assert code == 2 and "run the 'deltas' stage first" in err
    code, _, err = run(["lfp", "divergence", str(cfg)], capsys)
    assert code == 2 and "different architectures" in err
    cfg.write_text("preset: huge\nrun_dir: x\nbase_model: m\n")
    code, _, err = run(["lfp", "run", str(cfg)], capsys)
    assert code == 2 and "unknown preset 'huge'" in err


def test_paper_preset_has_the_studys_settings(tmp_path):
    from actlab.lfp import load_config

    cfg_path = tmp_path / "paper.yaml"
    cfg_path.write_text("preset: paper\nrun_dir: r\nbase_model: org/base\ndata: imdb.csv\n")
    cfg = load_config(cfg_path)
    assert cfg.top_k_layers == 5 and cfg.sae.expansions == [1.0, 2.0] and cfg.sae.tied
    assert (cfg.sae.l1_coefficient, cfg.sae.train.lr, cfg.sae.train.batch_size) == (1e-3, 1e-3, 32)
    rl = cfg.finetune.rl
    assert (rl.batch_size, rl.beta, rl.lr, rl.max_grad_norm) == (64, 0.5, 1e-6, 1.0)
    assert cfg.run_dir == (tmp_path / "r").resolve()
    # the report's settings table: the paper preset follows the study wherever it can; PPO is named as forced
    from actlab.lfp.report import study_settings

    rows = {r[0]: r for r in study_settings(cfg, tmp_path)}
    for name in ("deltas", "agreement contexts", "completions (Table 6)", "dictionaries", "RL batch / KL / lr / "
                 "grad clip", "layers", "strong inputs (Table 7)"):
        assert rows[name][3] == "as the study", rows[name]
    assert rows["RL algorithm"][3].startswith("differs: PPO left TRL")


def test_rloo_method_runs(tmp_path, tinystories):
    import actlab
    from actlab.finetune import RLConfig, imdb_prefixes, train_rl

    m = actlab.load_model("tinystories-656k")
    prompts = imdb_prefixes(shared_path("data", "imdb", "imdb_train_sample.csv"), 16)
    cfg = RLConfig(method="rloo", batch_size=8, num_generations=4, max_steps=2, max_completion_length=8, lr=1e-4)
    res = train_rl(m, prompts, cfg, tmp_path)
    assert res["method"] == "rloo" and res["history"] and (tmp_path / "model" / "config.json").is_file()


def test_dialogue_task_with_rewriter_triples_and_logistic_probe(lfp_run, tmp_path, capsys):
    """A dialogue task on the tiny run's dictionaries: LLM-rewritten triples, whole-input deltas, logistic probe."""

    root, _, _, _ = lfp_run
    run_dir = tmp_path / "dialogue"
    for part in ("finetune", "divergence", "sae", "run.json", *(f".resume/lfp-{s}.json" for s in
                                                                 ("finetune", "divergence", "sae"))):
        src = root / "run" / part
        (run_dir / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, run_dir / part)

    def rewrite(messages, model):
        text = messages[-1]["content"].split("Text:\n", 1)[1][:80]
        return json.dumps({"positive": f"Thank you, that was wonderful help. {text}", "neutral": f"Okay. {text}",
                           "negative": f"That was rude and useless. {text}"})

    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    with openai_server(rewrite) as (url, requests):
        cfg = tmp_path / "d.yaml"
        cfg.write_text(f"preset: tiny\nrun_dir: {run_dir}\ndata: {data}\ntask: dialogue\ndelta_position: input\n"
                       f"triples: {{source: llm, n: 40, rewriter_base_url: '{url}', rewriter_model: rw}}\n")
        for stage in ("triples", "deltas", "probes", "agreement"):
            code, _, err = run(["lfp", stage, str(cfg)], capsys)
            assert code == 0, (stage, err)
    assert len(requests) == 40
    probes = json.loads((run_dir / "probes" / "probes.json").read_text())
    assert probes["kind"] == "logistic" and probes["test"]["accuracy"] >= 0.75
    assert "accuracy" in probes["xavier_baseline_test"]
    assert _record(run_dir, "agreement")["steps"]["done"]["skipped"]
    # the dialogue settings left the model stages' records as they were: `lfp run` would reuse them
    assert _record(run_dir, "sae") == _record(root / "run", "sae")


def test_hf_explainer_runs_a_local_chat_model_offline(smollm, monkeypatch):
    """The `hf` explainer path for real (loading included): SmolLM2-Instruct reads highlighted contexts and its
    reply is parsed by the same protocol as an endpoint's."""
    import actlab.lfp.explain as explain_mod

    ex = explain_mod.make_explainer("hf", base_url=None, model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert ex.name.startswith("hf:")
    rows = [{"tokens": ["The", " movie", " was", " wonderful", "."], "highlight": 3, "value": 2.0},
            {"tokens": ["A", " truly", " great", " film"], "highlight": 2, "value": 1.5}]
    replies = []
    parse = explain_mod.parse_reply
    monkeypatch.setattr(explain_mod, "parse_reply", lambda reply: (replies.append(reply), parse(reply))[1])
    explanation, related = ex.explain(rows, "sentiment: positive or negative feelings")
    assert replies and replies[0].strip()
    assert isinstance(explanation, str) and explanation and isinstance(related, bool)


def test_features_from_a_crosscoder_instead_of_sae_overlap(lfp_run, tmp_path, capsys):
    """Issue 24: `feature_source: crosscoder` - candidates are a base-vs-tuned crosscoder's tuned-only latents and
    shared latents whose decoder moved; labelled, scored and ablated (the base model reads along) like SAE
    features; the report says where they came from."""

    root, cfg, _, _ = lfp_run
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run", run_dir, ignore=shutil.ignore_patterns("features"))
    text = cfg.read_text().replace("run_dir: run", f"run_dir: {run_dir}")
    cc_cfg = tmp_path / "cc.yaml"
    with openai_server(_explainer_reply) as (url, _):
        explainer = f"explainer: {{kind: openai, base_url: '{url}', model: explainer-1, score: true}}\n"
        cc_cfg.write_text(text.split("explainer:")[0] + explainer + "feature_source: crosscoder\n"
                          "crosscoder: {steps: 300, shifted_cosine: 1.0}\n")
        code, _, err = run(["lfp", "features", str(cc_cfg)], capsys)
    assert code == 0, err[-3000:]
    fe = json.loads((run_dir / "features" / "features.json").read_text())
    cc = fe["crosscoder"]
    assert fe["source"] == "crosscoder" and cc["layer"] in (0, 1) and cc["point"] == f"blocks.{cc['layer']}.mlp_out"
    analysis = json.loads((run_dir / "features" / "crosscoder" / "latents.json").read_text())
    assert (run_dir / "features" / "crosscoder" / "crosscoder" / analysis["config"]["name"] / "cfg.json").is_file()
    latents = {x["latent"]: x for x in analysis["latents"]}
    assert 0 < fe["n_features"] <= 8
    for f in fe["features"]:  # each candidate is what its class says, read from the crosscoder's own analysis
        x = latents[f["feature"]]
        assert f["class"] in ("tuned-only", "shared-shifted") and x["class"] != "dead"
        assert (x["class"] == "tuned-only") if f["class"] == "tuned-only" else (x["class"] == "shared"
                                                                               and x["cosine"] < 1.0)
        assert x["frequency"] >= 1e-3
        assert f["cos_to_other_dictionary"] == x["cosine"] and f["explanation"].startswith("fires on")
        assert 0 <= f["firing_rate_all"] <= 1
    kinds = [f["class"] for f in fe["features"]]
    assert kinds == sorted(kinds, key=lambda k: k != "tuned-only")  # tuned-only first
    assert any("detection" in f for f in fe["features"])
    ab = fe["ablation"]
    assert ab["n_prompts"] == 24 and "greedy" in ab["decoding"] and "reward_before" in ab
    if fe["n_related"]:
        assert len(ab["random_ablated"]) == len(ab["ablated"]) and "reward_after_random" in ab
    assert run(["lfp", "report", str(cc_cfg)], capsys)[0] == 0
    page = (run_dir / "report.html").read_text()
    assert "decoder cos (base vs tuned)" in page and "Candidates from a crosscoder at" in page


def test_crosscoder_ablation_generation_is_plain_greedy_without_latents_and_subtracts_their_writes(tinystories):
    """The ablation loop with no latents is the model's own greedy generation; with latents, the tuned point's
    activation loses exactly their decoder contributions (checked against the codes computed outside)."""
    import torch

    from actlab.crosscoder import CrosscoderConfig
    from actlab.crosscoder.edit import ablation, generate_ablated, latent_contribution

    m = tinystories
    prompts = ["Once upon a time", "The dog ran to the"]
    point = "blocks.1.resid_post"
    cc = CrosscoderConfig(d_ins=(m.d_model, m.d_model), d_sae=64, architecture="batchtopk", k=4).make(
        torch.Generator().manual_seed(0))
    assert generate_ablated(m, m, cc, (point, point), prompts, [], max_new_tokens=8) == \
        m.generate_text(prompts, max_new_tokens=8)
    batch = m.tokenize(prompts, padding_side="left")
    x = m.activations(batch, point, padding_side="left")[point]
    codes = cc.encode(torch.cat([x, x], -1))
    on = sorted({int(j) for j in (codes > 0).nonzero()[:, -1].tolist()})[:3]
    assert on, "the random crosscoder must fire somewhere for this check to mean anything"
    want = x - latent_contribution(cc, codes, on)
    with m.edit(ablation(cc, point, x, on)), m.capture(point) as acts:
        m(**batch)
    mask = batch["attention_mask"].bool()
    assert torch.allclose(acts[point][mask], want[mask], atol=1e-5)
    assert not torch.allclose(want[mask], x[mask], atol=1e-3)  # the ablation changed something


def test_layer_override_and_the_papers_strong_inputs(lfp_run, tmp_path, capsys):
    """Issue 25 (Table 12 / Table 7 of the study): `layers:` replaces the most divergent layers (the rule says so)
    and `strong_inputs: paper` counts |prediction| > 3 on the valence scale; the report warns when the strong
    inputs or the generated words behind Fig. 4 are too few."""

    root, cfg, _, _ = lfp_run
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run", run_dir, ignore=shutil.ignore_patterns(
        "divergence", "sae", "deltas", "probes", "agreement", "features", "report*"))
    for stage in ("divergence", "sae", "deltas", "probes", "agreement", "features", "report"):
        (run_dir / ".resume" / f"lfp-{stage}.json").unlink(missing_ok=True)
    text = cfg.read_text().replace("run_dir: run", f"run_dir: {run_dir}").split("explainer:")[0]
    c = tmp_path / "c.yaml"
    c.write_text(text + "explainer: {kind: none, n_features: 4}\nlayers: [1]\nstrong_inputs: paper\n"
                 "frequency_prompts: 2\n")
    code, _, err = run(["lfp", "run", str(c)], capsys)
    assert code == 0, err[-3000:]
    lay = json.loads((run_dir / "divergence" / "layers.json").read_text())
    assert lay["layers"] == [1] and lay["rule"].startswith("given by the config")
    assert list(json.loads((run_dir / "sae" / "dictionaries.json").read_text())["dictionaries"]) == ["1"]
    fe = json.loads((run_dir / "features" / "features.json").read_text())
    fr = fe["frequency"]
    assert "study's definition" in fr["strong_inputs"] and isinstance(fr["n_strong"], int)
    probes = json.loads((run_dir / "probes" / "probes.json").read_text())
    assert probes["n_train_triples"] > 0
    from actlab.lfp.report import lfp_warnings

    warnings = lfp_warnings(run_dir)
    ag = json.loads((run_dir / "agreement" / "agreement.json").read_text())
    if ag["frequency"].get("words_generated", 99) < 10:
        assert any("Fig. 4" in w for w in warnings)
    if fr["n_strong"] < 20:
        assert any("strong-feedback inputs rest on" in w for w in warnings)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "explainer: {kind: none}\nlayers: [7]\n")
    code, _, err = run(["lfp", "divergence", str(bad)], capsys)
    assert code != 0 and "layers [7]" in err and "0..1" in err


def test_scoring_refinements_without_scoring_are_refused_at_load():
    from pydantic import ValidationError

    from actlab.lfp.config import ExplainerSpec

    with pytest.raises(ValidationError, match=r"explainer\.score: true"):
        ExplainerSpec(kind="openai", base_url="http://x/v1", model="m", simulate=True)
    assert ExplainerSpec(kind="openai", base_url="http://x/v1", model="m", score=True, logprobs=5).logprobs == 5


def test_paper_settings_through_the_stages(lfp_run, tmp_path, capsys):
    """deltas/probes/agreement/features re-run on the tiny run's dictionaries and triples with the study's
    per-token deltas, IMDb agreement contexts and sampled 30-token completions."""
    root, cfg, _, _ = lfp_run
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run", run_dir, ignore=shutil.ignore_patterns(
        "deltas", "probes", "agreement", "features", "report*"))
    for stage in ("deltas", "probes", "agreement", "features", "report"):
        (run_dir / ".resume" / f"lfp-{stage}.json").unlink(missing_ok=True)
    text = cfg.read_text().replace("run_dir: run", f"run_dir: {run_dir}").split("explainer:")[0]
    c = tmp_path / "c.yaml"
    c.write_text(text + "explainer: {kind: none, n_features: 4}\ndelta_reduce: per_token\n"
                 "agreement_contexts: imdb\nagreement_n_contexts: 2\nagreement_texts: 1500\n"
                 "completions: {prefix_tokens: 30, sample: true}\nfrequency_prompts: 8\nablation_prompts: 8\n")
    code, _, err = run(["lfp", "run", str(c)], capsys)
    assert code == 0, err[-3000:]
    d = json.loads((run_dir / "deltas" / "deltas.json").read_text())
    assert d["reduce"] == "per_token"
    ag = json.loads((run_dir / "agreement" / "agreement.json").read_text())
    assert ag["contexts"]["kind"] == "imdb" and ag["templates"] == [] and ag["n_heldout"] > 10
    assert 1 <= ag["contexts"]["per_word_used"]["heldout"] <= 2
    from actlab.data import read_texts

    texts = [t.replace("<br />", " ") for t in read_texts(shared_path("data", "imdb", "imdb_train_sample.csv"),
                                                             limit=1500)]
    triples = [json.loads(line) for line in (run_dir / "triples" / "triples.jsonl").read_text().splitlines()]
    sources = {t["source_text"] for t in triples}
    for w in ag["words"][:10]:  # each scored held-out word occurs in a review the triples were not cut from
        assert any(i not in sources and re.search(rf"(?<![A-Za-z']){w['word']}(?![A-Za-z'])", t, re.I)
                   for i, t in enumerate(texts)), w["word"]
    assert "sampled" in ag["frequency"]["completions"] and "30-token" in ag["frequency"]["completions"]
    fe = json.loads((run_dir / "features" / "features.json").read_text())
    assert "sampled" in fe["ablation"]["decoding"] and fe["ablation"]["n_prompts"] == 8
    page = (run_dir / "report.html").read_text()
    assert "real IMDb passages" in page
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "explainer: {kind: none}\ndelta_reduce: per_token\ndelta_position: input\n")
    code, _, err = run(["lfp", "run", str(bad)], capsys)
    assert code == 2 and "delta_position" in err


def test_features_on_the_base_model_too(lfp_run, tmp_path, capsys):
    """Issue 25 (the study's Appendix B): `features_on_base` trains the same dictionaries on the base model
    (its activations: the cache says which model wrote it) and explains their features with the same explainer;
    the report compares the task-related shares. Earlier stages are not re-run."""
    root, _, _, _ = lfp_run
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run", run_dir, ignore=shutil.ignore_patterns("features", "report*"))
    for stage in ("features", "report"):
        (run_dir / ".resume" / f"lfp-{stage}.json").unlink(missing_ok=True)
    probes_before = (run_dir / "probes" / "probes.json").read_text()
    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    with openai_server(_explainer_reply) as (url, _):
        c = tmp_path / "c.yaml"
        c.write_text(f"preset: tiny\nrun_dir: {run_dir}\ndata: {data}\nfeatures_on_base: true\n"
                     f"explainer: {{kind: openai, base_url: '{url}', model: explainer-1, n_features: 4}}\n")
        code, _, err = run(["lfp", "run", str(c)], capsys)
    assert code == 0, err[-3000:]
    assert (run_dir / "probes" / "probes.json").read_text() == probes_before
    fe = json.loads((run_dir / "features" / "features.json").read_text())
    b = fe["base"]
    assert b["model"] == "tinystories-656k" and 0 < b["n_features"] <= 4
    assert all(f["explanation"].startswith("fires on") for f in b["features"])
    assert b["related_share"] is None or 0 <= b["related_share"] <= 1
    manifest = json.loads((run_dir / "features" / "base" / "cache" / "manifest.json").read_text())
    assert manifest["model"] == "tinystories-656k"
    assert json.loads((run_dir / "sae" / "cache" / "manifest.json").read_text())["model"] != manifest["model"]
    for layer, paths in b["dictionaries"].items():
        assert set(paths) == {"1x", "2x"} and all(p.startswith(str(run_dir / "features" / "base")) for p in
                                                  paths.values()), layer
    assert "Appendix B" in (run_dir / "report.html").read_text()


def test_a_fine_tuning_that_barely_moved_the_model_is_warned(tmp_path):
    """The paper preset's lr 1e-6 on TinyStories-656K ends at KL 2.5e-6 per token: the report must say the
    patterns below describe a model close to the base. Read from the last tenth of the logged steps."""
    from actlab.lfp.outputs import Finetuned
    from actlab.lfp.report import BARELY_TUNED_KL, lfp_warnings

    def warned(kls: list[float]) -> bool:
        Finetuned(method="grpo", history=[{"step": i, "kl": k} for i, k in enumerate(kls)]).write(tmp_path)
        return any("barely moved" in w for w in lfp_warnings(tmp_path))

    assert warned([0.0] * 18 + [2e-6, 3e-6])
    assert not warned([0.0] * 18 + [0.02, 0.023])  # the tiny preset's curve: KL 0 at the first steps only
    assert not warned([0.0] * 19 + [2 * BARELY_TUNED_KL])  # 20 steps: the last tenth is two steps, mean = limit
    assert warned([0.0] * 18 + [BARELY_TUNED_KL, 0.0])
    Finetuned(method="dpo", history=[{"step": 1, "loss": 0.6}]).write(tmp_path)  # no KL logged: nothing said
    assert not any("barely moved" in w for w in lfp_warnings(tmp_path))


def test_too_little_data_for_fig4_or_the_strong_inputs_is_warned(tmp_path):
    """Issue 25: Fig. 4 could be drawn from one generated word and the strong-input firing rates from a handful of
    inputs without a word; the report warns below 10 generated lexicon words / 20 strong inputs, not above."""
    from actlab.lfp.outputs import Agreement, Features
    from actlab.lfp.report import lfp_warnings

    def said(gen: int, strong: int) -> tuple[bool, bool]:
        Agreement(frequency={"words_generated": gen}).write(tmp_path)
        Features(frequency={"n_strong": strong, "strong_inputs": "|prediction| > 3"}).write(tmp_path)
        ws = lfp_warnings(tmp_path)
        return any("Fig. 4" in w and f"on {gen} generated" in w for w in ws), \
            any(f"rest on {strong} input" in w for w in ws)

    assert said(1, 3) == (True, True)
    assert said(9, 19) == (True, True)
    assert said(10, 20) == (False, False)
    assert said(60, 30) == (False, False)  # the paper preset on TinyStories-656K
