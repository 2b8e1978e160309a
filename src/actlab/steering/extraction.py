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
from ..progress import task as progress_task
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


TRUNCATE = ("error", "skip", "left")


def token_lengths(model: Model, texts: Sequence[str], add_special_tokens: bool) -> list[int]:
    tok = model.tokenizer
    return [len(tok(t, add_special_tokens=add_special_tokens)["input_ids"]) for t in texts]


def fit_length(model: Model, data: ContrastSet, *, max_length: int | None = None, truncate: str = "error"
               ) -> tuple[ContrastSet, dict[str, Any]]:
    """Apply a length policy to texts longer than ``max_length`` tokens (default: the model's context):
    ``error`` names the first one, ``skip`` drops it (with its pair when the data is paired), ``left`` keeps its
    last ``max_length`` tokens (read positions shift with the cut; one that falls in the cut is an error).
    Returns the data to extract from and a record for the vector's metadata."""
    if truncate not in TRUNCATE:
        raise InputError(f"unknown truncation policy {truncate!r}; valid: {', '.join(TRUNCATE)}")
    limit = max_length or model.context_length
    if limit is None:
        return data, {}
    if limit < 1:
        raise InputError(f"max_length must be a positive number of tokens, got {limit}")
    texts = data.positive + data.negative
    lens = token_lengths(model, texts, data.style.add_special_tokens())
    over = [i for i, n in enumerate(lens) if n > limit]
    record: dict[str, Any] = {"max_length": limit, "truncate": truncate, "over_long": len(over)}
    if not over:
        return data, record
    n = len(data.positive)
    if truncate == "error":
        i = over[0]
        which = f"positive {i}" if i < n else f"negative {i - n}"
        raise InputError(f"text {which} is {lens[i]} tokens, longer than {limit} ({len(over)} texts are); use "
                         "truncate 'skip' (drop them) or 'left' (keep their last tokens), or a larger max_length")
    if truncate == "left":
        positions = data.pos_positions + data.neg_positions
        for i in over:
            cut = lens[i] - limit
            if min(positions[i]) < cut:
                raise InputError(f"text {i}: its read positions fall in the {cut} tokens cut from its start; use "
                                 "truncate 'skip'")
        return data, {**record, "left_truncated_to": limit}
    bad = set(over)
    if data.paired:  # positive i and negative i go together
        keep_p = keep_n = [i for i in range(n) if i not in bad and i + n not in bad]
    else:
        keep_p = [i for i in range(n) if i not in bad]
        keep_n = [i for i in range(len(data.negative)) if i + n not in bad]
    if not keep_p or not keep_n:
        raise InputError(f"every text of one side is longer than {limit} tokens; nothing left to extract from")
    kept = ContrastSet([data.positive[i] for i in keep_p], [data.negative[i] for i in keep_n],
                       [data.pos_positions[i] for i in keep_p], [data.neg_positions[i] for i in keep_n],
                       data.paired, data.style, data.policy, data.fingerprint,
                       {**data.source, "skipped_over_long": len(data.positive) - len(keep_p)})
    return kept, {**record, "skipped": len(data.positive) - len(keep_p) + len(data.negative) - len(keep_n)}


@torch.no_grad()
def collect(model: Model, texts: Sequence[str], positions: Sequence[Sequence[int]], points: Sequence[HookPoint],
            *, add_special_tokens: bool, batch_size: int = 16, reduce: str = "mean",
            progress: Callable[[int], None] | None = None, truncate_left: int | None = None
            ) -> dict[str, torch.Tensor]:
    """Per text, the activations at its positions: ``[n, d]`` (``reduce='mean'``, float64 mean) or
    ``[n, k, d]`` (``reduce='stack'``, every text having ``k`` positions). Stored as float32 on CPU. With
    ``truncate_left=N`` a longer text keeps its last ``N`` tokens and its positions shift accordingly.
    Under torch.distributed each rank reads a contiguous block of whole batches and every rank returns all
    texts (gathered in order): the batches a single process would run, so the same numbers."""
    from ..parallel import block_range, gather

    if len(texts) != len(positions):
        raise InputError(f"{len(texts)} texts but {len(positions)} position lists")
    if truncate_left is not None:
        lens = token_lengths(model, texts, add_special_tokens)
        positions = [[p - max(0, n - truncate_left) for p in pos] for pos, n in zip(positions, lens, strict=True)]
    out: dict[str, list[torch.Tensor]] = {p.name: [] for p in points}
    lo, hi = block_range(len(texts), batch_size)
    with progress_task("reading activations", total=hi - lo, unit="texts", callback=progress) as task:
        for s in range(lo, hi, batch_size):
            chunk = list(texts[s:s + batch_size])
            batch = model.tokenize(chunk, padding_side="right", add_special_tokens=add_special_tokens,
                                   truncate_left=truncate_left)
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
            task.advance(len(chunk))
    parts = gather({k: torch.cat(v) if v else None for k, v in out.items()})
    return {k: torch.cat([p[k] for p in parts if p[k] is not None]) for k in out}


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
            method: str = "mean_diff", batch_size: int = 16, progress: Callable[[int], None] | None = None,
            max_length: int | None = None, truncate: str = "error") -> SteeringVector:
    """Extract a steering vector at ``point`` for each of ``layers`` (default: all) in one batched pass; texts
    longer than ``max_length`` (default: the model's context) follow ``truncate`` (see :func:`fit_length`)."""
    return extract_methods(model, data, [method], layers=layers, point=point, batch_size=batch_size,
                           progress=progress, max_length=max_length, truncate=truncate)[method]


def extract_methods(model: Model, data: ContrastSet, methods: Sequence[str], *, layers: Sequence[int] | None = None,
                    point: str = "resid_post", batch_size: int = 16, progress: Callable[[int], None] | None = None,
                    max_length: int | None = None, truncate: str = "error") -> dict[str, SteeringVector]:
    """:func:`extract` by several methods from one reading of the activations: ``{method: vector}``."""
    for method in methods:
        if method not in METHODS:
            raise InputError(f"unknown extraction method {method!r}; valid: {', '.join(METHODS)}")
        if method == "pca" and not data.paired:
            raise InputError("PCA of paired differences needs paired data; use mean_diff or logreg")
    if point not in BLOCK_KINDS:
        raise InputError(f"unknown hook point kind {point!r}; valid: {', '.join(BLOCK_KINDS)}")
    layer_list = list(range(model.n_layers)) if layers is None else list(layers)
    if not layer_list:
        raise InputError("the layer list is empty")
    pts = [HookPoint(i, point) for i in layer_list]
    for p in pts:
        model.read_site(p)  # range check with a clear error
    data, length = fit_length(model, data, max_length=max_length, truncate=truncate)
    texts = data.positive + data.negative
    acts = collect(model, texts, data.pos_positions + data.neg_positions, pts,
                   add_special_tokens=data.style.add_special_tokens(), batch_size=batch_size, progress=progress,
                   truncate_left=length.get("left_truncated_to"))
    n = len(data.positive)
    out = {}
    for method in methods:
        vecs = {p.layer: direction(method, acts[p.name][:n], acts[p.name][n:]).float() for p in pts}
        meta = {
            "model": model.name, "model_family": model.adapter.family, "n_layers": model.n_layers,
            "d_model": model.d_model, "method": method, "positions": data.policy, "chat": data.style.chat,
            "dataset_fingerprint": data.fingerprint, "dataset": dict(data.source), "n_positive": n,
            "n_negative": len(data.negative), "actlab_version": __version__, "length_policy": length,
        }
        out[method] = SteeringVector(vecs, point, meta)  # type: ignore[arg-type]
    return out
