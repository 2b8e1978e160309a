"""Adding vectors to activations during forward passes and ``generate()``: steering and activation mixing.

>>> with model.edit(Steer(vec, 4.0, layers="12", positions="generated")):
...     model.generate_text(prompts, max_new_tokens=40)
>>> with steer(model, vec, multiplier=4.0, layers=[12], positions="generated"):   # the same, as one call
...     ...

Position policies (named in outputs and metadata, see docs/steering.md):

- ``"all"``: every real (non-pad) token of every forward pass, prompt included (llama.cpp's behaviour);
- ``"generated"``: only tokens after the prompt, i.e. at absolute positions >= the prompt length (the
  prompt's own forward is left untouched; with a KV cache every later step is one generated token);
- ``"from_eoi"``: from the first end-of-instruction token of each row onwards (CAA: the chat template's
  suffix after the user message, e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``), then every generated token.
  It is the same boundary the reading policy ``"eoi"`` reads (:func:`actlab.hooks.positions.eoi_start`);
- ``"auto"`` (the default everywhere: Python, CLI, sweeps): per row, ``from_eoi`` where the row holds the chat
  template's end-of-instruction tokens (the CAA protocol: the user's instruction itself is not steered), ``all``
  in the others (plain prompts, a model without a chat template);
- ``"last:K"``: from the prompt's K-th last token on.

Prompt-relative thresholds are taken from the first forward pass with an empty KV cache (one per
``generate()`` call), per row, from the attention mask and the input ids, so left padding is handled
(:class:`actlab.hooks.positions.Boundary`, the one definition every steering path uses).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.additions import Add
from ..hooks.interventions import Edits, point_names
from ..hooks.points import HookPoint, layer_list
from ..hooks.positions import DEFAULT_STEER_POSITIONS, STEER_POSITIONS, check_steer_positions
from .vector import SteeringVector

if TYPE_CHECKING:
    from ..models.model import Model

APPLY_POLICIES = STEER_POSITIONS


def default_eoi_ids(model: Model) -> list[int]:
    """Token ids of the chat template's end-of-instruction suffix, as tokenized at the end of a prompt."""
    from .prompts import eoi_token_ids

    if getattr(model.tokenizer, "chat_template", None) is None:
        raise InputError(f"positions='from_eoi' needs a chat template; {model.name!r} has none")
    return eoi_token_ids(model)


def eoi_for(target: Any, positions: str, eoi_ids: Sequence[int] | None = None) -> list[int] | None:
    """The end-of-instruction ids a policy needs: required for ``from_eoi``; for ``auto`` when the model has a
    chat template (without one, ``auto`` steers every token)."""
    if eoi_ids is not None:
        return list(eoi_ids)
    if positions == "from_eoi":
        return default_eoi_ids(target)
    if positions == "auto" and getattr(getattr(target, "tokenizer", None), "chat_template", None) is not None:
        return default_eoi_ids(target)
    return None


class Steer(Add):
    """Add ``multiplier x vector`` of a :class:`SteeringVector` at ``layers`` (default: every layer it has;
    any layer grammar: ``"10-12"``, ``[10, 12]``...) at its hook-point kind. ``multiplier`` may be a sequence,
    one per row of the batch (a cells axis: several multipliers in one forward)."""

    kind = "steer"

    def __init__(self, vector: SteeringVector, multiplier: float | Sequence[float] = 1.0, *,
                 layers: str | int | Iterable[int] | None = None, positions: str = DEFAULT_STEER_POSITIONS,
                 eoi_ids: Sequence[int] | None = None):
        self.vector = vector
        self.layers_spec = layers if layers is None or isinstance(layers, (str, int)) else list(layers)
        if isinstance(self.layers_spec, list) and not self.layers_spec:
            raise InputError("the layer list is empty; give at least one layer to steer")
        super().__init__({HookPoint(k, vector.point): v for k, v in vector.vectors.items()}, multiplier,
                         positions=positions, eoi_ids=eoi_ids, source=vector.provenance())
        self._layers: list[int] | None = None

    def _resolved(self, target: Any) -> list[tuple[HookPoint, torch.Tensor]]:
        self.vector.check_fits(target)
        layers = self.vector.layers if self.layers_spec is None else layer_list(self.layers_spec, target.n_layers)
        self._layers = layers
        return [(HookPoint(i, self.vector.point), self.vector[i]) for i in layers]

    def edits(self, target: Any) -> list:
        self.eoi_ids = eoi_for(target, self.positions, self.eoi_ids)
        return super().edits(target)

    def record(self) -> dict[str, Any]:
        layers = self._layers if self._layers is not None else (self.layers_spec or self.vector.layers)
        pts = point_names(HookPoint(i, self.vector.point) for i in layers) if isinstance(layers, list) else \
            [f"blocks.{layers}.{self.vector.point}"]
        return {"kind": self.kind, "points": pts, "layers": layers, "multiplier": self.multiplier,
                "positions": self.positions, **self.source}


class Mix(Add):
    """Activation mixing (the decoding study's patching of one prompt's activation into another run): record
    ``source_prompt``'s activation at ``point`` at token ``position`` (an index over its real tokens, default
    the last, as in the study; ``"mean"`` averages every token) when applied, and add ``scale`` times it."""

    kind = "mix"

    def __init__(self, source_prompt: str, point: HookPoint | str, scale: float = 1.0, *,
                 position: int | str = -1, positions: str = DEFAULT_STEER_POSITIONS, chat: bool = False,
                 eoi_ids: Sequence[int] | None = None):
        if not isinstance(source_prompt, str) or not source_prompt.strip():
            raise InputError("the source prompt of activation mixing is empty")
        if not (isinstance(position, int) and not isinstance(position, bool)) and position != "mean":
            raise InputError(f"mixing position must be a token index or 'mean', not {position!r}")
        self.source_prompt, self.point, self.position, self.chat = source_prompt, point, position, chat
        self._eoi = eoi_ids
        super().__init__({point: torch.zeros(1)}, scale, positions=positions, eoi_ids=eoi_ids,
                         source={"source_prompt": source_prompt, "position": position, "chat": chat})

    def edits(self, target: Any) -> list:
        vec = record_activation(target, self.source_prompt, self.point, reduce=self.position, chat=self.chat)
        self.vectors = {self.point: vec}
        self.eoi_ids = eoi_for(target, self.positions, self._eoi)
        return super().edits(target)

    def record(self) -> dict[str, Any]:
        rec = super().record()
        rec["kind"] = self.kind
        return rec


def steer(model: Model, vectors: SteeringVector | Sequence[SteeringVector], multiplier: float | Sequence[float] = 1.0,
          *, layers: str | int | Iterable[int] | None = None, positions: str = DEFAULT_STEER_POSITIONS) -> Edits:
    """Add ``multiplier x vector`` at ``layers`` (default: every layer the vector has) of one or more vectors;
    applied at once, as a context manager or a handle. ``model.edit(Steer(...), ...)`` composes with others."""
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    mults = [multiplier] * len(vecs) if isinstance(multiplier, (int, float)) else list(multiplier)
    if len(mults) != len(vecs):
        raise InputError(f"{len(vecs)} vectors but {len(mults)} multipliers")
    if not vecs:
        raise InputError("nothing to steer with: no vector given")
    return model.edit(*[Steer(v, m, layers=layers, positions=positions) for v, m in zip(vecs, mults, strict=True)])


def add_vectors(model: Model, deltas: dict[str, torch.Tensor], multiplier: float = 1.0, *,
                positions: str = DEFAULT_STEER_POSITIONS) -> Edits:
    """Add raw tensors at named hook points: ``{"blocks.5.resid_post": v}`` (a kind names every layer)."""
    vectors: dict[HookPoint | str, torch.Tensor] = {}
    for name, v in deltas.items():
        for p in model.parse_points(name):
            vectors[p] = v.detach().float().cpu().reshape(-1)
    return model.edit(Add(vectors, multiplier, positions=positions,
                          eoi_ids=eoi_for(model, check_steer_positions(positions))))


@torch.no_grad()
def record_activation(model: Model, prompt: str, point: str | HookPoint, *, reduce: str | int = "mean",
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
    if isinstance(reduce, int) and not isinstance(reduce, bool):
        return model.activations(batch, pts, positions=reduce, dtype=torch.float32)[pts[0].name][0]
    raise InputError(f"reduce must be 'mean' or a token index, not {reduce!r}")


def mix(model: Model, source_prompt: str, point: str, scale: float = 1.0, *, position: int | str = -1,
        positions: str = DEFAULT_STEER_POSITIONS, chat: bool = False) -> Edits:
    """Record ``source_prompt``'s activation at ``point`` at token ``position`` (default the last, as in the
    decoding study; ``"mean"`` averages its tokens) and add ``scale`` times it to later runs (applied at once)."""
    return model.edit(Mix(source_prompt, point, scale, position=position, positions=positions, chat=chat))
