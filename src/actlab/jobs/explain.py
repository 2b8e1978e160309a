"""``actlab sae explain``: explanations of a dictionary's latents written by an LLM (or given) and scored by
detection and fuzzing through any OpenAI-compatible endpoint (see :mod:`actlab.explain`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..runs import Run, write_json
from .common import ModelLike, TextsLike, as_model, as_texts, name_of


def _most_active(m: Any, d: Any, texts: list[str], k: int, max_length: int) -> list[int]:
    from ..sae.features import feature_columns, scan_codes

    feats = feature_columns(d, None)
    counts = torch.zeros(len(feats))
    for _, _, codes, _ in scan_codes(m, d, d.cfg.hook_point, texts, feats, max_length=max_length,
                                     what="finding active latents"):
        counts += (codes > 0).sum((0, 1)).float()
    return [int(i) for i in counts.argsort(descending=True)[:k] if counts[i] > 0]


def explain_features(sae: str | os.PathLike[str] | Any, model: ModelLike, data: TextsLike, out: str | os.PathLike[str],
                     *, scorer_url: str, scorer_model: str, explainer_url: str | None = None,
                     explainer_model: str | None = None, explainer_local: ModelLike | None = None,
                     explanations: Mapping[int, str] | None = None,
                     features: Sequence[int] | None = None, top_k: int = 8, limit: int = 200, max_length: int = 64,
                     n_examples: int = 10, n_negative: int = 20, per_request: int = 5, concurrency: int = 8,
                     retries: int = 3, timeout: float = 60.0, logprobs: int = 0, simulate: bool = False,
                     seed: int = 0) -> dict[str, Any]:
    """Explain (``explainer_url`` + ``explainer_model``, or a local HF chat model ``explainer_local``) or take
    ``explanations`` for each latent (``features``, or the ``top_k`` most often active), then score each by
    detection and fuzzing with the scorer (and by simulation with ``simulate``); ``logprobs`` > 0 asks the
    scorer for that many top log-probabilities per token, for the AUCs and the expected-value simulator. Writes
    ``explanations.json``. Replies are cached under ``out/llm_cache`` (a re-run asks nothing twice)."""
    from ..explain import collect, detection, explain, fuzzing, simulation
    from ..llm import ReplyCache, endpoint_asker
    from ..sae import load_sae

    if explanations is None and not (explainer_url and explainer_model) and explainer_local is None:
        raise InputError("give an explainer (URL and model, or a local chat model) or the explanations to score")
    d = load_sae(sae) if isinstance(sae, (str, os.PathLike)) else sae
    m = as_model(model)
    texts = as_texts(data, limit=limit)
    out = Path(out)
    config = {"sae": str(sae) if isinstance(sae, (str, os.PathLike)) else d.cfg.name, "model": name_of(model),
              "data": name_of(data), "features": list(features or []), "top_k": top_k, "limit": limit,
              "max_length": max_length, "explainer": [explainer_url, explainer_model] if explainer_local is None
              else ["local", name_of(explainer_local)],
              "scorer": [scorer_url, scorer_model], "given_explanations": explanations is not None,
              "n_examples": n_examples, "n_negative": n_negative, "per_request": per_request, "logprobs": logprobs,
              "simulate": simulate, "seed": seed}
    with Run(out, "sae explain", config, seed=seed) as run:
        cache = ReplyCache(out / "llm_cache")
        kw = {"cache": cache, "concurrency": concurrency, "retries": retries, "timeout": timeout}
        scorer = endpoint_asker(scorer_url, scorer_model, max_tokens=64, top_logprobs=logprobs, **kw)
        simulator = endpoint_asker(scorer_url, scorer_model, max_tokens=4 * max_length + 16,
                                   top_logprobs=logprobs, **kw) if simulate else None
        explainer = endpoint_asker(explainer_url, explainer_model, max_tokens=120, **kw) \
            if explainer_url and explainer_model else None
        if explainer_local is not None:
            from ..llm import local_chat_asker

            explainer = local_chat_asker(as_model(explainer_local), cache=cache)
        latents = list(features) if features else (sorted(int(k) for k in explanations) if explanations
                                                   else _most_active(m, d, texts, top_k, max_length))
        examples = collect(m, d, d.cfg.hook_point, texts, latents, n_top=n_examples, n_quantile=n_examples,
                           n_negative=n_negative, max_length=max_length, seed=seed)
        rows = []
        for ex in examples:
            given = explanations.get(ex.latent) if explanations is not None else None
            if given is None and explainer is None:
                raise InputError(f"no explanation given for latent {ex.latent} and no explainer")
            text, reply = (given, None) if given is not None else explain(explainer, ex)
            row: dict[str, Any] = {"latent": ex.latent, "explanation": text, "n_active": ex.n_active,
                                   "source": "given" if given is not None else "explainer",
                                   "examples": [e.to_dict() for e in ex.top[:5]]}
            if reply is not None:
                row["reply"] = reply
            if ex.top:
                row["detection"] = detection(scorer, text, ex, per_request=per_request, seed=seed)
                row["fuzzing"] = fuzzing(scorer, text, ex, per_request=per_request, seed=seed)
                if simulator is not None:
                    row["simulation"] = simulation(simulator, text, ex)
            rows.append(row)
        scored = [r for r in rows if "detection" in r]
        summary = {"latents": len(rows), "scored": len(scored),
                   "detection_balanced_accuracy": _mean([r["detection"]["balanced_accuracy"] for r in scored]),
                   "fuzzing_balanced_accuracy": _mean([r["fuzzing"]["balanced_accuracy"] for r in scored]),
                   "detection_auc": _mean([r["detection"]["auc"] for r in scored]),
                   "fuzzing_auc": _mean([r["fuzzing"]["auc"] for r in scored]),
                   "simulation_correlation": _mean([r["simulation"]["correlation"] for r in scored
                                                    if "simulation" in r]),
                   "failed_replies": sum(r["detection"]["failed_replies"] + r["fuzzing"]["failed_replies"]
                                         + r.get("simulation", {}).get("failed_replies", 0) for r in scored),
                   "requests": scorer.requests + (explainer.requests if explainer else 0)
                   + (simulator.requests if simulator else 0)}
        result = {"kind": "feature_explanations", "dictionary": d.cfg.name, "hook_point": d.cfg.hook_point,
                  "explainer": explainer.name if explainer else "given", "scorer": scorer.name,
                  "summary": summary, "latents": rows}
        write_json(out / "explanations.json", result)
        run.results = summary
    return result


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
