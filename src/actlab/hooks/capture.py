"""Capturing activations at named hook points, at chosen token positions.

>>> with model.capture(["blocks.3.resid_post", "blocks.3.attn_out"], positions="last") as acts:
...     model(**batch)
>>> acts["blocks.3.resid_post"].shape          # [batch, d_model], on CPU

Readers select positions on the model's device, then move only what is kept to ``device`` in ``dtype``.

With ``grad=True`` the forward must run with gradients enabled; call ``backward()`` on your metric inside the
``with`` block and ``acts.grads[point]`` holds the gradient of the metric with respect to each captured
activation (same shape, same positions, same ``device``/``dtype`` as ``acts[point]``)::

    with model.capture("blocks.3.attn.z,resid_post", grad=True) as acts:
        logits = model(**batch).logits
        metric(logits).backward()
    acts.grads["blocks.3.attn.z"]
With ``stop=True`` the forward pass is aborted as soon as every requested point has been read (the
context swallows the internal :class:`StopForward`), so asking for an early layer costs only the layers
up to it. Several forward calls inside one context are concatenated along the batch dimension.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .core import ForwardState, HookSession, StopForward
from .points import HookPoint, parse_points
from .positions import PositionSpec, align_keys, check_positions, lengths, select
from .sites import HookTarget, attach, read_plan


class Activations(dict):
    """Hook point -> tensor, keyed by the point's name (the string form files use); a :class:`HookPoint` works
    as a key too. ``lengths`` holds per-row real-token counts (for ``positions='all'``)."""

    def __init__(self, *args: Any, positions: Any = None, lengths: torch.Tensor | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.positions = positions
        self.lengths = lengths
        self.grads: dict[str, torch.Tensor] = {}  # filled with grad=True after backward()
        self.missing: dict[str, str] = {}  # requested points that hold nothing, with why

    @staticmethod
    def _key(k: Any) -> Any:
        return k.name if isinstance(k, HookPoint) else k

    def __getitem__(self, k: Any) -> torch.Tensor:
        key = self._key(k)
        if key in self.missing and not super().__contains__(key):
            raise KeyError(f"{key} was captured but holds nothing: {self.missing[key]}")
        return super().__getitem__(key)

    def __contains__(self, k: object) -> bool:
        return super().__contains__(self._key(k))

    def get(self, k: Any, default: Any = None) -> Any:
        return super().get(self._key(k), default)

    def stack(self, names: Iterable[str | HookPoint] | None = None) -> torch.Tensor:
        """Stack several points (e.g. one kind over layers) into ``[n_points, ...]``."""
        names = list(self.keys()) if names is None else list(names)
        return torch.stack([self[n] for n in names])


def _cat_padded(parts: list[torch.Tensor], pad_dim: bool) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    if pad_dim:
        width = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in parts]
    return torch.cat(parts, dim=0)


class Capture:
    """Context manager recording hook points of a model (any :class:`~actlab.hooks.sites.HookTarget`, e.g.
    :class:`~actlab.Model`; see module docstring). ``points`` may be a spec or already-parsed points."""

    def __init__(
        self,
        model: HookTarget,
        points: str | HookPoint | Iterable[str | HookPoint],
        positions: PositionSpec = "all",
        *,
        dtype: torch.dtype | None = torch.float32,
        device: str | torch.device = "cpu",
        stop: bool = False,
        detach: bool = True,
        grad: bool = False,
    ):
        self.model = model
        self.points: list[HookPoint] = parse_points(points, model.n_layers)
        self.positions = check_positions(positions)
        self.dtype, self.device, self.stop, self.detach = dtype, torch.device(device), stop, detach
        self.grad = grad
        if grad and stop:
            from ..errors import InputError

            raise InputError("grad=True needs the whole forward (the metric reads the output): drop stop=True")
        self._calls: list[dict[str, torch.Tensor]] = []
        self._lengths: list[torch.Tensor] = []
        self._state_id: int | None = None
        self._session: HookSession | None = None
        self.result = Activations(positions=self.positions)

    # -- per-forward bookkeeping -------------------------------------------------------------------
    def _current(self, state: ForwardState | None) -> dict[str, torch.Tensor]:
        sid = id(state)
        if sid != self._state_id or not self._calls:
            self._state_id = sid
            self._calls.append({})
            if state is not None and self.positions == "all":
                self._lengths.append(lengths(state).cpu())
        return self._calls[-1]

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        if self.detach:
            x = x.detach()
        out = x.to(device=self.device, dtype=self.dtype or x.dtype)
        return out

    def _reader(self, name: str, derive: tuple[str, str] | None = None):
        keys = name.endswith(".attn.pattern")  # a second token axis (keys), aligned like the first
        def read(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor | None:
            store = self._current(state)
            tracked = None
            if self.grad and derive is None:
                tracked = x = self._track(name, x, state, store)
            sel = select(x, state, self.positions)
            if keys:
                sel = align_keys(sel, state)
            if derive is None:
                store[name] = self._keep(sel)
            else:  # a composite kind without a module of its own (resid_mid of a parallel block): base + part
                raw = store.setdefault("\0raw", {})
                raw[derive[1]] = sel
                if len(raw.keys() & {f"{name}\0base", f"{name}\0part"}) == 2:
                    store[name] = self._keep(raw.pop(f"{name}\0base") + raw.pop(f"{name}\0part"))
            if self.stop and all(p.name in store for p in self.points):
                raise StopForward
            return tracked  # with grad=True the capture passes on a copy whose gradient it records

        return read

    def _track(self, name: str, x: torch.Tensor, state: ForwardState | None, store: dict[str, Any]) -> torch.Tensor:
        if not x.requires_grad:
            from ..errors import InputError

            raise InputError(f"capture(grad=True): {name} does not require grad; run the forward with gradients "
                             "enabled (not under torch.no_grad() or inference_mode())")
        y = x.clone()  # flows on through the model, so its gradient is the metric's gradient at this point
        grads = store.setdefault("\0grads", {})
        keys = name.endswith(".attn.pattern")

        def keep(g: torch.Tensor) -> None:
            sel = select(g, state, self.positions)
            grads[name] = (align_keys(sel, state) if keys else sel).detach().to(
                device=self.device, dtype=self.dtype or g.dtype)

        y.register_hook(keep)
        return y

    # -- context protocol --------------------------------------------------------------------------
    def __enter__(self) -> Activations:
        session = HookSession(self.model.base, getattr(self.model, "hf", None))
        try:
            for p in self.points:
                plan = read_plan(self.model, p)
                if plan.site is not None:
                    attach(session, plan.site, self._reader(p.name), write=self.grad, order=p.order)
                    continue
                assert plan.base is not None and plan.part is not None
                if self.grad:
                    from ..errors import InputError

                    raise InputError(f"capture(grad=True): {p.name} is a sum with no module of its own in this model "
                                     f"(parallel block); take the gradients at {plan.base.name} and "
                                     f"blocks.{p.layer}.attn_out instead")
                base = read_plan(self.model, plan.base).site
                assert base is not None
                session.add(base.module, base.where, self._reader(p.name, (p.name, f"{p.name}\0base")),
                            write=False, order=p.order)
                attach(session, plan.part, self._reader(p.name, (p.name, f"{p.name}\0part")), write=False,
                       order=p.order)  # through attach: a scaled branch is seen as the stream receives it
        except BaseException:
            session.close()
            raise
        self._session = session
        return self.result

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if self._session is not None:
            self._session.close()
            self._session = None
        self._finish()
        return exc_type is not None and issubclass(exc_type, StopForward)

    def _finish(self) -> None:
        pad_dim = self.positions == "all"
        for p in self.points:
            parts = [c[p.name] for c in self._calls if p.name in c]
            if parts:
                self.result[p.name] = _cat_padded(parts, pad_dim)
            elif not self._calls:
                self.result.missing[p.name] = "no forward ran inside the capture"
            else:
                self.result.missing[p.name] = (f"{len(self._calls)} forward call(s) reached other points but not "
                                               "this one (its module did not run, or the forward stopped first)")
            if self.grad:
                gparts = [c.get("\0grads", {}).get(p.name) for c in self._calls if p.name in c]
                if gparts and all(g is not None for g in gparts):
                    self.result.grads[p.name] = _cat_padded(gparts, pad_dim)
        if self._lengths:
            self.result.lengths = torch.cat(self._lengths)
