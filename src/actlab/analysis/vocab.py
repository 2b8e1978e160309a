"""Vocabulary views of directions: top tokens through the unembedding, per layer, and the dot product of a
direction with the activations of generated tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.points import HookPoint
from ..steering.vector import SteeringVector

if TYPE_CHECKING:
    from ..models.model import Model


def vocab_view(model: Model, vector: SteeringVector | torch.Tensor, layer: int | None = None, *, k: int = 10
               ) -> dict[str, list[tuple[str, float]]]:
    """Top positive and negative tokens of a direction through the final norm's gain and the unembedding
    (see :meth:`actlab.lens.Unembed.direction_logits`)."""
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    v = vector[layer if layer is not None else vector.layers[0]] if isinstance(vector, SteeringVector) else vector
    if v.numel() != model.d_model:
        raise InputError(f"direction has {v.numel()} entries; the model's d_model is {model.d_model}")
    if not bool(torch.isfinite(v).all()):
        raise InputError("the direction contains NaN or infinite values; it has no vocabulary projection")
    if float(v.abs().max()) == 0:
        raise InputError("the direction is a zero vector; it has no vocabulary projection")
    if k > model.vocab_size:
        raise InputError(f"k={k} is larger than the vocabulary ({model.vocab_size} tokens)")
    scores = model.unembed.direction_logits(v)
    tok = model.tokenizer
    dec = (lambda i: tok.decode([i])) if tok is not None else str
    top, bottom = scores.topk(k), (-scores).topk(k)
    return {"positive": [(dec(int(i)), float(s)) for s, i in zip(top.values, top.indices, strict=True)],
            "negative": [(dec(int(i)), float(-s)) for s, i in zip(bottom.values, bottom.indices, strict=True)]}


def vocab_projection(model: Model, vector: SteeringVector, *, layers: Sequence[int] | None = None, k: int = 10
                     ) -> dict[int, dict[str, list[tuple[str, float]]]]:
    """:func:`vocab_view` for each layer of a vector."""
    return {layer: vocab_view(model, vector, layer, k=k) for layer in (layers or vector.layers)}


@torch.no_grad()
def direction_dots(model: Model, direction: torch.Tensor, prompts: Sequence[str], *, layer: int,
                   point: str = "resid_post", max_new_tokens: int = 24, chat: bool = False) -> list[dict[str, Any]]:
    """Generate from each prompt, then the dot product of the unit direction with ``blocks.{layer}.{point}``
    at every generated token (one forward over prompt + generation, so each token's activation is the one
    the model had when reading it), and beside it the logit lens's top token at that point (what the layer
    already predicts next): the joint per-token table of the CAA discussion. Wrap the call in ``steer(...)``
    to see a steered run."""
    from ..lens import LogitLens

    u = direction.double().reshape(-1)
    if u.numel() != model.d_model:
        raise InputError(f"direction has {u.numel()} entries; the model's d_model is {model.d_model}")
    u = u / u.norm().clamp_min(1e-12)
    name = HookPoint.parse(HookPoint(layer, point).name, model.n_layers).name
    out = []
    for p in prompts:
        text = model.chat_prompt(p) if chat else p
        batch = model.tokenize(text, add_special_tokens=not chat)
        gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        n_prompt = batch["input_ids"].shape[1]
        with model.capture(name, positions="all", dtype=torch.float64) as acts:
            model(input_ids=gen, attention_mask=torch.ones_like(gen), use_cache=False)
        h = acts[name][0]
        dots = (h @ u)[n_prompt:]
        ids = gen[0, n_prompt:].tolist()
        hp = HookPoint.parse(name, model.n_layers)
        lens_probs = LogitLens().logits(model, hp, h[n_prompt:].to(model.dtype)).float().softmax(-1)
        top_p, top_id = lens_probs.max(-1)
        out.append({"prompt": p, "tokens": [model.tokenizer.decode([i]) for i in ids],
                    "dots": [float(x) for x in dots], "layer": layer, "point": point,
                    "lens_top": [model.tokenizer.decode([int(i)]) for i in top_id],
                    "lens_top_prob": [round(float(x), 6) for x in top_p]})
    return out
