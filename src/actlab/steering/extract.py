"""Extracting steering vectors from contrastive data: mean difference (CAA), PCA of paired differences,
logistic-regression direction.

Positives and negatives go through the model together, in batches, in one pass per dataset; each text
contributes the mean of its activations over the positions its read policy selects (computed in
float64). All three methods return vectors on a common scale: PCA and logistic-regression directions are
unit vectors multiplied by the mean separation of positives and negatives along them, so a multiplier of 1
means "one mean difference" whatever the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..data import ABItem, ContrastPair, fingerprint
from ..errors import InputError
from ..hooks.points import BLOCK_KINDS, HookPoint
from ..version import __version__
from .prompts import PromptStyle, format_prompt, read_positions, with_answer
from .vector import SteeringVector

if TYPE_CHECKING:
    from ..models.model import Model

METHODS = ("mean_diff", "pca", "logreg")


@dataclass
class ContrastSet:
    """Texts to contrast, the token positions to read in each, and provenance."""

    positive: list[str]
    negative: list[str]
    pos_positions: list[list[int]]
    neg_positions: list[list[int]]
    paired: bool
    style: PromptStyle
    policy: str
    fingerprint: str
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positive)


def contrast_from_ab(model: Model, items: Sequence[ABItem], style: PromptStyle, policy: str = "answer"
                     ) -> ContrastSet:
    """CAA: the question followed by the matching (positive) or non-matching (negative) answer."""
    pos = [with_answer(model, it.question, it.matching, style) for it in items]
    neg = [with_answer(model, it.question, it.not_matching, style) for it in items]
    pp = [read_positions(model, t, policy, style, answer=it.matching) for t, it in zip(pos, items, strict=True)]
    npos = [read_positions(model, t, policy, style, answer=it.not_matching) for t, it in zip(neg, items, strict=True)]
    return ContrastSet(pos, neg, pp, npos, True, style, policy, fingerprint(items), {"kind": "ab", "n": len(items)})


def contrast_from_pairs(model: Model, pairs: Sequence[ContrastPair], style: PromptStyle | None = None,
                        policy: str = "mean") -> ContrastSet:
    """Contrastive texts, used as they are (plain style by default)."""
    style = style or PromptStyle(chat=False)
    pos = [format_prompt(model, p.positive, style) for p in pairs]
    neg = [format_prompt(model, p.negative, style) for p in pairs]
    return ContrastSet(pos, neg, [read_positions(model, t, policy, style) for t in pos],
                       [read_positions(model, t, policy, style) for t in neg], True, style, policy,
                       fingerprint(pairs), {"kind": "pairs", "n": len(pairs)})


def contrast_from_instructions(model: Model, positive: Sequence[str], negative: Sequence[str], style: PromptStyle,
                               policy: str = "eoi") -> ContrastSet:
    """Two instruction sets (e.g. harmful vs harmless), unpaired, read at the end-of-instruction tokens."""
    pos = [format_prompt(model, t, style) for t in positive]
    neg = [format_prompt(model, t, style) for t in negative]
    return ContrastSet(pos, neg, [read_positions(model, t, policy, style) for t in pos],
                       [read_positions(model, t, policy, style) for t in neg], False, style, policy,
                       fingerprint([*positive, "\0", *negative]),
                       {"kind": "instructions", "n_positive": len(pos), "n_negative": len(neg)})


@torch.no_grad()
def collect(model: Model, texts: Sequence[str], positions: Sequence[Sequence[int]], points: Sequence[HookPoint],
            *, add_special_tokens: bool, batch_size: int = 16, reduce: str = "mean",
            progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Per text, the activations at its positions: ``[n, d]`` (``reduce='mean'``, float64 mean) or
    ``[n, k, d]`` (``reduce='stack'``, every text having ``k`` positions). Stored as float32 on CPU."""
    if len(texts) != len(positions):
        raise InputError(f"{len(texts)} texts but {len(positions)} position lists")
    out: dict[str, list[torch.Tensor]] = {p.name: [] for p in points}
    for s in range(0, len(texts), batch_size):
        chunk = list(texts[s:s + batch_size])
        batch = model.tokenize(chunk, padding_side="right", add_special_tokens=add_special_tokens)
        T = batch["input_ids"].shape[1]
        mask = torch.zeros(len(chunk), T, dtype=torch.bool)
        counts = []
        for b, pos in enumerate(positions[s:s + batch_size]):
            if not pos or max(pos) >= T:
                raise InputError(f"text {s + b}: positions {list(pos)} are outside its {T} tokens")
            mask[b, list(pos)] = True
            counts.append(len(set(pos)))
        acts = model.activations(batch, list(points), positions=mask.to(model.device), dtype=torch.float64)
        for name, x in acts.items():
            parts = torch.split(x, counts)
            if reduce == "mean":
                out[name].append(torch.stack([p.mean(0) for p in parts]).float())
            else:
                out[name].append(torch.stack(list(parts)).float())
        if progress is not None:
            progress(len(chunk))
    return {k: torch.cat(v) for k, v in out.items()}


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """CAA: mean(positive) - mean(negative), in float64."""
    return pos.double().mean(0) - neg.double().mean(0)


def _scaled(direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    u = direction.double() / direction.double().norm().clamp_min(1e-12)
    sep = (pos.double() @ u).mean() - (neg.double() @ u).mean()
    if sep < 0:
        u, sep = -u, -sep
    return u * sep


def pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal direction of the paired differences (uncentred, i.e. PCA of differences with random
    sign flips), oriented towards the positives and scaled by the mean separation along it."""
    if pos.shape != neg.shape:
        raise InputError(f"PCA of paired differences needs paired data; got {pos.shape[0]} positives and "
                         f"{neg.shape[0]} negatives (use mean_diff or logreg)")
    d = pos.double() - neg.double()
    _, _, vh = torch.linalg.svd(d, full_matrices=False)
    return _scaled(vh[0], pos, neg)


def logreg_direction(pos: torch.Tensor, neg: torch.Tensor, *, C: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Weight vector of a logistic regression separating positives from negatives (standardised inputs,
    mapped back to activation space), scaled by the mean separation along it."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg]).double().numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mu, sd = x.mean(0), x.std(0) + 1e-8
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    clf.fit((x - mu) / sd, y)
    w = torch.from_numpy(clf.coef_[0] / sd)
    return _scaled(w, pos, neg)


def direction(method: str, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    if method == "mean_diff":
        return mean_diff(pos, neg)
    if method == "pca":
        return pca_diff(pos, neg)
    if method == "logreg":
        return logreg_direction(pos, neg)
    raise InputError(f"unknown extraction method {method!r}; valid: {', '.join(METHODS)}")


def extract(model: Model, data: ContrastSet, *, layers: Sequence[int] | None = None, point: str = "resid_post",
            method: str = "mean_diff", batch_size: int = 16, progress: Callable[[int], None] | None = None
            ) -> SteeringVector:
    """Extract a steering vector at ``point`` for each of ``layers`` (default: all) in one batched pass."""
    if method not in METHODS:
        raise InputError(f"unknown extraction method {method!r}; valid: {', '.join(METHODS)}")
    if point not in BLOCK_KINDS:
        raise InputError(f"unknown hook point kind {point!r}; valid: {', '.join(BLOCK_KINDS)}")
    if method == "pca" and not data.paired:
        raise InputError("PCA of paired differences needs paired data; use mean_diff or logreg")
    layer_list = list(range(model.n_layers)) if layers is None else list(layers)
    if not layer_list:
        raise InputError("the layer list is empty")
    pts = [HookPoint(i, point) for i in layer_list]
    for p in pts:
        model.read_site(p)  # range check with a clear error
    texts = data.positive + data.negative
    acts = collect(model, texts, data.pos_positions + data.neg_positions, pts,
                   add_special_tokens=data.style.add_special_tokens(), batch_size=batch_size, progress=progress)
    n = len(data.positive)
    vecs = {p.layer: direction(method, acts[p.name][:n], acts[p.name][n:]).float() for p in pts}
    meta = {
        "model": model.name, "model_family": model.adapter.family, "n_layers": model.n_layers,
        "d_model": model.d_model, "method": method, "positions": data.policy, "chat": data.style.chat,
        "dataset_fingerprint": data.fingerprint, "dataset": data.source, "n_positive": n,
        "n_negative": len(data.negative), "actlab_version": __version__,
    }
    return SteeringVector(vecs, point, meta)  # type: ignore[arg-type]
