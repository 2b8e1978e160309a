"""Sparse autoencoders (dictionaries): ReLU + L1 (tied or untied decoder) and TopK, trained here; JumpReLU
(``relu(pre) * (pre > threshold)``, the architecture of Gemma Scope and other public releases) for inference.

``x_hat = f(x) @ W_dec + b_dec`` with ``f(x) = act((x - b_dec) @ W_enc + b_enc)``: the decoder bias also
centres the input (the "input centring by a bias"). Decoder rows (one per feature) are kept at unit norm:
after every optimiser step they are renormalised, and the gradient component parallel to each row is
removed before the step, so the L1 penalty cannot be dodged by shrinking codes and growing the decoder.
Tied dictionaries use ``W_dec = W_enc.T`` (one parameter; its columns are normalised instead).

Inputs can be rescaled by a fixed scalar ``input_scale`` (set from the data before training so that
``E||x * scale||^2 = d_in``); the loss is computed in that normalised space, which makes L1 coefficients
comparable across models and layers, and outputs are mapped back (``x_hat / scale``).

Parameter names and shapes follow SAELens (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``,
``b_dec``), so the on-disk formats coincide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError

ARCHITECTURES = ("relu", "topk", "jumprelu")
TRAINABLE = ("relu", "topk")  # JumpReLU dictionaries (e.g. Gemma Scope) are loaded for inference


def dead_latents_loss(acts: torch.Tensor, decoders: list[torch.Tensor], errors: list[torch.Tensor], k: int
                      ) -> torch.Tensor:
    """The auxiliary loss of Gao et al. (2024) that trains dead latents: the reconstruction error (each
    output's ``errors``, not differentiated) rebuilt from each row's top ``k`` dead latents (``acts``: their
    activations, ``[n, n_dead]``; ``decoders``: their decoder rows per output), squared, summed over outputs.
    Shared by SAEs, crosscoders (one decoder per model) and transcoders."""
    vals, j = acts.topk(min(k, acts.shape[-1]), dim=-1)
    codes = torch.zeros_like(acts).scatter(-1, j, vals)
    return sum((codes @ w - e.detach()).pow(2).sum(-1).mean() for w, e in zip(decoders, errors, strict=True))


@dataclass
class SAEConfig:
    """Shape and sparsity of one dictionary (training hyper-parameters live in :class:`TrainConfig`)."""

    d_in: int
    d_sae: int
    architecture: str = "relu"
    l1_coefficient: float = 1e-3
    k: int | None = None
    tied: bool = False
    hook_point: str = ""
    model: str = ""
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if self.architecture == "topk" and (self.k is None or not 0 < self.k <= self.d_sae):
            raise InputError(f"a TopK SAE needs 0 < k <= d_sae ({self.d_sae}); got k={self.k}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise InputError(f"d_in and d_sae must be positive, got {self.d_in} and {self.d_sae}")
        if not self.name:
            size = f"{self.d_sae // self.d_in}x" if self.d_sae % self.d_in == 0 else str(self.d_sae)
            sparsity = (f"k{self.k}" if self.architecture == "topk" else "threshold" if self.architecture == "jumprelu"
                        else f"l1_{self.l1_coefficient:g}")
            self.name = f"{self.architecture}-{size}-{sparsity}" + ("-tied" if self.tied else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def trainable(self) -> bool:
        return self.architecture in TRAINABLE

    def make(self, generator: torch.Generator | None = None) -> SparseAutoencoder:
        """A freshly initialised dictionary of this shape (what the trainer builds from a config)."""
        return SparseAutoencoder(self, generator=generator)


class SparseAutoencoder(nn.Module):
    """One dictionary (see module docstring)."""

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.origin: dict[str, str] = {}  # folder + sha256 of the weights when loaded (for run metadata)
        d, m = cfg.d_in, cfg.d_sae
        w = torch.randn(d, m, generator=generator) / d**0.5
        w = w / w.norm(dim=0, keepdim=True)  # unit columns of W_enc = unit rows of W_dec when tied
        self.W_enc = nn.Parameter(w.clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_scale", torch.tensor(1.0))
        if cfg.architecture == "jumprelu":  # per-feature thresholds on the pre-activation (inference only)
            self.register_buffer("threshold", torch.zeros(m))
        if cfg.tied:
            self.register_parameter("W_dec_param", None)
        else:
            self.W_dec_param = nn.Parameter(w.T.clone().contiguous())

    @property
    def W_dec(self) -> torch.Tensor:
        return self.W_enc.T if self.cfg.tied else self.W_dec_param

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations of raw inputs (scaled by ``input_scale`` first)."""
        return (x * self.input_scale - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)
        if self.cfg.architecture == "topk":
            vals, idx = torch.relu(pre).topk(self.cfg.k, dim=-1)  # type: ignore[arg-type]
            return torch.zeros_like(pre).scatter(-1, idx, vals)
        if self.cfg.architecture == "jumprelu":  # a feature is on only above its threshold
            return torch.relu(pre) * (pre > self.threshold)
        return torch.relu(pre)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the raw input space."""
        return (f @ self.W_dec + self.b_dec) / self.input_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def set_input_scale(self, x: torch.Tensor) -> float:
        """Choose ``input_scale`` so that the mean squared norm of ``x * scale`` is ``d_in``."""
        ms = float(x.double().pow(2).sum(-1).mean())
        self.input_scale.fill_((self.cfg.d_in / ms) ** 0.5 if ms > 0 else 1.0)
        return float(self.input_scale)

    def loss(self, x: torch.Tensor, l1_scale: float = 1.0, *, dead: torch.Tensor | None = None,
             aux_coefficient: float = 0.0, aux_k: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MSE in the normalised space (summed over features, mean over tokens) + L1 of the codes (ReLU SAEs),
        scaled by ``l1_scale`` during L1 warm-up. Decoder rows have unit norm, so the L1 term needs no norm
        weighting.

        TopK SAEs get no gradient on features that never make the top k; given the ``dead`` mask
        (``[d_sae]`` bool), ``aux_coefficient * aux`` is added, where ``aux`` is the auxiliary loss of Gao et
        al. (2024): the squared error of reconstructing the main residual ``x - x_hat`` from the top
        ``aux_k`` (default ``d_in // 2``) dead features alone, which pulls dead features towards what the
        live ones miss."""
        x_hat, f = self(x)
        err = (x - x_hat) * self.input_scale  # residual in the normalised space
        mse = err.pow(2).sum(-1).mean()
        aux = torch.zeros((), device=x.device)
        if self.cfg.architecture == "relu":
            l1 = f.abs().sum(-1).mean()
            total = mse + l1_scale * self.cfg.l1_coefficient * l1
        else:
            l1 = f.abs().sum(-1).mean().detach()
            total = mse
            if dead is not None and aux_coefficient > 0 and bool(dead.any()):
                aux = self.aux_loss(x, err.detach(), dead, aux_k)
                total = total + aux_coefficient * aux
        return total, {"mse": mse.detach(), "l1": l1.detach(), "aux": aux.detach(), "codes": f.detach(),
                       "x_hat": x_hat.detach()}

    def aux_loss(self, x: torch.Tensor, err: torch.Tensor, dead: torch.Tensor, aux_k: int | None = None
                 ) -> torch.Tensor:
        """Squared error (normalised space) of ``err`` reconstructed from the top ``aux_k`` dead features."""
        idx = dead.nonzero()[:, 0]
        pre = (x * self.input_scale - self.b_dec) @ self.W_enc[:, idx] + self.b_enc[idx]
        return dead_latents_loss(torch.relu(pre), [self.W_dec[idx]], [err], aux_k or max(self.cfg.d_in // 2, 1))

    # -- the trainer's protocol (shared with crosscoders) ------------------------------------------------------
    def train_gradients(self, x: torch.Tensor, l1_scale: float = 1.0, *, dead: torch.Tensor | None = None,
                        aux_coefficient: float = 0.0, aux_k: int | None = None) -> dict[str, torch.Tensor]:
        """Set every parameter's gradient for :meth:`loss` on ``x`` (written out by hand, :mod:`.step`)."""
        from .step import step_gradients

        return step_gradients(self, x, l1_scale, dead=dead, aux_coefficient=aux_coefficient, aux_k=aux_k)

    def before_step(self) -> None:
        self.remove_parallel_grads()

    def after_step(self) -> None:
        self.normalize_decoder()

    def save(self, folder: Any, extra: dict[str, Any] | None = None) -> Any:
        from .io import save_sae

        return save_sae(self, folder, extra=extra)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Renormalise decoder rows (tied: encoder columns) to unit norm."""
        if self.cfg.tied:
            self.W_enc.div_(self.W_enc.norm(dim=0, keepdim=True).clamp_min(1e-8))
        else:
            self.W_dec_param.div_(self.W_dec_param.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Project out the gradient component that would change decoder row norms."""
        if self.cfg.tied:
            w, g = self.W_enc, self.W_enc.grad
            if g is not None:
                g.sub_((g * w).sum(0, keepdim=True) * w)
        else:
            w, g = self.W_dec_param, self.W_dec_param.grad
            if g is not None:
                g.sub_((g * w).sum(1, keepdim=True) * w)
