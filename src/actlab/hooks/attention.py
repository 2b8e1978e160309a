"""Attention internals as hook sites: queries, keys, values and the attention pattern.

``transformers`` computes attention inside one function call (``attention_interface(module, q, k, v, mask,
scaling=..., ...)``, or ``_attn`` in GPT-Neo) that no module hook can see. While a handler is attached to one
of these sites, the attention module it belongs to - and only that one - is routed through
:func:`_routed`, which shows the handlers the tensors in actlab's ``[batch, seq, ...]`` layout:

=========  ====================================  ===========================================================
site       shape seen by handlers                what it is
=========  ====================================  ===========================================================
``q``      ``[batch, seq, head, d_head]``        queries after the rotary embedding where the model applies
                                                 one (OPT: already multiplied by the 1/sqrt(d) scaling)
``k``      ``[batch, seq, kv_head, d_head]``     keys of this forward's tokens after rotary (grouped-query
                                                 models: one per KV head, not repeated)
``v``      ``[batch, seq, kv_head, d_head]``     values of this forward's tokens
``pattern````[batch, query, head, key]``         softmax(q k^T * scaling (+ softcap) + mask); ``key`` spans
                                                 the KV cache too
=========  ====================================  ===========================================================

Reading or editing ``q``/``k``/``v`` keeps the model's own attention kernel (SDPA, flash, eager): the
routed call hands the (possibly edited) tensors to the implementation the model was loaded with. Reading
``pattern`` computes the probabilities beside the kernel (two matmuls and a softmax in float32, *that layer
only*) and still lets the model's own kernel compute the output, so the logits are exactly those of the unhooked
forward; *editing* it (a handler returns a tensor) makes that layer compute its output eagerly from the edited
probabilities; every other layer keeps its kernel.
``bench/bench_attention.py`` measures the cost. Edits of ``k``/``v`` change this forward's attention; the
KV cache has already stored the unedited keys and values (generation with cached k/v edits sees them only
for the current tokens).
"""

from __future__ import annotations

import copy
import inspect
import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

ATTN_SITES: tuple[str, ...] = ("q", "k", "v", "pattern")
ROUTED_NAME = "actlab"

_REGISTERED = False


def _register() -> None:
    """Register the routing function with transformers' attention interface (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface

    AttentionInterface.register(ROUTED_NAME, _routed)
    _REGISTERED = True


class Routing:
    """Sends one attention module's attention call through actlab while handlers are attached to it.

    ``run(site, x)`` runs the handlers of a site (set by the dispatcher layer, :mod:`actlab.hooks.core`)."""

    def __init__(self, module: nn.Module, run: Callable[[str, torch.Tensor], torch.Tensor | None],
                 wants: Callable[[str], bool]):
        self.module, self.run, self.wants = module, run, wants
        self._saved_config: Any = None
        if not _uses_interface(module) and hasattr(type(module), "_attn"):
            self.mode = "method"  # GPT-Neo: attention lives in the module's own _attn method
            original = type(module)._attn.__get__(module)
            module._attn = lambda q, k, v, mask=None, *a, **kw: self._method(original, q, k, v, mask, *a, **kw)
        else:
            cfg = getattr(module, "config", None)
            if cfg is None or not hasattr(cfg, "_attn_implementation"):
                raise RuntimeError(f"{type(module).__name__} does not call transformers' attention interface; "
                                   "attention internals cannot be hooked in this model")
            _register()
            self.mode = "interface"
            self.original_impl = cfg._attn_implementation or "eager"
            self._saved_config = cfg
            private = copy.copy(cfg)  # this module only: the rest of the model keeps its implementation
            private.__dict__["_attn_implementation_internal"] = ROUTED_NAME
            module.config = private
        _ROUTES[module] = self

    def remove(self) -> None:
        if self.mode == "method":
            self.module.__dict__.pop("_attn", None)
        elif self._saved_config is not None:
            self.module.config = self._saved_config
        _ROUTES.pop(self.module, None)

    # -- the interface path ----------------------------------------------------------------------------
    def original(self) -> Callable[..., Any]:
        if self.original_impl == "eager":
            return sys.modules[type(self.module).__module__].eager_attention_forward
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS[self.original_impl]

    def interface(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any,
                  **kw: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self._qkv(query, key, value)
        if not self.wants("pattern"):
            return self.original()(self.module, query, key, value, mask, **kw)
        scaling = kw.get("scaling")
        scores = query.float() @ _repeat(key, query).float().transpose(-1, -2)
        scores = scores * (query.shape[-1] ** -0.5 if scaling is None else scaling)
        if kw.get("softcap"):
            scores = torch.tanh(scores / kw["softcap"]) * kw["softcap"]
        scores = _masked(scores, mask, kw.get("sliding_window"))
        probs = self._pattern(scores)
        if probs is None:  # only read: the model's own kernel computes the output, untouched
            return self.original()(self.module, query, key, value, mask, **kw)
        out, weights = self._weighted(probs, value, query, kw.get("dropout", 0.0))
        return out.transpose(1, 2).contiguous(), weights

    # -- the method path (GPT-Neo) ---------------------------------------------------------------------
    def _method(self, original: Callable[..., Any], query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: Any, *a: Any, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        query, key, value = self._qkv(query, key, value)
        if not self.wants("pattern"):
            return original(query, key, value, mask, *a, **kw)
        scores = query.float() @ key.float().transpose(-1, -2)  # GPT-Neo does not scale its scores
        scale = getattr(self.module, "scale_attn", None)  # GPT-J (transformers 4.x) divides by sqrt(d)
        if scale is not None:
            scores = scores / scale
        t, s = query.shape[-2], key.shape[-2]
        bias = getattr(self.module, "bias", None)
        if isinstance(bias, torch.Tensor) and bias.dtype == torch.bool:  # GPT-Neo's causal / local window
            scores = torch.where(bias[:, :, s - t:s, :s], scores, torch.finfo(scores.dtype).min)
            if mask is not None:
                scores = scores + mask[..., :s]
        else:
            scores = _masked(scores, mask, None)
        probs = self._pattern(scores)
        if probs is None:  # only read: the module's own method computes the output, untouched
            return original(query, key, value, mask, *a, **kw)
        p = self.module.attn_dropout.p if self.module.training else 0.0
        head_mask = a[0] if a else kw.get("head_mask")  # transformers 4.x passes one
        return self._weighted(probs, value, query, p, head_mask)

    # -- shared ----------------------------------------------------------------------------------------
    def _qkv(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the q/k/v handlers; tensors arrive as [batch, head, seq, d_head] (k/v over the cache too)."""
        t = query.shape[-2]
        if self.wants("q"):
            new = self.run("q", query.transpose(1, 2))
            if new is not None:
                query = _same(new, query.transpose(1, 2), "q").transpose(1, 2)
        out = []
        for site, x in (("k", key), ("v", value)):
            if self.wants(site):
                cur = x[:, :, x.shape[-2] - t:, :].transpose(1, 2)
                new = self.run(site, cur)
                if new is not None:
                    new = _same(new, cur, site).transpose(1, 2)
                    x = torch.cat([x[:, :, : x.shape[-2] - t, :], new], dim=2) if x.shape[-2] > t else new
            out.append(x)
        return query, out[0], out[1]

    def _pattern(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Show the handlers the probabilities; the edited ones (``[batch, head, query, key]``), or None when
        every handler only read them."""
        probs = torch.softmax(scores, dim=-1)
        new = self.run("pattern", probs.permute(0, 2, 1, 3))
        if new is None:
            return None
        return _same(new, probs.permute(0, 2, 1, 3), "pattern").permute(0, 2, 1, 3).float()

    def _weighted(self, probs: torch.Tensor, value: torch.Tensor, query: torch.Tensor, dropout: float,
                  head_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        weights = probs.to(value.dtype)
        if dropout:
            weights = nn.functional.dropout(weights, p=dropout, training=self.module.training)
        if head_mask is not None:
            weights = weights * head_mask
        return weights @ _repeat(value, query), weights


_ROUTES: weakref.WeakKeyDictionary[nn.Module, Routing] = weakref.WeakKeyDictionary()


def _routed(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any = None,
            **kw: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if mask is None and "attention_mask" in kw:  # some models pass the mask by keyword
        mask = kw.pop("attention_mask")
    route = _ROUTES.get(module)
    if route is None:  # a module left with a routed config but no route: a bug, say so
        raise RuntimeError(f"{type(module).__name__} is routed through actlab but has no hooks attached")
    return route.interface(query, key, value, mask, **kw)


def _uses_interface(module: nn.Module) -> bool:
    """Whether the module's forward looks its attention function up in transformers' interface table."""
    code = getattr(inspect.unwrap(type(module).forward), "__code__", None)
    if code is None:
        return not hasattr(type(module), "_attn")
    return "ALL_ATTENTION_FUNCTIONS" in code.co_names


def _repeat(x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: repeat each KV head for the query heads that share it."""
    groups = query.shape[1] // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _masked(scores: torch.Tensor, mask: Any, sliding_window: int | None) -> torch.Tensor:
    """Apply the mask the model built for its own kernel: additive floats, booleans (True = attend) or None
    (SDPA's causal fast path: causal, no padding, optionally a sliding window). Masked scores get the dtype's
    lowest finite value, as transformers' eager path does: a fully masked (padding) query row stays finite
    instead of NaN, which would reach real tokens through the next layer's values."""
    t, s = scores.shape[-2], scores.shape[-1]
    if mask is None:
        q_pos = torch.arange(s - t, s, device=scores.device)[:, None]
        k_pos = torch.arange(s, device=scores.device)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window:
            allowed = allowed & (q_pos - k_pos < sliding_window)
        return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    if isinstance(mask, torch.Tensor):
        mask = mask[..., :s]
        if mask.dtype == torch.bool:
            return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return scores + mask.float()
    raise RuntimeError(f"cannot read an attention mask of type {type(mask).__name__} for the pattern")


def _same(new: Any, old: torch.Tensor, site: str) -> torch.Tensor:
    if not isinstance(new, torch.Tensor) or new.shape != old.shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(f"a handler at attention site {site!r} returned {got}; it must return a tensor of the "
                         f"shape it was given, {tuple(old.shape)}")
    return new.to(old.dtype)
