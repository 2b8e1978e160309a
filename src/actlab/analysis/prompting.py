"""Does prompting add to the residual stream or rotate it? (the control-vectors-vs-prompting hypothesis)

For base prompts ``P`` and an instruction ``I``, read the last token's activation at a layer without the
instruction (``x``, prompt ``P``) and with it (``y``, prompt ``I`` + ``P``). On a training half of the prompts
fit two maps from ``x`` to ``y``:

- **addition**: ``x + mu`` with ``mu = mean(y - x)`` (the mean-difference steering vector);
- **rotation**: rotate ``x`` towards ``d = mu / |mu|`` in the plane of ``x`` and ``d`` by one angle ``theta``,
  keeping ``|x|``; ``theta`` minimises the squared error in closed form: with ``u = x/|x|`` and ``w`` the unit
  part of ``d`` orthogonal to ``u``, ``|y - R(x)|^2 = |y|^2 + |x|^2 - 2|x|(cos(theta) y.u + sin(theta) y.w)``, so
  ``theta = atan2(sum |x| y.w, sum |x| y.u)``.

On the held-out half, per layer: the residual error of each map relative to doing nothing
(``mean |y - map(x)|^2 / mean |y - x|^2``: 0 = the map reproduces the prompt's effect, 1 = it explains none of
it) and - with the model - the KL divergence from the prompted run's next-token distribution to the
unprompted run with the map applied at that layer's last token (:func:`map_kl`). Also the mean cosine and
norm ratio of ``y`` to ``x``: a rotation leaves norms alone, an addition changes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..distributions import kl_from_logits
from ..errors import InputError
from ..hooks.directions import rotate_towards
from ..hooks.interventions import Replace
from ..hooks.points import HookPoint

if TYPE_CHECKING:
    from ..models.model import Model


@dataclass
class MapFit:
    """The two maps fitted on training pairs (all float64)."""

    mu: torch.Tensor
    direction: torch.Tensor
    theta: float

    def add(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() + self.mu.to(x.device)).to(x.dtype)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return rotate_towards(x, self.direction, self.theta)


def fit_maps(x: torch.Tensor, y: torch.Tensor) -> MapFit:
    """Fit addition and rotation from ``x`` to ``y`` (``[n, d]`` each; see module docstring)."""
    if x.shape != y.shape or x.dim() != 2 or len(x) < 1:
        raise InputError(f"paired activations must be [n, d] with n >= 1, got {tuple(x.shape)} and {tuple(y.shape)}")
    xd, yd = x.double(), y.double()
    mu = (yd - xd).mean(0)
    if float(mu.norm()) == 0:
        raise InputError("the instruction does not change the activations: nothing to fit")
    d = mu / mu.norm()
    n = xd.norm(dim=-1, keepdim=True)
    u = xd / n.clamp_min(1e-30)
    w = d - (u @ d)[:, None] * u
    wn = w.norm(dim=-1, keepdim=True)
    ok = (wn > 1e-9)[:, 0]
    w = w / wn.clamp_min(1e-30)
    a = (n[:, 0] * (yd * u).sum(-1))[ok].sum()
    b = (n[:, 0] * (yd * w).sum(-1))[ok].sum()
    return MapFit(mu, d, float(math.atan2(float(b), float(a))))


def map_errors(fit: MapFit, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Held-out residual errors of the maps, relative to the identity, and the geometry of ``x -> y``."""
    xd, yd = x.double(), y.double()
    none = float((yd - xd).pow(2).sum(-1).mean())
    add = float((yd - fit.add(xd)).pow(2).sum(-1).mean())
    rot = float((yd - fit.rotate(xd)).pow(2).sum(-1).mean())
    cos = torch.nn.functional.cosine_similarity(xd, yd, dim=-1)
    return {"residual_error_add": add / none if none > 0 else float("nan"),
            "residual_error_rotate": rot / none if none > 0 else float("nan"),
            "squared_distance_unmapped": none, "mean_cos_x_y": float(cos.mean()),
            "mean_norm_ratio_y_x": float((yd.norm(dim=-1) / xd.norm(dim=-1).clamp_min(1e-30)).mean()),
            "theta_degrees": math.degrees(fit.theta), "mu_norm": float(fit.mu.norm())}


def _last_token_edit(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Apply ``fn`` to the last position only (batches are left-padded, so it is every row's last real token)."""
    def edit(h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[:, -1] = fn(h[:, -1])
        return out

    return edit


@torch.no_grad()
def _last_logits(model: Model, texts: Sequence[str], add_special: bool, batch_size: int) -> torch.Tensor:
    out = []
    for s in range(0, len(texts), batch_size):
        batch = model.tokenize(list(texts[s:s + batch_size]), padding_side="left", add_special_tokens=add_special)
        out.append(model.last_logits(**batch).cpu())
    return torch.cat(out)


@torch.no_grad()
def map_kl(model: Model, point: HookPoint, fit: MapFit, unprompted: Sequence[str], prompted_logits: torch.Tensor,
           *, add_special: bool, batch_size: int = 16) -> dict[str, float]:
    """Mean KL(prompted || unprompted with the map applied at ``point``'s last token) for each map, and for none."""
    out = {}
    for name, fn in (("none", None), ("add", fit.add), ("rotate", fit.rotate)):
        if fn is None:
            logits = _last_logits(model, unprompted, add_special, batch_size)
        else:
            with model.edit(Replace(point, _last_token_edit(fn), label=f"{name} map at the last token")):
                logits = _last_logits(model, unprompted, add_special, batch_size)
        out[f"kl_{name}"] = float(kl_from_logits(prompted_logits, logits).mean())
    return out


@dataclass
class PromptingResult:
    instruction: str
    layers: list[int]
    kind: str
    n_train: int
    n_test: int
    per_layer: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def with_instruction(instruction: str, prompt: str) -> str:
    """The user message carrying the instruction before the prompt."""
    return f"{instruction}\n\n{prompt}"


@torch.no_grad()
def addition_vs_rotation(model: Model, instruction: str, prompts: Sequence[str], *, layers: Sequence[int],
                         kind: str = "resid_post", chat: bool | None = None, train_fraction: float = 0.5,
                         seed: int = 0, batch_size: int = 16, kl: bool = True,
                         progress: Callable[[int], None] | None = None) -> PromptingResult:
    """Fit and evaluate both maps per layer (see module docstring)."""
    from ..steering.prompts import format_prompt, resolve_style

    if not instruction.strip():
        raise InputError("the instruction is empty")
    if len(prompts) < 4:
        raise InputError(f"give at least 4 prompts (half fit the maps, half test them); got {len(prompts)}")
    if not 0 < train_fraction < 1:
        raise InputError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    style = resolve_style(model, chat)
    plain = [format_prompt(model, p, style) for p in prompts]
    instructed = [format_prompt(model, with_instruction(instruction, p), style) for p in prompts]
    add_special = style.add_special_tokens()
    pts = [HookPoint(i, kind) for i in layers]
    xs = model.activations(model.tokenize(plain, padding_side="left", add_special_tokens=add_special), pts,
                           positions="last", dtype=torch.float64, batch_size=batch_size)
    ys = model.activations(model.tokenize(instructed, padding_side="left", add_special_tokens=add_special), pts,
                           positions="last", dtype=torch.float64, batch_size=batch_size)
    perm = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))
    n_train = max(2, min(len(prompts) - 2, round(len(prompts) * train_fraction)))
    tr, te = perm[:n_train], perm[n_train:]
    prompted_logits = _last_logits(model, [instructed[i] for i in te], add_special, batch_size) if kl else None
    res = PromptingResult(instruction, list(layers), kind, n_train, len(te))
    for p in pts:
        x, y = xs[p], ys[p]
        fit = fit_maps(x[tr], y[tr])
        row: dict[str, Any] = {"layer": p.layer, **map_errors(fit, x[te], y[te])}
        if prompted_logits is not None:
            row.update(map_kl(model, p, fit, [plain[i] for i in te], prompted_logits, add_special=add_special,
                              batch_size=batch_size))
        res.per_layer.append(row)
        if progress is not None:
            progress(1)
    return res
