"""The agreement stage: does the probe's implicit feedback agree with the true feedback (the lexicon)? Kendall's
tau between the probe's prediction for lexicon words and their valences, on words held out from everything the
probe was trained on (the study's Tables 4, 5, 10), beside training words and an untrained probe; and the probe's
error against how often the fine-tuned model generates each word (Fig. 4)."""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import spearmanr

from ...errors import InputError
from ...finetune import vader_lexicon
from ...finetune import words as split_words
from ...progress import task as progress_task
from ..completions import complete, prefixes
from ..outputs import Agreement, Probe, ProbeSummary, Triples, WordSplit
from ..probes import WORD_REWARD_MAX, agreement, sae_features, xavier_predictions
from ..triples import AGREEMENT_MIN_VALENCE, word_contexts
from .probing import load_dictionaries

if TYPE_CHECKING:
    from ..pipeline import Context

AGREEMENT_TEMPLATES = ("The movie was {w}.", "I thought the acting was {w}.", "Honestly, the story felt {w}.")


def training_words(triples: Triples, indices: list[int]) -> set[str]:
    """Every word of every text the probe was trained on: the substituted words, the neutral words and the
    passages around them (a held-out word must appear in none)."""
    seen: set[str] = set()
    for i in indices:
        for kind in ("positive", "neutral", "negative"):
            seen.update(re.findall(r"[a-z']+", triples.rows[i][kind]["text"].lower()))
    return seen


def template_contexts(words: list[str]) -> dict[str, list[tuple[str, list[int]]]]:
    """Each word inside the three neutral agreement templates, with its character span."""
    return {w: [(tpl.format(w=w), [tpl.index("{w}"), tpl.index("{w}") + len(w)]) for tpl in AGREEMENT_TEMPLATES]
            for w in words}


def word_predictions(ctx: Context, probe: Probe, words: list[str],
                     contexts: dict[str, list[tuple[str, list[int]]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained and untrained probe outputs per word, each averaged over the word's contexts (read at the word's
    tokens)."""
    saes, tuned = load_dictionaries(ctx), ctx.model("tuned")
    flat = [(i, text, span) for i, w in enumerate(words) for text, span in contexts[w]]
    x = sae_features(tuned, saes, [t for _, t, _ in flat], [sp for _, _, sp in flat], point=ctx.cfg.sae.point)
    owner = torch.tensor([i for i, _, _ in flat])
    n = torch.zeros(len(words)).index_add_(0, owner, torch.ones(len(flat)))
    z = probe.standardise(x).double().numpy()
    trained = torch.zeros(len(words)).index_add_(0, owner, probe.predict(x).float())
    untrained = torch.zeros(len(words)).index_add_(
        0, owner, torch.from_numpy(xavier_predictions(z, ctx.cfg.seed)).float())
    return trained / n, untrained / n


def generated_counts(ctx: Context, words: list[str]) -> dict[str, int]:
    """How often the fine-tuned model generates each word in its continuations of IMDb prefixes
    (``completions``: greedy 8-word prefixes by default, the study's sampled 30-token ones in ``paper``)."""
    if ctx.cfg.data is None or ctx.cfg.frequency_prompts <= 0:
        return {}
    tuned = ctx.model("tuned")
    spec = ctx.cfg.completions
    prompts = prefixes(ctx.cfg.data, ctx.cfg.frequency_prompts, spec, tuned.tokenizer)
    counts: Counter[str] = Counter()
    with progress_task("generating for word frequencies", total=len(prompts), unit="prompts") as task:
        for g in complete(tuned, prompts, spec, max_new_tokens=ctx.cfg.ablation_new_tokens, seed=ctx.cfg.seed,
                          advance=task.advance):
            counts.update(split_words(g))
    return {w: counts.get(w, 0) for w in words}


def _frequency(table: list[dict[str, Any]], ctx: Context) -> dict[str, Any]:
    errs = [r["error"] for r in table]
    cnts = [r["generated_count"] for r in table]
    rho, pv = spearmanr(cnts, errs) if len(set(cnts)) > 1 else (float("nan"), float("nan"))
    return {"spearman_error_vs_count": float(rho), "p_value": float(pv), "n_prompts": ctx.cfg.frequency_prompts,
            "completions": ctx.cfg.completions.describe(),
            "new_tokens": ctx.cfg.ablation_new_tokens, "words_generated": sum(1 for c in cnts if c)}


def _contexts(ctx: Context, triples: Triples, words: list[str]
              ) -> tuple[dict[str, list[tuple[str, list[int]]]], dict[str, Any]]:
    """Where each candidate word is read (``agreement_contexts``): the templates, or real IMDb passages (reviews
    the triples were cut from excluded); words without a passage drop out of the pool (counted)."""
    cfg = ctx.cfg
    if cfg.agreement_contexts == "templates":
        return template_contexts(words), {"kind": "templates", "per_word": len(AGREEMENT_TEMPLATES)}
    texts = ctx.texts(cfg.agreement_texts)
    used = {int(r["source_text"]) for r in triples.rows if "source_text" in r}
    found = word_contexts(texts, words, per_word=cfg.agreement_n_contexts, window_words=cfg.triples.window_words,
                          seed=cfg.seed, exclude=used)
    return found, {"kind": "imdb", "per_word": cfg.agreement_n_contexts, "n_texts": len(texts),
                   "excluded_triple_sources": len(used), "window_words": cfg.triples.window_words,
                   "words_without_context": len(set(words) - set(found))}


def _mean_count(contexts: dict[str, list[Any]], words: list[str]) -> float:
    return sum(len(contexts[w]) for w in words) / len(words) if words else 0.0


def stage_agreement(ctx: Context) -> dict[str, Any]:
    if ctx.cfg.task != "sentiment":
        return {"skipped": "agreement with lexicon values applies to the sentiment task"}
    lex = vader_lexicon()
    n = ctx.cfg.n_agreement_words
    rng = random.Random(ctx.cfg.seed)
    triples = ctx.read(Triples, "triples")
    probe = ctx.read(Probe, "probes")
    fitted = ctx.read(ProbeSummary, "probes").train_triples or list(range(len(triples.rows)))
    trained_on = triples.words()
    seen = training_words(triples, fitted)
    split = WordSplit.read(ctx.root)
    if split is not None:
        candidates = set(split.heldout)
    else:  # triples from a file or an LLM: no word was substituted, every scoreable word may be held out
        candidates = {w for w, v in lex.items() if w.isalpha() and abs(v) >= AGREEMENT_MIN_VALENCE}
    heldout_pool = sorted(candidates - set(trained_on) - seen)
    contexts, context_info = _contexts(ctx, triples, heldout_pool + sorted(set(trained_on)))
    heldout_pool = [w for w in heldout_pool if w in contexts]
    heldout = sorted(rng.sample(heldout_pool, min(n, len(heldout_pool))))
    trained_on = [w for w in trained_on if w in contexts]
    train_words = sorted(rng.sample(trained_on, min(n, len(trained_on))))
    if len(heldout) < 3:
        raise InputError(f"only {len(heldout)} held-out lexicon words to score; lower triples.heldout_fraction's "
                         "complement or use a larger lexicon")
    words = heldout + train_words
    pred, base = word_predictions(ctx, probe, words, contexts)
    true = [lex[w] for w in words]
    k = len(heldout)
    groups = {"heldout": agreement(pred[:k].tolist(), true[:k]),
              "untrained_baseline": agreement(base[:k].tolist(), true[:k])}
    if train_words:
        groups["train"] = agreement(pred[k:].tolist(), true[k:])
    counts = generated_counts(ctx, words)
    table = [{"word": w, "lexicon": lex[w], "predicted": float(p), "untrained": float(b),
              "error": abs(float(p) - lex[w] / 5), "heldout": i < k, "generated_count": counts.get(w)}
             for i, (w, p, b) in enumerate(zip(words, pred, base, strict=True))]
    table.sort(key=lambda r: -abs(r["lexicon"]))
    ctx.dir("agreement")
    result = Agreement(
        groups=groups, n_heldout=k, n_train_words=len(train_words),
        split={"heldout_fraction": split.heldout_fraction if split else None, "seed": split.seed if split else None,
               "excluded_as_seen_in_training_texts": len((candidates - set(trained_on)) & seen),
               "note": "held-out words appear in no text the probe was trained on (substitutes, neutral words, "
                       "contexts)"},
        error_definition=f"|probe output - valence / 5| (the per-word reward, max {WORD_REWARD_MAX})",
        frequency=_frequency(table, ctx) if counts else {},
        templates=list(AGREEMENT_TEMPLATES) if ctx.cfg.agreement_contexts == "templates" else [],
        contexts={**context_info, "per_word_used": {"heldout": _mean_count(contexts, heldout),
                                                    "train": _mean_count(contexts, train_words)}},
        words=[r for r in table if r["heldout"]], train_words=[r for r in table if not r["heldout"]],
        **{key: v for key, v in groups["heldout"].items() if key in Agreement.__dataclass_fields__})
    result.write(ctx.root)
    h, t0, b0 = groups["heldout"], groups.get("train"), groups["untrained_baseline"]
    ctx.log(f"  held-out words ({k}): Kendall tau {h['kendall_tau']:.3f} (p={h['p_value']:.2g}), sign accuracy "
            f"{h['sign_accuracy']:.3f}; untrained probe tau {b0['kendall_tau']:.3f}"
            + (f"; training words ({len(train_words)}): tau {t0['kendall_tau']:.3f}" if t0 else ""))
    return {**{key: v for key, v in h.items()}, "n_heldout": k, "n_train_words": len(train_words),
            "mean_abs_error": float(np.mean([r["error"] for r in table]))}
