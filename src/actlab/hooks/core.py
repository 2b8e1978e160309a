"""Context-managed hooks on native modules: one dispatcher per (module, input|output) site.

Every actlab feature that reads or writes activations (capture, steering, ablation, SAE splicing) adds
*handlers* to sites through a :class:`HookSession`. A site gets one torch hook however many handlers it
has. Several hook points can share a site (``embed`` and ``blocks.0.resid_pre`` are both the first
block's input; ``resid_mid`` is written through ``attn_out``'s output), so every handler carries the
``order`` of its hook point along the forward pass: handlers run in that order and, within one point,
writers (in the order they were added) before readers. A capture thus sees what the model really
computed at its point, including edits made at that point and earlier, and none made later. A session
removes its handlers on exit, also after an exception, and a site's torch hook goes away with its last
handler.

Handlers see activations as ``[batch, seq, ...]`` tensors even where a model flattens them (OPT's MLP
works on ``[batch*seq, d]``), together with the :class:`ForwardState` of the current forward pass: the
attention mask of the tokens being processed and how many tokens the KV cache already holds.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Handler = Callable[[torch.Tensor, "ForwardState | None"], "torch.Tensor | None"]
Order = tuple[int, int]


class StopForward(Exception):
    """Raised by a capture once it has everything it needs; caught by the capture's context."""


@dataclass
class ForwardState:
    """What handlers need to know about the forward pass in flight.

    ``mask`` is the attention mask of the tokens in this call (``[batch, seq]``, bool); ``past_len`` is the
    number of tokens already in the KV cache (so the absolute index of token ``t`` is ``past_len + t``).
    """

    batch: int
    seq: int
    past_len: int
    mask: torch.Tensor
    input_ids: torch.Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def padded(self) -> bool:
        if "padded" not in self.cache:
            self.cache["padded"] = not bool(self.mask.all())
        return self.cache["padded"]


class _StateTracker:
    """Records a ForwardState on every call of a model's base module (the module owning the layers)."""

    def __init__(self, base: nn.Module):
        self.state: ForwardState | None = None
        self.users = 0
        try:
            self._sig: inspect.Signature | None = inspect.signature(base.forward)
        except (TypeError, ValueError):
            self._sig = None
        self._handle = base.register_forward_pre_hook(self._pre, with_kwargs=True)
        self._root_handle: Any = None
        self._root_ids: torch.Tensor | None = None
        self._root_mask: torch.Tensor | None = None

    def watch_root(self, root: nn.Module | None, base: nn.Module) -> None:
        """Also read the token ids and the 2-D attention mask the whole model was called with: a multimodal
        wrapper hands its language model ``inputs_embeds`` only (image features merged in) and, some of them
        (Gemma-3/4), masks it already turned into 4-D ones - so the base never sees the ids ``from_eoi``
        positions look for, nor which tokens are padding (``positions='last'`` would read a right-padded row's
        padding)."""
        if root is None or root is base or self._root_handle is not None:
            return

        def root_pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            self._root_ids = ids if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None
            am = kwargs.get("attention_mask")
            self._root_mask = am if isinstance(am, torch.Tensor) and am.dim() == 2 else None

        self._root_handle = root.register_forward_pre_hook(root_pre, with_kwargs=True)

    def _arg(self, args: tuple, kwargs: dict, name: str) -> Any:
        if name in kwargs:
            return kwargs[name]
        if self._sig is not None and args:
            try:
                bound = self._sig.bind_partial(*args)
            except TypeError:
                return None
            return bound.arguments.get(name)
        return None

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = self._arg(args, kwargs, "input_ids")
        emb = self._arg(args, kwargs, "inputs_embeds")
        ref = ids if ids is not None else emb
        if ref is None:
            self.state = None
            return
        batch, seq = int(ref.shape[0]), int(ref.shape[1])
        am = self._arg(args, kwargs, "attention_mask")
        if not (isinstance(am, torch.Tensor) and am.dim() == 2) and self._root_mask is not None:
            am = self._root_mask  # the wrapper's own 2-D mask (it passed the base prepared 4-D masks)
        if isinstance(am, torch.Tensor) and am.dim() == 2 and am.shape[0] == batch and am.shape[1] >= seq:
            mask = am[:, am.shape[1] - seq:].bool()
            past = int(am.shape[1] - seq)
        else:
            mask = torch.ones(batch, seq, dtype=torch.bool, device=ref.device)
            past = 0
            cache = kv_cache(kwargs, lambda name: self._arg(args, kwargs, name))
            if cache is not None:
                past = int(cache.get_seq_length())
        if ids is None and self._root_ids is not None and tuple(self._root_ids.shape) == (batch, seq):
            ids = self._root_ids  # the wrapper's ids, position for position (image tokens are placeholders)
        self.state = ForwardState(batch=batch, seq=seq, past_len=past, mask=mask, input_ids=ids)

    def remove(self) -> None:
        self._handle.remove()
        if self._root_handle is not None:
            self._root_handle.remove()


# transformers renamed the KV-cache argument ``past_key_values`` -> ``cache`` in 5.24; accept every spelling.
CACHE_KWARGS = ("past_key_values", "cache", "past_key_value")


def kv_cache(kwargs: dict[str, Any], lookup: Callable[[str], Any] | None = None) -> Any:
    """The KV cache among a forward's arguments (``None`` when there is none or it is empty of tokens)."""
    for name in CACHE_KWARGS:
        value = lookup(name) if lookup is not None else kwargs.get(name)
        if value is not None and hasattr(value, "get_seq_length"):
            return value
    return None


_TRACKERS: weakref.WeakKeyDictionary[nn.Module, _StateTracker] = weakref.WeakKeyDictionary()


def _acquire_tracker(base: nn.Module, root: nn.Module | None = None) -> _StateTracker:
    tr = _TRACKERS.get(base)
    if tr is None:
        tr = _StateTracker(base)
        _TRACKERS[base] = tr
    tr.watch_root(root, base)
    tr.users += 1
    return tr


def _release_tracker(base: nn.Module) -> None:
    tr = _TRACKERS.get(base)
    if tr is None:
        return
    tr.users -= 1
    if tr.users <= 0:
        tr.remove()
        del _TRACKERS[base]


_INPUT_KWARGS = ("hidden_states", "input", "x")


def _to_3d(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
    if x.dim() == 2 and state is not None and x.shape[0] == state.batch * state.seq:
        return x.view(state.batch, state.seq, x.shape[-1])
    return x


class _Dispatcher:
    """The single torch hook of one site; runs its handlers in order."""

    def __init__(self, module: nn.Module, where: str, tracker: _StateTracker):
        self.module, self.where, self.tracker = module, where, tracker
        # (order, 0 for writers | 1 for readers, sequence number, handler), kept sorted
        self.plan: list[tuple[Order, int, int, Handler]] = []
        self._seq = 0
        if where == "in":
            self.handle = module.register_forward_pre_hook(self._pre, with_kwargs=True)
        elif where == "out":
            self.handle = module.register_forward_hook(self._post, with_kwargs=True)
        else:  # an attention site: the module's attention call is routed through actlab while it has handlers
            self.handle = _AttentionHandle(module, where)

    def _run(self, x: torch.Tensor) -> torch.Tensor | None:
        state = self.tracker.state
        x3 = _to_3d(x, state)
        changed = False
        for _, kind, _, fn in self.plan:
            out = fn(x3, state)
            if kind == 0 and out is not None:
                x3, changed = out, True
        if not changed:
            return None
        return x3.reshape(x.shape) if x3.shape != x.shape else x3

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args and isinstance(args[0], torch.Tensor):
            new = self._run(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        for key in _INPUT_KWARGS:
            if isinstance(kwargs.get(key), torch.Tensor):
                new = self._run(kwargs[key])
                return None if new is None else (args, {**kwargs, key: new})
        raise RuntimeError(f"cannot find the input tensor of {type(module).__name__} to hook")

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return self._run(output)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            new = self._run(output[0])
            if new is None:
                return None
            return type(output)([new, *output[1:]]) if isinstance(output, list) else (new, *output[1:])
        raise RuntimeError(f"cannot find the output tensor of {type(module).__name__} ({type(output).__name__})")

    def run_site(self, x: torch.Tensor) -> torch.Tensor | None:
        """Run the handlers on a tensor the attention routing hands over (attention sites)."""
        return self._run(x)

    def insert(self, fn: Handler, write: bool, order: Order) -> None:
        self._seq += 1
        self.plan.append((order, 0 if write else 1, self._seq, fn))
        self.plan.sort(key=lambda h: h[:3])

    def discard(self, fn: Handler) -> None:
        for k in range(len(self.plan) - 1, -1, -1):
            if self.plan[k][3] is fn:
                del self.plan[k]
                return

    def empty(self) -> bool:
        return not self.plan


_DISPATCHERS: weakref.WeakKeyDictionary[nn.Module, dict[str, _Dispatcher]] = weakref.WeakKeyDictionary()


class _AttentionHandle:
    """Stands for a torch hook at an attention site: routes the module while any attention site has handlers."""

    def __init__(self, module: nn.Module, where: str):
        from .attention import _ROUTES, Routing

        self.module, self.where = module, where
        if module not in _ROUTES:
            Routing(module, run=lambda site, x: _attention_run(module, site, x),
                    wants=lambda site: bool(_DISPATCHERS.get(module, {}).get(site)))

    def remove(self) -> None:
        from .attention import _ROUTES, ATTN_SITES

        others = [w for w in _DISPATCHERS.get(self.module, {}) if w in ATTN_SITES and w != self.where]
        route = _ROUTES.get(self.module)
        if not others and route is not None:
            route.remove()


def _attention_run(module: nn.Module, site: str, x: torch.Tensor) -> torch.Tensor | None:
    disp = _DISPATCHERS.get(module, {}).get(site)
    return None if disp is None else disp.run_site(x)


class HookSession:
    """Adds handlers to sites of one model and removes every one of them on exit.

    ``base`` is the module owning the decoder layers; its inputs give each forward's :class:`ForwardState`
    (``root``, the whole model, gives the token ids when a multimodal wrapper hands the base embeddings only).
    Use as a context manager, or call :meth:`close` yourself (a handle-returning variant for long-lived use).
    """

    def __init__(self, base: nn.Module, root: nn.Module | None = None):
        self.base, self.root = base, root
        self._added: list[tuple[_Dispatcher, Handler]] = []
        self._tracker: _StateTracker | None = None

    @property
    def state(self) -> ForwardState | None:
        return self._tracker.state if self._tracker is not None else None

    def add(self, module: nn.Module, where: str, fn: Handler, *, write: bool, order: Order = (0, 0)) -> None:
        """Run ``fn`` on ``module``'s input (``where='in'``) or output (``'out'``) at every forward.

        ``order`` is the hook point's :attr:`~actlab.hooks.points.HookPoint.order`; it only matters where
        points share a site (see the module docstring).
        """
        from .attention import ATTN_SITES

        if where not in ("in", "out", *ATTN_SITES):
            raise ValueError(f"where must be 'in', 'out' or an attention site {ATTN_SITES}, not {where!r}")
        if self._tracker is None:
            self._tracker = _acquire_tracker(self.base, self.root)
        sites = _DISPATCHERS.setdefault(module, {})
        disp = sites.get(where)
        if disp is None:
            disp = _Dispatcher(module, where, self._tracker)
            sites[where] = disp
        disp.insert(fn, write, order)
        self._added.append((disp, fn))

    def close(self) -> None:
        """Remove every handler this session added (idempotent)."""
        while self._added:
            disp, fn = self._added.pop()
            disp.discard(fn)
            if disp.empty():
                disp.handle.remove()
                sites = _DISPATCHERS.get(disp.module)
                if sites is not None and sites.get(disp.where) is disp:
                    del sites[disp.where]
                    if not sites:
                        del _DISPATCHERS[disp.module]
        if self._tracker is not None:
            _release_tracker(self.base)
            self._tracker = None

    def __enter__(self) -> HookSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_hooks(module: nn.Module) -> int:
    """Number of forward (pre-)hooks registered anywhere under ``module`` (0 when nothing is left)."""
    n = 0
    for m in module.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return n
