"""Unembedding, the lens protocol and the logit lens.

:class:`~actlab.models.unembed.Unembed` (re-exported here) = the model's own final norm, recomputed for
every vector, + the unembedding; the logit lens decodes hook points through it. A *lens* is anything with a
``name``, ``check(point)`` and ``logits(model, point, h)`` (:class:`Lens`): :class:`LogitLens` and the tuned
lens (:class:`~actlab.tuned_lens.TunedLens`) are the two, and everything that decodes (:func:`logit_lens`,
:func:`lens_grid`, the CLI, the reports, the playground) takes either without branching on which.

Attention and MLP outputs are decoded on their own ("direct" view of what the sub-block writes); decode
``resid_mid``/``resid_post`` for the cumulative stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from .errors import InputError
from .hooks.points import RESIDUAL_KINDS, HookPoint
from .models.unembed import Unembed

__all__ = ["Lens", "LensResult", "LogitLens", "Unembed", "lens_grid", "logit_lens", "resolve_target"]

if TYPE_CHECKING:
    from .models.model import Model

DECODABLE = (*RESIDUAL_KINDS, "embed", "final_norm")


@runtime_checkable
class Lens(Protocol):
    """Decodes a residual-stream activation into next-token logits."""

    name: str

    def check(self, point: HookPoint) -> None:
        """Raise a one-line error for a point this lens cannot decode."""
        ...

    def logits(self, model: Model, point: HookPoint, h: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Float32 logits for ``h`` read at ``point``."""
        ...


class LogitLens:
    """The logit lens: the final norm (recomputed for every vector) and the unembedding, nothing learned."""

    name = "logit"

    def check(self, point: HookPoint) -> None:
        if point.kind not in DECODABLE:
            raise InputError(f"cannot decode {point.name!r} through the unembedding (it is not d_model wide); "
                             f"decodable kinds: {', '.join(DECODABLE)}")

    def logits(self, model: Model, point: HookPoint, h: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        unembed = model.unembed
        if grad:
            return unembed.forward(h, normalize=point.kind != "final_norm")
        with torch.no_grad():
            return unembed(h, normalize=point.kind != "final_norm")


@dataclass
class LensResult:
    """Logit-lens output for a batch of prompts at one position.

    ``top_ids``/``top_probs`` are ``[n_prompts, n_points, k]``; ``target_probs``/``target_ranks``
    ``[n_prompts, n_points]`` (rank 1 = the most likely token), present when a target was given.
    """

    model: str
    prompts: list[str]
    position: int
    position_tokens: list[str]
    points: list[HookPoint]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: list[list[list[str]]]
    target_id: int | None = None
    target_token: str | None = None
    lens: str = "logit"  # or "tuned" (a TunedLens translated the residual points first)
    target_probs: torch.Tensor | None = None
    target_ranks: torch.Tensor | None = None
    final_top_tokens: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        seen: list[str] = []
        for p in self.points:
            if p.kind not in seen:
                seen.append(p.kind)
        return seen

    def layers(self, kind: str) -> list[int | None]:
        return [p.layer for p in self.points if p.kind == kind]

    def index(self, point: str | HookPoint) -> int:
        name = point.name if isinstance(point, HookPoint) else point
        for k, p in enumerate(self.points):
            if p.name == name:
                return k
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per prompt, per point kind, per layer: top-k tokens (string, id, prob) and target."""
        prompts = []
        for b, prompt in enumerate(self.prompts):
            kinds: dict[str, list[dict[str, Any]]] = {}
            for j, p in enumerate(self.points):
                entry: dict[str, Any] = {
                    "point": p.name,
                    "layer": p.layer,
                    "top": [
                        {"token": self.top_tokens[b][j][r], "id": int(self.top_ids[b, j, r]),
                         "prob": float(self.top_probs[b, j, r])}
                        for r in range(self.top_ids.shape[-1])
                    ],
                }
                if self.target_probs is not None and self.target_ranks is not None:
                    entry["target_prob"] = float(self.target_probs[b, j])
                    entry["target_rank"] = int(self.target_ranks[b, j])
                kinds.setdefault(p.kind, []).append(entry)
            prompts.append({
                "prompt": prompt,
                "position": self.position,
                "token_at_position": self.position_tokens[b],
                "model_top_token": self.final_top_tokens[b] if self.final_top_tokens else None,
                "points": kinds,
            })
        return {
            "model": self.model,
            "lens": self.lens,
            "target": None if self.target_id is None else {"token": self.target_token, "id": self.target_id},
            "rank_convention": "1 = most likely token",
            "prompts": prompts,
        }


def resolve_target(model: Model, target: str | int) -> tuple[int, str]:
    """A target token given as an id or as text that encodes to exactly one token."""
    tok = model.tokenizer
    if isinstance(target, int):
        if not 0 <= target < model.vocab_size:
            raise InputError(f"target token id {target} is out of range 0..{model.vocab_size - 1}")
        return target, tok.decode([target]) if tok is not None else str(target)
    if tok is None:
        raise InputError("this model has no tokenizer; give the target as a token id")
    if target == "":
        raise InputError("target token is empty")
    ids = tok(target, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise InputError(
            f"target {target!r} is {len(ids)} tokens {pieces} ({ids}), not one; give a single token "
            "(often with a leading space, e.g. ' Paris') or its id"
        )
    return int(ids[0]), tok.decode(ids)


@torch.no_grad()
def logit_lens(
    model: Model,
    text_or_batch: str | Sequence[str] | Any,
    points: str | Iterable[str] = ("resid_post",),
    *,
    position: int = -1,
    top_k: int = 5,
    target: str | int | None = None,
    lens: Lens | None = None,
) -> LensResult:
    """Decode hook points through the final norm and unembedding at one token position.

    ``points`` may name residual-stream kinds at every layer (``'resid_post'``, ``'attn_out'``,
    ``'mlp_out'``...), single points or ranges; ``position`` counts over real tokens (-1 = last). With a
    :class:`~actlab.tuned_lens.TunedLens` as ``lens``, residual points are translated first (the tuned lens).
    """
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    lens = lens if lens is not None else LogitLens()
    pts = model.parse_points(points)
    for p in pts:
        LogitLens().check(p)
        lens.check(p)
    batch = model.as_batch(text_or_batch, padding_side="right")
    prompts = ([text_or_batch] if isinstance(text_or_batch, str) else
               list(text_or_batch) if isinstance(text_or_batch, (list, tuple)) else
               [f"<prompt {i}>" for i in range(batch["input_ids"].shape[0])])
    tgt = resolve_target(model, target) if target is not None else None
    with model.capture(pts, positions=position, dtype=None, device=model.device) as acts:
        out = model(**batch, use_cache=False)
    lens_logits = torch.stack([lens.logits(model, p, acts[p.name]) for p in pts], dim=1)
    probs = torch.softmax(lens_logits, dim=-1)  # [B, P, V]
    top_p, top_i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    tok = model.tokenizer
    decode = (lambda i: tok.decode([i])) if tok is not None else str
    top_tokens = [[[decode(i) for i in row] for row in per_prompt] for per_prompt in top_i.tolist()]
    # the token at the lens position, and the model's own prediction there
    pos_tokens, final_top = [], []
    for b in range(batch["input_ids"].shape[0]):
        real_pos = batch["attention_mask"][b].nonzero()[:, 0]
        j = int(real_pos[position])
        pos_tokens.append(decode(int(batch["input_ids"][b, j])))
        final_top.append(decode(int(out.logits[b, j].argmax())))
    result = LensResult(
        model=model.name, prompts=prompts, position=position, position_tokens=pos_tokens, points=pts,
        top_ids=top_i.cpu(), top_probs=top_p.cpu(), top_tokens=top_tokens, final_top_tokens=final_top,
        lens=lens.name,
    )
    if tgt is not None:
        tid, tstr = tgt
        tl = lens_logits[..., tid]
        result.target_id, result.target_token = tid, tstr
        result.target_probs = probs[..., tid].cpu()
        result.target_ranks = ((lens_logits > tl[..., None]).sum(-1) + 1).cpu()
    return result


@torch.no_grad()
def lens_grid(model: Model, text: str, kind: str = "resid_post", *, top_k: int = 5,
              add_special_tokens: bool = True, lens: Lens | None = None) -> dict[str, Any]:
    """The logit lens (or, with ``lens``, the tuned lens) at *every* layer and token position of one text, for
    one hook-point kind: per layer and position the ``top_k`` tokens and their probabilities (the playground's
    lens explorer; JSON-ready). Token text is spaced as the tokenizer decodes it in context."""
    from .models.tokens import token_strings

    if kind not in (*RESIDUAL_KINDS,):
        raise InputError(f"cannot decode {kind!r} through the unembedding; decodable kinds: "
                         f"{', '.join(RESIDUAL_KINDS)}")
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if not text:
        raise InputError("the text is empty")
    batch = model.tokenize(text, add_special_tokens=add_special_tokens)
    ids = batch["input_ids"][0].tolist()
    pts = model.parse_points(kind)
    lens = lens if lens is not None else LogitLens()
    lens.check(pts[0])
    with model.capture(pts, positions="all", dtype=None, device=model.device) as acts:
        out = model(**batch, use_cache=False)
    tok = model.tokenizer
    seen: dict[int, str] = {}

    def one(i: int) -> str:
        if i not in seen:
            seen[i] = token_strings(tok, [i])[0]
        return seen[i]

    layers = []
    for p in pts:
        h = acts[p.name][0]
        probs = torch.softmax(lens.logits(model, p, h), dim=-1)  # [T, V]
        top_p, top_i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        layers.append({"layer": p.layer, "top": [
            [[one(int(i)), round(float(q), 5)] for q, i in zip(pp, ii, strict=True)]
            for pp, ii in zip(top_p.tolist(), top_i.tolist(), strict=True)]})
    final = out.logits[0].argmax(-1).tolist()
    return {"kind": "lens_grid", "model": model.name, "lens": lens.name,
            "point_kind": kind, "text": text,
            "tokens": token_strings(tok, ids), "model_top": [one(i) for i in final],
            "layers": layers}
