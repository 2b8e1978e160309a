"""The stages that build the probe: contrastive triples, the dictionaries' feature deltas on them, and the probe
that predicts the (implicit) feedback from those deltas."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...errors import InputError
from ...finetune import vader_lexicon
from ...llm import OpenAIChat
from ...sae import load_sae
from ..outputs import Deltas, DeltaSummary, Dictionaries, Probe, ProbeSummary, Triples, WordSplit
from ..probes import deltas, fit_logistic_probe, fit_regression_probe, per_token_deltas, sae_token_codes
from ..triples import file_triples, lexicon_triples, llm_triples, split_lexicon

if TYPE_CHECKING:
    from ...sae.dictionary import SparseAutoencoder
    from ..pipeline import Context


def stage_triples(ctx: Context) -> dict[str, Any]:
    t = ctx.cfg.triples
    ctx.dir("triples")
    if t.source == "lexicon":
        lex = vader_lexicon()
        split = split_lexicon(lex, t.heldout_fraction, t.seed)
        WordSplit(t.seed, t.heldout_fraction, "scoreable lexicon words (alphabetic, |valence| >= 0.5) split at "
                  "random; triples substitute only training words", split["train"], split["heldout"]).write(ctx.root)
        rows = lexicon_triples(ctx.texts(max(4 * t.n, 200)), lex, n=t.n, window_words=t.window_words,
                               min_valence=t.min_valence, seed=t.seed, allowed=set(split["train"]))
    elif t.source == "file":
        if t.file is None:
            raise InputError("triples.source 'file' needs triples.file")
        rows = file_triples(t.file)
    elif t.source == "llm":
        if not t.rewriter_base_url or not t.rewriter_model:
            raise InputError("triples.source 'llm' needs triples.rewriter_base_url and triples.rewriter_model")
        rows = llm_triples(ctx.texts(t.n), OpenAIChat(t.rewriter_base_url, t.rewriter_model), positive="approval",
                           negative="disapproval", n=t.n)
    else:
        raise InputError(f"unknown triples source {t.source!r}; valid: lexicon, file, llm")
    Triples(rows).write(ctx.root)
    ctx.log(f"  {len(rows)} triples from {t.source}")
    return {"n": len(rows), "source": t.source}


def load_dictionaries(ctx: Context) -> dict[int, SparseAutoencoder]:
    """The dictionary the probes read (``config.dictionary``), per layer."""
    info = ctx.read(Dictionaries, "sae")
    name = ctx.cfg.dictionary
    out = {}
    for layer, paths in info.dictionaries.items():
        if name not in paths:
            raise InputError(f"dictionary {name!r} was not trained; trained: {', '.join(paths)}")
        out[int(layer)] = load_sae(paths[name])
    return out


def stage_deltas(ctx: Context) -> dict[str, Any]:
    rows = ctx.read(Triples, "triples").rows
    saes = load_dictionaries(ctx)
    tuned = ctx.model("tuned")
    use_word = ctx.cfg.delta_position == "word"
    feats, tokens = {}, {}
    for kind in ("positive", "neutral", "negative"):
        texts = [r[kind]["text"] for r in rows]
        spans = [r[kind]["span"] if use_word else None for r in rows]
        tokens[kind] = sae_token_codes(tuned, saes, texts, spans, point=ctx.cfg.sae.point)
        feats[kind] = torch.stack([c.mean(0) for c in tokens[kind]])  # the probe's inputs either way
    if ctx.cfg.delta_reduce == "per_token":
        d = per_token_deltas(tokens["positive"], tokens["neutral"], tokens["negative"])
    else:
        d = deltas(feats["positive"], feats["neutral"], feats["negative"])
    ctx.dir("deltas")
    Deltas({"f_pos": feats["positive"], "f_neu": feats["neutral"], "f_neg": feats["negative"],
            **{k: v.float().reshape(-1) for k, v in d.items()}}).write(ctx.root)
    summary = DeltaSummary(len(rows), int(feats["positive"].shape[1]), ctx.cfg.delta_position,
                           float(d["pos"].mean()), float(d["neg"].mean()), float(d["scale"]), sorted(saes),
                           ctx.cfg.delta_reduce)
    summary.write(ctx.root)
    ctx.log(f"  deltas: mean +{summary.mean_delta_pos:.3f} / {summary.mean_delta_neg:.3f} over "
            f"{summary.n_features} features")
    return {"n": summary.n, "n_features": summary.n_features, "mean_delta_pos": summary.mean_delta_pos,
            "mean_delta_neg": summary.mean_delta_neg}


def stage_probes(ctx: Context) -> dict[str, Any]:
    from ..pipeline import metrics_line

    t = ctx.read(Deltas, "deltas").tensors
    cfg = ctx.cfg
    ctx.dir("probes")
    if cfg.task == "sentiment":
        d = {"pos_scaled": t["pos_scaled"].double(), "neg_scaled": t["neg_scaled"].double()}
        res = fit_regression_probe(t["f_pos"], t["f_neu"], t["f_neg"], d, test_fraction=cfg.probe_test_fraction,
                                   alpha=cfg.probe_alpha, seed=cfg.seed)
        w = torch.from_numpy(res["probe"].coef_).float().reshape(-1)
        b = torch.tensor([float(res["probe"].intercept_)])
    else:
        res = fit_logistic_probe(t["f_pos"], t["f_neg"], test_fraction=cfg.probe_test_fraction, seed=cfg.seed)
        w = torch.from_numpy(res["probe"].coef_[0]).float()
        b = torch.tensor([float(res["probe"].intercept_[0])])
    Probe(w.contiguous(), b, torch.from_numpy(res["scaler"].mean_).float(),
          torch.from_numpy(res["scaler"].scale_).float()).write(ctx.root)
    summary = ProbeSummary("regression" if cfg.task == "sentiment" else "logistic", res["train"], res["test"],
                           res["xavier_baseline_test"], len(res["train_triples"]), len(res["test_triples"]),
                           [int(i) for i in res["train_triples"]])
    summary.write(ctx.root)
    ctx.log(f"  probe held-out: {metrics_line(summary.test)}; untrained baseline: "
            f"{metrics_line(summary.xavier_baseline_test)}")
    return {"kind": summary.kind, "test": summary.test, "xavier_baseline_test": summary.xavier_baseline_test}
