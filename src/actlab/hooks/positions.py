"""Token-position policies for reading activations, derived from the attention mask.

Positions are always counted over the *real* (non-pad) tokens of each row, so the same policy selects the
same tokens whether a batch is padded on the left, on the right, or not at all:

- ``"all"``: ``[batch, max_len, ...]``, row ``b`` holding its real tokens left-aligned, zeros after them
  (the lengths are in ``Activations.lengths``);
- ``"tokens"``: ``[n_real_tokens, ...]``, every real token of every row, row-major (for statistics, SAEs);
- ``"last"``: ``[batch, ...]``, the last real token of each row;
- an ``int`` ``i``: ``[batch, ...]``, the ``i``-th real token (negative counts from the end);
- a list of ints: ``[batch, k, ...]``;
- a bool tensor ``[batch, seq]`` in the layout of the input: ``[n_selected, ...]`` (may not select pads).

With a KV cache, positions refer to the tokens of the current call only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from .core import ForwardState

PositionSpec = str | int | Sequence[int] | torch.Tensor
POLICIES = ("all", "tokens", "last")


def check_positions(spec: PositionSpec) -> PositionSpec:
    """Validate a position spec up front (before any forward); returns it normalised."""
    if isinstance(spec, str):
        if spec not in POLICIES:
            raise InputError(f"unknown position policy {spec!r}; valid: {', '.join(POLICIES)}, an int, "
                             "a list of ints or a bool mask")
        return spec
    if isinstance(spec, torch.Tensor):
        if spec.dtype != torch.bool or spec.dim() != 2:
            raise InputError(f"a position mask must be a bool tensor [batch, seq], got {spec.dtype} "
                             f"with shape {tuple(spec.shape)}")
        return spec
    if isinstance(spec, bool):
        raise InputError(f"position {spec!r} is not a policy; use 'last', an int or a list of ints")
    if isinstance(spec, int):
        return spec
    try:
        items = [int(i) for i in spec]
    except (TypeError, ValueError):
        raise InputError(f"cannot read positions from {spec!r}; valid: {', '.join(POLICIES)}, an int, "
                         "a list of ints or a bool mask") from None
    if not items:
        raise InputError("an empty list of positions selects nothing")
    return items


def lengths(state: ForwardState) -> torch.Tensor:
    """Number of real tokens per row of the current call."""
    if "lengths" not in state.cache:
        state.cache["lengths"] = state.mask.sum(dim=1)
    return state.cache["lengths"]


def real_order(state: ForwardState) -> torch.Tensor:
    """``[batch, seq]`` indices: row b's real-token positions first (in order), then its pads."""
    if "order" not in state.cache:
        if not state.padded:
            order = torch.arange(state.seq, device=state.mask.device).expand(state.batch, -1)
        else:
            order = torch.argsort((~state.mask).to(torch.int8), dim=1, stable=True)
        state.cache["order"] = order
    return state.cache["order"]


def last_index(state: ForwardState) -> torch.Tensor:
    """Index of each row's last real token."""
    if "last" not in state.cache:
        if not state.padded:
            idx = torch.full((state.batch,), state.seq - 1, device=state.mask.device, dtype=torch.long)
        else:
            if not bool(state.mask.any(dim=1).all()):
                raise InputError("a row of the batch has no real token (its attention mask is all zeros)")
            flipped = torch.flip(state.mask, dims=[1]).to(torch.int8)
            idx = state.seq - 1 - torch.argmax(flipped, dim=1)
        state.cache["last"] = idx
    return state.cache["last"]


def _index_positions(state: ForwardState, items: list[int]) -> torch.Tensor:
    key = ("idx", tuple(items))
    if key not in state.cache:
        lens = lengths(state)
        rel = torch.tensor(items, device=lens.device)
        j = torch.where(rel < 0, lens[:, None] + rel[None, :], rel[None, :].expand(state.batch, -1))
        bad = (j < 0) | (j >= lens[:, None])
        if bool(bad.any()):
            b, k = (int(t) for t in bad.nonzero()[0])
            raise InputError(f"position {items[k]} is out of range for row {b}, which has {int(lens[b])} "
                             f"real tokens (valid: {-int(lens[b])}..{int(lens[b]) - 1})")
        state.cache[key] = real_order(state).gather(1, j)
    return state.cache[key]


def select(x: torch.Tensor, state: ForwardState | None, spec: PositionSpec) -> torch.Tensor:
    """Select positions from ``x`` ``[batch, seq, ...]``; always returns a new tensor."""
    if state is None:
        raise RuntimeError("no forward state: run the model through its base module so positions are known")
    b = torch.arange(state.batch, device=x.device)
    if isinstance(spec, str):
        if spec == "last":
            return x[b, last_index(state).to(x.device)]
        if spec == "tokens":
            return x[state.mask.to(x.device)] if state.padded else x.reshape(-1, *x.shape[2:]).clone()
        # "all"
        if not state.padded:
            return x.clone()
        order = real_order(state).to(x.device)
        out = x[b[:, None], order]
        keep = torch.arange(state.seq, device=x.device)[None, :] < lengths(state).to(x.device)[:, None]
        return out.masked_fill(~keep.reshape(*keep.shape, *([1] * (x.dim() - 2))), 0)
    if isinstance(spec, torch.Tensor):
        if tuple(spec.shape) != (state.batch, state.seq):
            raise InputError(f"position mask has shape {tuple(spec.shape)} but the input is "
                             f"[{state.batch}, {state.seq}]")
        m = spec.to(state.mask.device)
        if bool((m & ~state.mask).any()):
            raise InputError("position mask selects padding tokens (attention mask 0)")
        return x[m.to(x.device)]
    if isinstance(spec, int):
        return x[b, _index_positions(state, [spec])[:, 0].to(x.device)]
    idx = _index_positions(state, list(spec)).to(x.device)
    return x[b[:, None], idx]


def align_keys(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
    """An attention pattern's key axis (the last) in the order captures use for tokens: real tokens first, as
    ``select(..., "all")`` orders the query axis, so key j is token j of the row's text. Only without a KV
    cache (with one, the cached keys keep the padded layout)."""
    if state is None or not state.padded or state.past_len != 0 or x.shape[-1] != state.seq:
        return x
    order = real_order(state).to(x.device)  # [batch, seq]
    b = order.shape[0]
    idx = order.view(b, *([1] * (x.dim() - 2)), -1).expand(*x.shape[:-1], -1) if x.shape[0] == b else None
    if idx is None:  # "tokens" flattened the batch: leave it
        return x
    out = x.gather(-1, idx)
    keep = torch.arange(state.seq, device=x.device)[None, :] < lengths(state).to(x.device)[:, None]
    return out * keep.view(b, *([1] * (x.dim() - 2)), -1).to(out.dtype)
