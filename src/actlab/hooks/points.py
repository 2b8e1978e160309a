"""Hook-point names: ``blocks.{i}.{kind}``, ``embed`` and ``final_norm``.

Users think in names, not module paths. A *spec* may name one point (``blocks.3.resid_post``), a kind
at every layer (``resid_post``), a kind at a layer range (``blocks.2:5.resid_post``, ``blocks.*.attn_out``)
or be a list of any of these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import HookPointError, choices_hint

BLOCK_KINDS: tuple[str, ...] = ("resid_pre", "attn_out", "resid_mid", "mlp_hidden", "mlp_out", "resid_post")
GLOBAL_POINTS: tuple[str, ...] = ("embed", "final_norm")
# Kinds that live in the residual stream's basis (d_model wide); mlp_hidden is d_mlp wide.
RESIDUAL_KINDS: tuple[str, ...] = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")

_BLOCK_RE = re.compile(r"^blocks\.(?P<layer>-?\d+|\*|-?\d*:-?\d*)\.(?P<kind>[a-z_]+)$")


@dataclass(frozen=True, order=True)
class HookPoint:
    """One named place in a model: ``layer`` is None for ``embed`` and ``final_norm``."""

    layer: int | None
    kind: str

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"blocks.{self.layer}.{self.kind}"

    def __str__(self) -> str:
        return self.name

    @property
    def order(self) -> tuple[int, int]:
        """Position along the forward pass (for sorting and early stopping)."""
        if self.kind == "embed":
            return (-1, 0)
        if self.kind == "final_norm":
            return (1 << 30, 0)
        return (self.layer if self.layer is not None else 0, BLOCK_KINDS.index(self.kind))


def all_point_names(n_layers: int) -> list[str]:
    """Every hook point of a model with ``n_layers`` blocks, in forward order."""
    names = ["embed"]
    names += [f"blocks.{i}.{k}" for i in range(n_layers) for k in BLOCK_KINDS]
    names.append("final_norm")
    return names


def _layer_range(token: str, n_layers: int, spec: str) -> list[int]:
    if token == "*":
        return list(range(n_layers))
    if ":" in token:
        lo_s, hi_s = token.split(":", 1)
        lo = int(lo_s) if lo_s else 0
        hi = int(hi_s) if hi_s else n_layers
        lo, hi = (lo + n_layers if lo < 0 else lo), (hi + n_layers if hi < 0 else hi)
        layers = list(range(max(lo, 0), min(hi, n_layers)))
        if not layers:
            raise HookPointError(f"hook point {spec!r} selects no layer; the model has layers 0..{n_layers - 1}")
        return layers
    i = int(token)
    j = i + n_layers if i < 0 else i
    if not 0 <= j < n_layers:
        raise HookPointError(
            f"layer {i} in hook point {spec!r} is out of range; the model has layers 0..{n_layers - 1}"
        )
    return [j]


def parse_points(spec: str | HookPoint | Iterable[str | HookPoint], n_layers: int) -> list[HookPoint]:
    """Expand a hook-point spec into concrete points (deduplicated, in forward order)."""
    items: Sequence[str | HookPoint]
    if isinstance(spec, (str, HookPoint)):
        items = [spec]
    else:
        items = list(spec)
    if not items:
        raise HookPointError("no hook point given." + choices_hint("", [*GLOBAL_POINTS, *BLOCK_KINDS]))
    out: set[HookPoint] = set()
    for item in items:
        if isinstance(item, HookPoint):
            out.update(parse_points(item.name, n_layers))
            continue
        s = item.strip()
        for part in (p.strip() for p in s.split(",")) if "," in s else [s]:
            out.update(_parse_one(part, n_layers))
    return sorted(out, key=lambda p: p.order)


def _parse_one(s: str, n_layers: int) -> list[HookPoint]:
    if s in GLOBAL_POINTS:
        return [HookPoint(None, s)]
    if s in BLOCK_KINDS:
        return [HookPoint(i, s) for i in range(n_layers)]
    m = _BLOCK_RE.match(s)
    if m is None:
        examples = [*GLOBAL_POINTS, *BLOCK_KINDS, *(f"blocks.0.{k}" for k in BLOCK_KINDS)]
        raise HookPointError(f"unknown hook point {s!r}." + choices_hint(s, examples, limit=20))
    kind = m.group("kind")
    if kind not in BLOCK_KINDS:
        raise HookPointError(f"unknown hook-point kind {kind!r} in {s!r}." + choices_hint(kind, BLOCK_KINDS))
    return [HookPoint(i, kind) for i in _layer_range(m.group("layer"), n_layers, s)]
