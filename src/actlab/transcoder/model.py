"""A skip transcoder: a sparse dictionary that maps an MLP's input to its output (Dunefsky et al. 2024,
"Transcoders find interpretable LLM feature circuits"), with a linear skip connection (Paulo et al. 2025,
"Transcoders beat sparse autoencoders for interpretability"):

``y_hat = (topk(relu(s_in x W_enc + b_enc)) W_dec + b_dec + s_in x W_skip) / s_out``

``x`` is the residual stream entering the MLP sub-block (``blocks.i.resid_mid``; the MLP's own pre-norm is part
of what the transcoder learns, as Anthropic's cross-layer transcoders read the residual stream) and ``y`` what
the sub-block writes (``blocks.i.mlp_out``). ``s_in``, ``s_out`` scale each side so its mean squared norm is its
width (recorded). Sparsity: TopK per token (Gao et al. 2024), dead latents trained through the auxiliary loss.
JumpReLU transcoders are not trained here.

Rows are ``[x | y]`` side by side, so :class:`actlab.sae.train.Trainer` trains it (resume, checkpoints,
torchrun) from a cache holding both points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..sae.dictionary import dead_latents_loss


@dataclass
class TranscoderConfig:
    """Shape of one skip transcoder."""

    d_in: int
    d_out: int
    d_sae: int
    k: int = 32
    skip: bool = True
    hook_point: str = ""  # the input (SAELens: hook_name)
    hook_point_out: str = ""  # the output it predicts (SAELens: hook_name_out)
    name: str = ""
    architecture: str = "topk"
    kind: str = "transcoder"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if min(self.d_in, self.d_out, self.d_sae) <= 0 or not 0 < self.k <= self.d_sae:
            raise InputError(f"a transcoder needs positive widths and 0 < k <= d_sae; got d_in {self.d_in}, d_out "
                             f"{self.d_out}, d_sae {self.d_sae}, k {self.k}")
        if not self.name:
            self.name = f"transcoder-{'skip-' if self.skip else ''}topk-{self.d_sae}-k{self.k}"

    trainable = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def make(self, generator: torch.Generator | None = None) -> Transcoder:
        return Transcoder(self, generator=generator)


class Transcoder(nn.Module):
    """See module docstring."""

    def __init__(self, cfg: TranscoderConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.origin: dict[str, str] = {}
        w = torch.randn(cfg.d_in, cfg.d_sae, generator=generator)
        self.W_enc = nn.Parameter(w / w.norm(dim=0, keepdim=True))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        d = torch.randn(cfg.d_sae, cfg.d_out, generator=generator)
        self.W_dec = nn.Parameter(d / d.norm(dim=-1, keepdim=True) * 0.1)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out)) if cfg.skip else None
        self.register_buffer("input_scale", torch.ones(2))  # (input side, output side)

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rows.shape[-1] != self.cfg.d_in + self.cfg.d_out:
            raise InputError(f"transcoder rows have width {rows.shape[-1]}, expected {self.cfg.d_in} + "
                             f"{self.cfg.d_out}")
        return rows[..., :self.cfg.d_in], rows[..., self.cfg.d_in:]

    def _acts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs = x * self.input_scale[0]
        return xs, torch.relu(xs @ self.W_enc + self.b_enc)

    def _topk(self, act: torch.Tensor) -> torch.Tensor:
        idx = act.topk(self.cfg.k, dim=-1).indices
        return act * torch.zeros_like(act, dtype=torch.bool).scatter_(-1, idx, True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of MLP inputs ``x [..., d_in]`` (raw scale)."""
        return self._topk(self._acts(x)[1])

    def _predict(self, xs: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        y = f @ self.W_dec + self.b_dec
        return y + xs @ self.W_skip if self.W_skip is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted MLP output of inputs ``x [..., d_in]``, in the raw output scale."""
        xs, act = self._acts(x)
        return self._predict(xs, self._topk(act)) / self.input_scale[1]

    @torch.no_grad()
    def set_input_scale(self, rows: torch.Tensor) -> list[float]:
        for i, part in enumerate(self.split(rows)):
            ms = float(part.double().pow(2).sum(-1).mean())
            self.input_scale[i] = (part.shape[-1] / ms) ** 0.5 if ms > 0 else 1.0
        return self.input_scale.tolist()

    # -- the SAE trainer's protocol ------------------------------------------------------------------------
    def train_gradients(self, rows: torch.Tensor, l1_scale: float = 1.0, *, dead: torch.Tensor | None = None,
                        aux_coefficient: float = 0.0, aux_k: int | None = None) -> dict[str, torch.Tensor]:
        """Gradients of the squared error of the predicted output (normalised space, mean over tokens) plus the
        dead latents' auxiliary loss."""
        self.zero_grad(set_to_none=True)
        x, y = self.split(rows)
        with torch.enable_grad():
            xs, act = self._acts(x)
            f = self._topk(act)
            target = y * self.input_scale[1]
            pred = self._predict(xs, f)
            err = target - pred
            mse = err.pow(2).sum(-1).mean()
            total, aux = mse, torch.zeros((), device=rows.device)
            if dead is not None and aux_coefficient > 0 and bool(dead.any()):
                idx = dead.nonzero()[:, 0]
                aux = dead_latents_loss(act[:, idx], [self.W_dec[idx]], [err], aux_k or max(self.cfg.d_out // 2, 1))
                total = total + aux_coefficient * aux
            total.backward()
        on = f.detach() > 0
        y_hat = pred.detach() / self.input_scale[1]
        return {"loss": total.detach(), "mse": mse.detach(), "l1": f.detach().sum(-1).mean(),
                "aux": aux.detach(), "fired": on.any(0), "l0": on.sum(-1).float().mean(),
                "x_hat": torch.cat([x, y_hat], -1)}

    def before_step(self) -> None:
        """Nothing to project."""

    def after_step(self) -> None:
        """Nothing to renormalise."""

    def save(self, folder: Any, extra: dict[str, Any] | None = None) -> Any:
        from .io import save_transcoder

        return save_transcoder(self, folder, extra=extra)
