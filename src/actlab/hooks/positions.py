"""Token positions, derived from the attention mask: which tokens a capture reads, and which tokens an edit
(steering, rotation, a user hook) applies to.

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

Edits apply from a per-row start on (:class:`Boundary`), under one policy vocabulary
(:data:`STEER_POSITIONS`): ``all``, ``from_eoi``, ``generated``, ``auto``, ``last:K``.
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


# -- where an edit applies: one position policy for steering, rotations, user hooks and the prefix engine ------
STEER_POSITIONS = ("auto", "all", "from_eoi", "generated", "last:K")
DEFAULT_STEER_POSITIONS = "auto"
STEER_POSITIONS_HELP = ("auto: from the end-of-instruction tokens on in rows that have them, every token in the "
                        "others; all: every real token; from_eoi: from the end-of-instruction tokens on; generated: "
                        "only generated tokens; last:K: from the prompt's K-th last token on")


def check_steer_positions(positions: str) -> str:
    """A steering position policy (:data:`STEER_POSITIONS`), or a one-line error naming the valid ones."""
    if isinstance(positions, str) and positions.startswith("last:"):
        k = positions[5:]
        if k.isascii() and k.isdigit() and int(k) >= 1:
            return positions
        raise InputError(f"cannot read steering positions {positions!r}: last:K needs a whole number K >= 1")
    if positions not in STEER_POSITIONS:
        raise InputError(f"unknown steering position policy {positions!r}; valid: {', '.join(STEER_POSITIONS)} "
                         f"({STEER_POSITIONS_HELP})")
    return positions


def eoi_start(ids: torch.Tensor, eoi_ids: Sequence[int], *, missing: int | None = None) -> torch.Tensor:
    """Per row of ``ids`` ``[batch, seq]``, the index of the first token of the *last* occurrence of the
    end-of-instruction sequence ``eoi_ids`` - the one boundary that reading (``eoi``) and steering
    (``from_eoi``) positions both refer to. A row without it is an error naming the row, or gets ``missing``."""
    k = len(eoi_ids)
    if k == 0:
        raise InputError("the end-of-instruction token sequence is empty")
    pattern = torch.tensor(list(eoi_ids), device=ids.device)
    windows = ids.unfold(1, k, 1) if ids.shape[1] >= k else ids.new_empty(ids.shape[0], 0, k)
    hit = (windows == pattern).all(-1)  # [B, T-k+1]
    found = hit.any(1)
    if missing is None and not bool(found.all()):
        row = int((~found).nonzero()[0])
        raise InputError(f"row {row} does not contain the chat template's end-of-instruction tokens; build "
                         "prompts with the chat template or steer positions='all'")
    if hit.shape[1] == 0:  # every row is shorter than the sequence (and missing is allowed)
        return torch.full((ids.shape[0],), missing or 0, dtype=torch.long, device=ids.device)
    start = hit.shape[1] - 1 - torch.argmax(torch.flip(hit, dims=[1]).to(torch.int8), dim=1)
    return torch.where(found, start, torch.full_like(start, missing or 0))


def prompt_starts(policy: str, ids: torch.Tensor | None, mask: torch.Tensor,
                  eoi_ids: Sequence[int] | None) -> torch.Tensor:
    """Per row of a prompt ``[batch, seq]`` (``mask``: its attention mask), the first column an edit applies to
    under ``policy`` - the single definition every steering path uses (the hooks at a prompt's first forward,
    and the prefix engine before it runs anything). ``auto`` means, per row: from the end-of-instruction
    tokens where the row has them (and ``eoi_ids`` are known), else from the first token."""
    batch, seq = mask.shape
    dev = mask.device
    zeros = torch.zeros(batch, dtype=torch.long, device=dev)
    if policy == "all":
        return zeros
    if policy == "generated":
        return torch.full((batch,), seq, dtype=torch.long, device=dev)
    if policy.startswith("last:"):
        k = int(policy[5:])
        m = mask.bool()
        last = seq - 1 - torch.argmax(torch.flip(m, dims=[1]).to(torch.int8), dim=1)
        first = torch.argmax(m.to(torch.int8), dim=1)
        return torch.maximum(last - (k - 1), first)
    if policy == "auto":
        if ids is None or not eoi_ids:
            return zeros
        return eoi_start(ids, eoi_ids, missing=0).to(dev)
    if policy == "from_eoi":
        if ids is None or not eoi_ids:
            raise InputError("positions='from_eoi' needs token ids and the end-of-instruction tokens (a chat "
                             "template)")
        return eoi_start(ids, eoi_ids).to(dev)
    raise InputError(f"unknown steering position policy {policy!r}; valid: {', '.join(STEER_POSITIONS)}")


class Boundary:
    """Which tokens of each forward an edit applies to: real tokens at or after a per-row start.

    With a ``policy``, the starts are computed per row (:func:`prompt_starts`) at each new prompt - a forward with
    an empty KV cache, unless it extends the previous prompt's ids (generation with ``use_cache=False``) - and
    every later token of that generation is included. With explicit ``starts`` (absolute positions, one per row,
    e.g. where a shared prefix ends), nothing is read from the prompt. :meth:`mask` computes the ``[batch, seq]``
    mask once per forward and shares it between every edit holding this boundary."""

    def __init__(self, policy: str = "all", eoi_ids: Sequence[int] | None = None, *,
                 starts: Sequence[int] | torch.Tensor | None = None):
        self.policy = check_steer_positions(policy) if starts is None else "starts"
        self.eoi_ids = list(eoi_ids) if eoi_ids is not None else None
        self.start: torch.Tensor | None = (torch.as_tensor(starts, dtype=torch.long).reshape(-1)
                                           if starts is not None else None)
        self._prompt: torch.Tensor | None = None
        if self.policy == "from_eoi" and not self.eoi_ids:
            raise InputError("positions='from_eoi' needs the end-of-instruction token ids (a chat template)")

    @property
    def everywhere(self) -> bool:
        """Every real token (no per-row start)."""
        return self.policy == "all"

    def _continues(self, state: ForwardState) -> bool:
        p, ids = self._prompt, state.input_ids
        return (p is not None and ids is not None and ids.shape[0] == p.shape[0] and ids.shape[1] > p.shape[1]
                and bool((ids[:, :p.shape[1]] == p.to(ids.device)).all()))

    def _update(self, state: ForwardState) -> None:
        if self.policy in ("starts", "all"):
            return
        if state.past_len != 0 or self._continues(state):
            if self.start is None:
                raise InputError(f"positions={self.policy!r} needs to see the prompt: enter the steering context "
                                 "before the first forward pass of a generation")
            return
        self._prompt = state.input_ids
        self.start = prompt_starts(self.policy, state.input_ids, state.mask, self.eoi_ids)

    def mask(self, state: ForwardState) -> torch.Tensor:
        """``[batch, seq]`` bool: the real tokens of this forward the edit applies to (cached per forward)."""
        key = ("boundary", id(self))
        m = state.cache.get(key)
        if m is None:
            self._update(state)
            if self.start is None:
                m = state.mask
            else:
                start = self.start.to(state.mask.device)
                if start.shape[0] != state.batch:
                    raise InputError(f"the edit has starts for {start.shape[0]} rows but the forward has "
                                     f"{state.batch}")
                pos = state.past_len + torch.arange(state.seq, device=state.mask.device)
                m = (pos[None, :] >= start[:, None]) & state.mask
            state.cache[key] = m
        return m


def masked(x: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``new`` where ``mask`` ``[batch, seq]`` is true, ``x`` elsewhere (any trailing dimensions)."""
    m = mask.to(x.device).view(*mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(m, new.to(x.dtype), x)
