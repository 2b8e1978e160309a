"""Adding vectors to activations during forward passes and ``generate()``.

>>> with steer(model, vec, multiplier=4.0, layers=[12], positions="generated"):
...     model.generate_text(prompts, max_new_tokens=40)

Position policies (named in outputs and metadata, see docs/steering.md):

- ``"all"``: every real (non-pad) token of every forward pass, prompt included (llama.cpp's behaviour);
- ``"generated"``: only tokens after the prompt, i.e. at absolute positions >= the prompt length (the
  prompt's own forward is left untouched; with a KV cache every later step is one generated token);
- ``"from_eoi"``: from the first end-of-instruction token of each row onwards (CAA: the chat template's
  suffix after the user message, e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``), then every generated token.

Prompt-relative thresholds are taken from the first forward pass with an empty KV cache (one per
``generate()`` call), per row, from the attention mask and the input ids, so left padding is handled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.core import ForwardState, HookSession
from ..hooks.points import HookPoint
from .vector import SteeringVector

if TYPE_CHECKING:
    from ..models.model import Model

APPLY_POLICIES = ("all", "generated", "from_eoi")


@dataclass
class Addition:
    """Add ``multiplier * vector`` at one hook point."""

    point: HookPoint
    vector: torch.Tensor
    multiplier: float = 1.0


class _Thresholds:
    """Per-row absolute start positions for 'generated' / 'from_eoi', refreshed at each new prompt.

    A forward with an empty KV cache is a new prompt unless it extends the previous prompt's ids (as in
    generation with ``use_cache=False``, where every step re-reads the whole sequence)."""

    def __init__(self, policy: str, eoi_ids: list[int] | None):
        self.policy, self.eoi_ids = policy, eoi_ids
        self.start: torch.Tensor | None = None
        self.prompt: torch.Tensor | None = None

    def _continues(self, state: ForwardState) -> bool:
        p, ids = self.prompt, state.input_ids
        return (p is not None and ids is not None and ids.shape[0] == p.shape[0] and ids.shape[1] > p.shape[1]
                and bool((ids[:, :p.shape[1]] == p.to(ids.device)).all()))

    def update(self, state: ForwardState) -> None:
        if state.past_len != 0 or self._continues(state):
            if self.start is None:
                raise InputError(f"positions={self.policy!r} needs to see the prompt: enter the steering context "
                                 "before the first forward pass of a generation")
            return
        self.prompt = state.input_ids
        if self.policy == "generated":
            self.start = torch.full((state.batch,), state.seq, dtype=torch.long, device=state.mask.device)
            return
        ids = state.input_ids
        if ids is None or not self.eoi_ids:
            raise InputError("positions='from_eoi' needs token ids and a chat template")
        k = len(self.eoi_ids)
        pattern = torch.tensor(self.eoi_ids, device=ids.device)
        windows = ids.unfold(1, k, 1) if ids.shape[1] >= k else ids.new_empty(ids.shape[0], 0, k)
        hit = (windows == pattern).all(-1)  # [B, T-k+1]
        if not bool(hit.any(1).all()):
            row = int((~hit.any(1)).nonzero()[0])
            raise InputError(f"positions='from_eoi': row {row} does not contain the chat template's "
                             "end-of-instruction tokens; build prompts with the chat template or use 'all'")
        last = hit.shape[1] - 1 - torch.argmax(torch.flip(hit, dims=[1]).to(torch.int8), dim=1)
        self.start = last.to(state.mask.device)

    def mask(self, state: ForwardState) -> torch.Tensor:
        assert self.start is not None
        pos = state.past_len + torch.arange(state.seq, device=state.mask.device)
        return (pos[None, :] >= self.start[:, None]) & state.mask


class Steering:
    """Context manager adding vectors at hook points; also usable as a handle (``.remove()``)."""

    def __init__(self, model: Model, additions: Sequence[Addition], *, positions: str = "all",
                 eoi_ids: list[int] | None = None):
        if positions not in APPLY_POLICIES:
            raise InputError(f"unknown steering position policy {positions!r}; valid: {', '.join(APPLY_POLICIES)}")
        if not additions:
            raise InputError("nothing to steer with: no layer or vector given")
        self.model, self.positions = model, positions
        if positions == "from_eoi" and eoi_ids is None:
            eoi_ids = default_eoi_ids(model)
        self._thresholds = _Thresholds(positions, eoi_ids) if positions != "all" else None
        self._deltas: dict[tuple[int, str, tuple[int, int]], tuple[Any, str, tuple[int, int], torch.Tensor]] = {}
        for a in additions:
            module, where = model.write_site(a.point)
            width = model.d_mlp if a.point.kind == "mlp_hidden" else model.d_model
            if a.vector.shape != (width,):
                raise InputError(f"vector for {a.point.name} has shape {tuple(a.vector.shape)}, expected ({width},)")
            key = (id(module), where, a.point.order)
            delta = (a.multiplier * a.vector.double()).to(torch.float32)
            if key in self._deltas:
                delta = self._deltas[key][3] + delta
            self._deltas[key] = (module, where, a.point.order, delta)
        self.session: HookSession | None = None
        self._install()

    def _install(self) -> None:
        session = HookSession(self.model.base)
        try:
            for module, where, order, delta in self._deltas.values():
                param = next(module.parameters(), None)
                dev = param.device if param is not None else self.model.device
                dt = param.dtype if param is not None and param.is_floating_point() else self.model.dtype
                session.add(module, where, self._handler(delta.to(device=dev, dtype=dt)), write=True, order=order)
        except BaseException:
            session.close()
            raise
        self.session = session

    def _handler(self, delta: torch.Tensor):
        thresholds = self._thresholds

        def add(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
            d = delta if delta.device == x.device else delta.to(x.device)
            if d.dtype != x.dtype:
                d = d.to(x.dtype)
            if state is None:
                return x + d
            if thresholds is None:
                if not state.padded:
                    return x + d
                return x + state.mask.to(x.device)[..., None].to(x.dtype) * d
            key = ("steer_mask", id(thresholds))
            if key not in state.cache:  # the first handler of this forward computes it
                thresholds.update(state)
                state.cache[key] = thresholds.mask(state)
            m = state.cache[key].to(x.device)
            return x + m[..., None].to(x.dtype) * d

        return add

    def remove(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def default_eoi_ids(model: Model) -> list[int]:
    """Token ids of the chat template's end-of-instruction suffix."""
    from .prompts import PromptStyle, eoi_suffix

    if getattr(model.tokenizer, "chat_template", None) is None:
        raise InputError(f"positions='from_eoi' needs a chat template; {model.name!r} has none")
    suffix = eoi_suffix(model, PromptStyle(chat=True))
    ids = model.tokenizer(suffix, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError("the chat template has an empty end-of-instruction suffix")
    return list(ids)


def steer(model: Model, vectors: SteeringVector | Sequence[SteeringVector], multiplier: float | Sequence[float] = 1.0,
          *, layers: Iterable[int] | None = None, positions: str = "all") -> Steering:
    """Add ``multiplier x vector`` at ``layers`` (default: every layer the vector has) of one or more vectors."""
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    mults = [multiplier] * len(vecs) if isinstance(multiplier, (int, float)) else list(multiplier)
    if len(mults) != len(vecs):
        raise InputError(f"{len(vecs)} vectors but {len(mults)} multipliers")
    additions = []
    wanted = None if layers is None else list(layers)
    if wanted is not None and not wanted:
        raise InputError("the layer list is empty; give at least one layer to steer")
    for v, m in zip(vecs, mults, strict=True):
        v.check_fits(model)
        for layer in wanted if wanted is not None else v.layers:
            additions.append(Addition(HookPoint(layer, v.point), v[layer], float(m)))
    return Steering(model, additions, positions=positions)


def add_vectors(model: Model, deltas: dict[str, torch.Tensor], multiplier: float = 1.0, *, positions: str = "all"
                ) -> Steering:
    """Add raw tensors at named hook points: ``{"blocks.5.resid_post": v}``."""
    additions = []
    for name, v in deltas.items():
        for p in model.parse_points(name):
            additions.append(Addition(p, v.detach().float().cpu().reshape(-1), multiplier))
    return Steering(model, additions, positions=positions)


@torch.no_grad()
def record_activation(model: Model, prompt: str, point: str, *, reduce: str | int = "mean",
                      chat: bool = False) -> torch.Tensor:
    """One prompt's activation at a hook point: the mean over its tokens (``reduce='mean'``) or the token
    at an index (``reduce=-1`` for the last), as a vector to mix into another run."""
    pts = model.parse_points(point)
    if len(pts) != 1:
        raise InputError(f"activation mixing reads one hook point, {point!r} names {len(pts)}")
    text = model.chat_prompt(prompt) if chat else prompt
    batch = model.tokenize(text, add_special_tokens=not chat)
    if reduce == "mean":
        acts = model.activations(batch, pts, positions="tokens", dtype=torch.float64)
        return acts[pts[0].name].mean(0).float()
    if isinstance(reduce, int):
        return model.activations(batch, pts, positions=reduce, dtype=torch.float32)[pts[0].name][0]
    raise InputError(f"reduce must be 'mean' or a token index, not {reduce!r}")


def mix(model: Model, source_prompt: str, point: str, scale: float = 1.0, *, reduce: str | int = "mean",
        positions: str = "all", chat: bool = False) -> Steering:
    """Record ``source_prompt``'s activation at ``point`` and add ``scale`` times it to later runs."""
    vec = record_activation(model, source_prompt, point, reduce=reduce, chat=chat)
    return add_vectors(model, {point: vec}, scale, positions=positions)
