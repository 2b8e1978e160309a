"""The patching job: activation and/or attribution patching of one clean/corrupted prompt pair into a run
folder (``patching.json`` + one heatmap per method and kind)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..patching import activation_patching, attribution_patching, logit_diff
from ..report.figures import patching_heatmaps
from ..runs import Run, write_json
from .common import ModelLike, as_model, name_of

METHODS = ("activation", "attribution", "both")


def _token_id(model: Any, text: str, what: str) -> int:
    if text.isascii() and text.isdigit():
        tid = int(text)
        if tid >= model.vocab_size:
            raise InputError(f"{what} {text} is not a token id of {model.name!r}: its vocabulary has ids "
                             f"0..{model.vocab_size - 1}")
        return tid
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(f"{what} {text!r} is {len(ids)} tokens; give text that is one token (often with its "
                         f"leading space) or a token id")
    return int(ids[0])


def patch(model: ModelLike, clean: str, corrupt: str, out: str | os.PathLike[str], *, answer: str, wrong: str,
          kinds: str = "resid_pre,attn_out,mlp_out", layers: str | None = None, method: str = "both",
          per_head: bool = False, batch_size: int = 32) -> dict[str, Any]:
    """Patch ``clean`` into ``corrupt`` over layers x positions (or heads) x kinds with the logit difference
    ``answer - wrong`` at the last position as the metric."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    m = as_model(model)
    a, w = _token_id(m, answer, "--answer"), _token_id(m, wrong, "--wrong")
    metric = logit_diff(a, w)
    config = {"model": name_of(model), "clean": clean, "corrupt": corrupt, "answer": answer, "wrong": wrong,
              "answer_id": a, "wrong_id": w, "kinds": kinds, "layers": layers, "method": method,
              "per_head": per_head, "batch_size": batch_size}
    with Run(out, "patch", config) as run:
        results = {}
        if method in ("activation", "both"):
            results["activation"] = activation_patching(m, clean, corrupt, metric, kinds=kinds, layers=layers,
                                                        per_head=per_head, batch_size=batch_size)
        if method in ("attribution", "both"):
            results["attribution"] = attribution_patching(m, clean, corrupt, metric, kinds=kinds, layers=layers,
                                                          per_head=per_head)
        first = next(iter(results.values()))
        doc = {"kind": "patching", "model": m.name, "clean": clean, "corrupt": corrupt, "metric":
               f"logit({answer!r}) - logit({wrong!r}) at the last position", "tokens": first.tokens,
               "clean_metric": first.clean_metric, "corrupt_metric": first.corrupt_metric,
               "axis": first.axis, "layers": first.layers,
               "methods": {k: {"grids": v.to_dict()["grids"], "normalised": v.to_dict()["normalised"]}
                           for k, v in results.items()}}
        write_json(Path(out) / "patching.json", doc)
        patching_heatmaps(results, Path(out), title=m.name)
        run.results = {"clean_metric": first.clean_metric, "corrupt_metric": first.corrupt_metric}
    return doc
