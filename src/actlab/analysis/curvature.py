"""Is activation space Euclidean for the model? Curvature of the model's output along a steering direction and
the top eigenpairs of the Hessian of the next-token loss with respect to a layer's activations.

- **Along a direction**: ``f(m)`` is a scalar metric (mean next-token loss over texts, or mean log p(answer) of
  A/B prompts) with ``m * v`` added to the hook point at every position. Its first and second derivatives in
  ``m`` come from autograd (a double backward through the model); a flat model would have ``f'' = 0``.
- **Hessian eigenpairs**: ``L(delta)`` is the mean next-token loss with one vector ``delta`` (``[d_model]``, the
  space steering vectors live in) added at every real position of a layer, accumulated over batches of texts
  weighted by their token counts. Its Hessian at ``delta = 0`` is never formed: Lanczos (scipy's ``eigsh``, via
  a ``LinearOperator``) or power iteration calls Hessian-vector products, each one forward and a double
  backward per batch. With a steering vector, the cosine of each eigenvector to it is reported beside the
  ``1/sqrt(d)`` a random direction would give.
- **Over the parameters** (:class:`ParamHessian`, the loss landscape the CAA/sweeps discussion means): the same
  loss as a function of the model's weights - all of them, or those whose name matches a glob - with the same
  Hessian-vector products (one forward and a double backward per batch, never the matrix). Over several
  batches the products are token-weighted, i.e. the Hessian of the loss on all texts at once (one large
  concatenated batch); ``per_batch`` also finds each batch's own leading eigenvalues, whose mean is the other
  estimate the discussion compares (it exceeds the concatenated one's in magnitude: noise adds curvature).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.additions import Add
from ..hooks.points import HookPoint

if TYPE_CHECKING:
    from ..models.model import Model

Metric = Callable[[], torch.Tensor]
EIGEN_METHODS = ("lanczos", "power")
WHICH = ("LM", "LA")  # largest magnitude, largest algebraic


def second_order_attention() -> contextlib.AbstractContextManager:
    """Scaled-dot-product attention through PyTorch's math kernel, the one that supports double backward (the
    fused CPU/GPU kernels have no second derivative); eager-attention models are unaffected."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def _pairs(b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which positions have a real token and a real next token (``[batch, seq - 1]``)."""
    return b["attention_mask"][:, 1:] * b["attention_mask"][:, :-1]


def token_weights(batches: Sequence[dict[str, torch.Tensor]]) -> list[int]:
    """Next-token pairs per batch (what each batch weighs in the mean loss); refuses batches with none at all."""
    weights = [int(_pairs(b).sum()) for b in batches]
    if sum(weights) == 0:
        raise InputError("no next-token pairs to score: give texts of at least two tokens")
    return weights


def _nll_sum(logits: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token negative log-likelihood over a batch's real pairs (float64)."""
    lp = torch.log_softmax(logits.double()[:, :-1], -1)
    nll = -lp.gather(-1, b["input_ids"][:, 1:, None])[..., 0]
    return (nll * _pairs(b).to(nll.dtype)).sum()


def lm_loss_metric(model: Model, batches: Sequence[dict[str, torch.Tensor]]) -> Metric:
    """Mean next-token negative log-likelihood over the real tokens of ``batches`` (a differentiable scalar)."""
    n_total = sum(token_weights(batches))

    def metric() -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for b in batches:
            total = total + _nll_sum(model(**b, use_cache=False).logits, b).cpu()
        return total / n_total

    return metric


def answer_logprob_metric(model: Model, prompts: Sequence[Any], *, batch_size: int = 16) -> Metric:
    """Mean log p(matching answer token) of A/B prompts (``steering.evaluate.ab_prompts`` objects)."""
    from ..steering.evaluate import _left_pad

    pad = getattr(model.tokenizer, "pad_token_id", None) or 0

    def metric() -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s:s + batch_size]
            logits = model.last_logits(**_left_pad([p.ids for p in chunk], pad, model.device))
            lp = torch.log_softmax(logits.double(), -1)
            total = total + lp[torch.arange(len(chunk)), torch.tensor([p.match_id for p in chunk])].sum().cpu()
        return total / len(prompts)

    return metric


def direction_derivatives(model: Model, point: HookPoint, v: torch.Tensor, metric: Metric,
                          multipliers: Sequence[float], *, source: dict[str, Any] | None = None
                          ) -> list[dict[str, float]]:
    """``f(m)``, ``f'(m)`` and ``f''(m)`` at each multiplier, ``f`` being ``metric`` with ``m * v`` added at
    ``point`` (every position)."""
    if v.numel() != point.width(model):
        raise InputError(f"vector has {v.numel()} entries; {point.name} is {point.width(model)} wide")
    out = []
    vv = v.detach().reshape(-1)
    for m0 in multipliers:
        m = torch.tensor(float(m0), dtype=torch.float64, requires_grad=True)

        with torch.enable_grad(), second_order_attention(), \
                model.edit(Add({point: m * vv.double()}, positions="all",
                                source={"purpose": "curvature", "m": float(m0), **(source or {})})):
            f = metric()
            (g,) = torch.autograd.grad(f, m, create_graph=True)
            (h,) = torch.autograd.grad(g, m)
        out.append({"multiplier": float(m0), "value": float(f.detach()), "first_derivative": float(g.detach()),
                    "second_derivative": float(h)})
    return out


class LossHessian:
    """Hessian-vector products of the mean next-token loss w.r.t. a vector added at every position of a point."""

    def __init__(self, model: Model, point: HookPoint, batches: Sequence[dict[str, torch.Tensor]]):
        self.model, self.point, self.batches = model, point, list(batches)
        self.d = point.width(model)
        self.weights = token_weights(self.batches)
        self.n_products = 0

    def _loss(self, b: dict[str, torch.Tensor], delta: torch.Tensor) -> torch.Tensor:
        with self.model.edit(Add({self.point: delta}, positions="all", source={"purpose": "Hessian: delta"})):
            return lm_loss_metric(self.model, [b])()

    def loss(self, delta: torch.Tensor) -> torch.Tensor:
        """``L(delta)``, the token-weighted mean over batches (for dense checks)."""
        total = sum(w * self._loss(b, delta) for w, b in zip(self.weights, self.batches, strict=True))
        return total / sum(self.weights)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` at ``delta = 0`` (float64, ``[d]``)."""
        self.n_products += 1
        v = v.detach().double().reshape(-1)
        out = torch.zeros(self.d, dtype=torch.float64)
        n = sum(self.weights)
        for w, b in zip(self.weights, self.batches, strict=True):
            delta = torch.zeros(self.d, dtype=torch.float64, requires_grad=True)
            with torch.enable_grad(), second_order_attention():
                loss = self._loss(b, delta)
                (g,) = torch.autograd.grad(loss, delta, create_graph=True)
                (hv,) = torch.autograd.grad(g @ v, delta)
            out += (w / n) * hv.detach()
        return out


class ParamHessian:
    """Hessian-vector products of the mean next-token loss w.r.t. the model's parameters whose names match
    ``params`` (a glob over ``model.hf.named_parameters()``; ``*`` = every parameter), flattened in that order."""

    def __init__(self, model: Model, batches: Sequence[dict[str, torch.Tensor]], params: str = "*"):
        self.model, self.batches, self.glob = model, list(batches), params
        named = [(n, p) for n, p in model.hf.named_parameters() if fnmatch.fnmatchcase(n, params)]
        if not named:
            some = [n for n, _ in model.hf.named_parameters()][:4]
            raise InputError(f"no parameter name matches {params!r}; names look like {', '.join(some)}, ...")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.d = sum(p.numel() for p in self.params)
        self.weights = token_weights(self.batches)
        self.n_products = 0

    @contextlib.contextmanager
    def _grad_on(self):
        flags = [p.requires_grad for p in self.params]
        try:
            for p in self.params:
                p.requires_grad_(True)
            with torch.enable_grad(), second_order_attention():
                yield
        finally:
            for p, f in zip(self.params, flags, strict=True):
                p.requires_grad_(f)

    def loss(self, flat: torch.Tensor | None = None) -> torch.Tensor:
        """The token-weighted mean loss (``flat``: parameter values to evaluate at, for dense checks; the model's
        own values otherwise)."""
        if flat is None:
            return lm_loss_metric(self.model, self.batches)()
        from torch.func import functional_call

        values, k = {}, 0
        for n, p in zip(self.names, self.params, strict=True):
            values[n] = flat[k:k + p.numel()].reshape(p.shape).to(p.dtype)
            k += p.numel()
        total = torch.zeros((), dtype=torch.float64)
        for b in self.batches:
            logits = functional_call(self.model.hf, values, args=(), kwargs={**b, "use_cache": False}).logits
            total = total + _nll_sum(logits, b)
        return total / sum(self.weights)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` at the model's parameters (float64, ``[d]``), token-weighted over the batches."""
        self.n_products += 1
        v = v.detach().double().reshape(-1)
        chunks, k = [], 0
        for p in self.params:
            chunks.append(v[k:k + p.numel()].reshape(p.shape).to(p.device, p.dtype))
            k += p.numel()
        n = sum(self.weights)
        out = torch.zeros(self.d, dtype=torch.float64)
        with self._grad_on():
            for w, b in zip(self.weights, self.batches, strict=True):
                loss = lm_loss_metric(self.model, [b])()
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                dot = sum((g * c).sum() for g, c in zip(grads, chunks, strict=True))
                hv = torch.autograd.grad(dot, self.params)
                out += (w / n) * torch.cat([h.detach().double().reshape(-1).cpu() for h in hv])
        return out

    def restricted(self, batch: int) -> ParamHessian:
        """The same Hessian on one batch only (for the per-batch estimate)."""
        return ParamHessian(self.model, [self.batches[batch]], self.glob)


def top_eigen(hess: LossHessian | ParamHessian, k: int = 5, *, which: str = "LM", method: str = "lanczos",
              iters: int = 100, tol: float = 1e-6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` leading eigenvalues (``[k]``) and unit eigenvectors (``[k, d]``) of the Hessian, largest first:
    by magnitude (``which='LM'``) or algebraically (``'LA'``). ``method='lanczos'`` (scipy ARPACK) or ``'power'``
    (power iteration with deflation, for a quick top few)."""
    if not 1 <= k < hess.d:
        raise InputError(f"k must be in 1..{hess.d - 1} (the width of the activations), got {k}")
    if which not in ("LM", "LA"):
        raise InputError(f"which must be 'LM' (largest magnitude) or 'LA' (largest algebraic), not {which!r}")
    if method == "lanczos":
        import numpy as np
        from scipy.sparse.linalg import LinearOperator, eigsh

        op = LinearOperator((hess.d, hess.d), dtype=np.float64,
                            matvec=lambda x: hess.hvp(torch.from_numpy(np.asarray(x).reshape(-1))).numpy())
        v0 = torch.randn(hess.d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
        vals, vecs = eigsh(op, k=k, which=which, tol=tol, v0=v0, maxiter=iters * hess.d)
        order = np.argsort(-np.abs(vals) if which == "LM" else -vals)
        return torch.from_numpy(vals[order].copy()), torch.from_numpy(vecs[:, order].T.copy())
    if method != "power":
        raise InputError(f"unknown eigen method {method!r}; valid: lanczos, power")
    g = torch.Generator().manual_seed(seed)
    vals, vecs = [], []
    for _ in range(k):
        v = torch.randn(hess.d, generator=g, dtype=torch.float64)
        lam = 0.0
        for _ in range(iters):
            for u in vecs:  # deflate the eigenvectors found so far
                v = v - (u @ v) * u
            v = v / v.norm()
            hv = hess.hvp(v)
            for u, lu in zip(vecs, vals, strict=True):
                hv = hv - lu * (u @ v) * u
            new = float(v @ hv)
            v = hv
            if abs(new - lam) <= tol * max(1.0, abs(new)):
                lam = new
                break
            lam = new
        v = v / v.norm()
        vals.append(lam)
        vecs.append(v)
    return torch.tensor(vals, dtype=torch.float64), torch.stack(vecs)


def eigen_report(vals: torch.Tensor, vecs: torch.Tensor, vector: torch.Tensor | None = None) -> dict[str, Any]:
    """JSON-ready eigenvalues, and each eigenvector's |cosine| to ``vector`` beside a random direction's."""
    out: dict[str, Any] = {"eigenvalues": [float(x) for x in vals]}
    if vector is not None:
        u = vector.double().reshape(-1)
        u = u / u.norm().clamp_min(1e-30)
        out["abs_cos_to_vector"] = [float((e @ u).abs()) for e in vecs]
        out["random_direction_abs_cos"] = math.sqrt(2 / (math.pi * vecs.shape[1]))  # E|cos| for random d-dim
    return out
