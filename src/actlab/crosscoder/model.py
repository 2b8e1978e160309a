"""An acausal crosscoder: one dictionary over the activations of several models (a base and a fine-tuned model)
at once (Lindsey et al., "Sparse crosscoders", Anthropic 2024).

Each model ``i`` has its own encoder and decoder; the codes are shared: ``f = act(sum_i (x_i s_i) @ W_enc[i] +
b_enc)`` and ``x_hat_i = (f @ W_dec[i] + b_dec[i]) / s_i``, where ``s_i`` scales model ``i``'s activations so
their mean squared norm is its width (each model normalised separately, recorded in ``input_scale``). A latent
whose decoder norm is large in one model and near zero in the other belongs to that model (see
:mod:`actlab.crosscoder.analysis`).

Two sparsity schemes:

- ``batchtopk`` (Bussmann et al. 2024; the variant Minder et al. 2025 recommend for crosscoders): during training
  the ``k x batch`` largest scores ``relu(pre_j) * sum_i ||W_dec[i][j]||`` in the whole batch are kept; at inference
  a latent is on when its score exceeds a threshold estimated during training (the running mean of the smallest
  kept score); dead latents train through the auxiliary loss of Gao et al. (2024);
- ``l1`` (the original recipe): ReLU codes and the penalty ``lambda * sum_j f_j * sum_i ||W_dec[i][j]||`` (the
  decoder-norm-weighted L1 that lets a latent be one-sided, and that Minder et al. show invents model-specific
  latents by "complete shrinkage").

Inputs and reconstructions are rows ``[batch, sum_i d_i]`` (the models' activations side by side), so the SAE
trainer (:class:`actlab.sae.train.Trainer`) trains crosscoders too: resume, checkpoints and torchrun included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..sae.dictionary import dead_latents_loss

ARCHITECTURES = ("batchtopk", "l1")


@dataclass
class CrosscoderConfig:
    """Shape and sparsity of one crosscoder. ``d_ins``: each model's width (they may differ)."""

    d_ins: tuple[int, ...]
    d_sae: int
    architecture: str = "batchtopk"
    k: int | None = 32
    l1_coefficient: float = 1.0
    models: tuple[str, ...] = ()
    hook_points: tuple[str, ...] = ()
    name: str = ""
    threshold_momentum: float = 0.99
    kind: str = "crosscoder"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.d_ins = tuple(int(d) for d in self.d_ins)
        self.models, self.hook_points = tuple(self.models), tuple(self.hook_points)
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown crosscoder architecture {self.architecture!r}; valid: "
                             f"{', '.join(ARCHITECTURES)}")
        if len(self.d_ins) < 2 or any(d <= 0 for d in self.d_ins) or self.d_sae <= 0:
            raise InputError(f"a crosscoder needs two or more positive widths and d_sae > 0, got {self.d_ins}, "
                             f"{self.d_sae}")
        if self.architecture == "batchtopk" and (self.k is None or not 0 < self.k <= self.d_sae):
            raise InputError(f"a BatchTopK crosscoder needs 0 < k <= d_sae ({self.d_sae}); got k={self.k}")
        if not self.name:
            sparsity = f"k{self.k}" if self.architecture == "batchtopk" else f"l1_{self.l1_coefficient:g}"
            self.name = f"crosscoder-{self.architecture}-{self.d_sae}-{sparsity}"

    @property
    def d_in(self) -> int:
        return sum(self.d_ins)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    trainable = True

    def make(self, generator: torch.Generator | None = None) -> Crosscoder:
        return Crosscoder(self, generator=generator)


class Crosscoder(nn.Module):
    """See module docstring."""

    def __init__(self, cfg: CrosscoderConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.origin: dict[str, str] = {}
        m = cfg.d_sae
        n = len(cfg.d_ins)
        # decoder rows of norm 0.1 in every model at start, the encoder their transpose (as in Lindsey et al.)
        decs = []
        for d in cfg.d_ins:
            w = torch.randn(m, d, generator=generator)
            decs.append(w / w.norm(dim=-1, keepdim=True) * 0.1)
        self.W_dec = nn.ParameterList([nn.Parameter(w.clone()) for w in decs])
        self.W_enc = nn.ParameterList([nn.Parameter(w.T.clone().contiguous()) for w in decs])
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in cfg.d_ins])
        self.register_buffer("input_scale", torch.ones(n))
        self.register_buffer("threshold", torch.tensor(-1.0))  # BatchTopK inference threshold (-1: not estimated)

    # -- layout ------------------------------------------------------------------------------------------------
    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Rows ``[..., sum d_i]`` into each model's part."""
        if x.shape[-1] != self.cfg.d_in:
            raise InputError(f"crosscoder input has width {x.shape[-1]}, expected {self.cfg.d_in} "
                             f"({' + '.join(map(str, self.cfg.d_ins))})")
        return list(torch.split(x, list(self.cfg.d_ins), dim=-1))

    def decoder_norms(self) -> torch.Tensor:
        """``[n_models, d_sae]``: each latent's decoder norm in each model."""
        return torch.stack([w.norm(dim=-1) for w in self.W_dec])

    # -- forward -----------------------------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.split(x)
        pre = self.b_enc
        for i, xi in enumerate(xs):
            pre = pre + (xi * self.input_scale[i]) @ self.W_enc[i]
        return pre

    def encode(self, x: torch.Tensor, *, training: bool = False) -> torch.Tensor:
        """Codes ``[batch, d_sae]``: ReLU (l1); BatchTopK over the batch (training) or above the estimated
        threshold (inference; before one is estimated, the per-token top k)."""
        act = torch.relu(self.pre_acts(x))
        if self.cfg.architecture == "l1":
            return act
        norms = self.decoder_norms().sum(0)
        if training:
            return self.encode_from(act, norms)
        score = act * norms
        k = int(self.cfg.k or 1)
        if float(self.threshold) >= 0:
            return act * (score > self.threshold)
        idx = score.topk(k, dim=-1).indices
        return act * torch.zeros_like(act, dtype=torch.bool).scatter_(-1, idx, True)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstructions of every model side by side ``[batch, sum d_i]``, in the raw input space."""
        return torch.cat([(f @ w + b) / self.input_scale[i]
                          for i, (w, b) in enumerate(zip(self.W_dec, self.b_dec, strict=True))], -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def set_input_scale(self, x: torch.Tensor) -> list[float]:
        """Per model, the scale that makes the mean squared norm of its activations equal its width."""
        for i, xi in enumerate(self.split(x)):
            ms = float(xi.double().pow(2).sum(-1).mean())
            self.input_scale[i] = (self.cfg.d_ins[i] / ms) ** 0.5 if ms > 0 else 1.0
        return self.input_scale.tolist()

    # -- training (the SAE trainer's protocol) ----------------------------------------------------------------
    def train_gradients(self, x: torch.Tensor, l1_scale: float = 1.0, *, dead: torch.Tensor | None = None,
                        aux_coefficient: float = 0.0, aux_k: int | None = None) -> dict[str, torch.Tensor]:
        """Set every parameter's gradient for the loss on ``x`` and return its parts: the summed squared error of
        every model in the normalised space (mean over tokens), plus the decoder-norm-weighted L1 (l1) or the
        dead latents' auxiliary loss (batchtopk). BatchTopK also updates the inference threshold."""
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            pre = self.pre_acts(x)
            act = torch.relu(pre)
            norms = self.decoder_norms().sum(0)
            if self.cfg.architecture == "l1":
                f = act
                sparsity = (f * norms).sum(-1).mean()
            else:
                f = self.encode_from(act, norms)
                sparsity = torch.zeros((), device=x.device)
            xs = [xi * self.input_scale[i] for i, xi in enumerate(self.split(x))]
            recon = [f @ w + b for w, b in zip(self.W_dec, self.b_dec, strict=True)]
            errs = [xi - ri for xi, ri in zip(xs, recon, strict=True)]
            mse = sum(e.pow(2).sum(-1).mean() for e in errs)
            total = mse + l1_scale * self.cfg.l1_coefficient * sparsity if self.cfg.architecture == "l1" else mse
            aux = torch.zeros((), device=x.device)
            if self.cfg.architecture == "batchtopk" and dead is not None and aux_coefficient > 0 and bool(dead.any()):
                idx = dead.nonzero()[:, 0]
                aux = dead_latents_loss(act[:, idx], [w[idx] for w in self.W_dec], errs,
                                        aux_k or max(self.cfg.d_in // 2, 1))
                total = total + aux_coefficient * aux
            total.backward()
        with torch.no_grad():
            on = f.detach() > 0
            if self.cfg.architecture == "batchtopk":
                from ..parallel import rank_and_world

                kept = (f.detach() * norms.detach())[on]
                smallest = kept.min() if kept.numel() else torch.tensor(float("inf"), device=x.device)
                if rank_and_world()[1] > 1:  # the global batch's smallest kept score
                    import torch.distributed as dist

                    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
                if not torch.isfinite(smallest):
                    smallest = self.threshold.clone()
                t = self.threshold
                mom = self.cfg.threshold_momentum
                self.threshold.copy_(smallest if float(t) < 0 else mom * t + (1 - mom) * smallest)
            x_hat = torch.cat([r.detach() / self.input_scale[i] for i, r in enumerate(recon)], -1)
        return {"loss": total.detach(), "mse": torch.as_tensor(mse).detach(),
                "l1": (f.detach() * norms.detach()).sum(-1).mean(), "aux": torch.as_tensor(aux).detach(),
                "fired": on.any(0), "l0": on.sum(-1).float().mean(), "x_hat": x_hat}

    def encode_from(self, act: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """BatchTopK selection of ReLU'd pre-activations ``act`` (training): the scores at or above the
        ``k x batch``-th largest of the whole batch are kept. Under torch.distributed the batch is the global one:
        every rank's largest ``k x global batch`` scores are gathered (the global top set is among them), so the
        selection is the single-process one."""
        from ..parallel import rank_and_world

        score = (act * norms).detach()
        k = int(self.cfg.k or 1)
        world = rank_and_world()[1]
        flat = score.reshape(-1)
        if world == 1:
            n_keep = k * act.shape[0]
            top = flat.topk(min(n_keep, flat.numel())).values
        else:  # the global batch's budget; slices may differ by a row, so pad to one length for all_gather
            import torch.distributed as dist

            rows = torch.tensor([act.shape[0]], device=score.device)
            dist.all_reduce(rows)
            n_keep = k * int(rows)
            top = flat.topk(min(n_keep, flat.numel())).values
            longest = torch.tensor([top.numel()], device=score.device)
            dist.all_reduce(longest, op=dist.ReduceOp.MAX)
            padded = torch.full((int(longest),), float("-inf"), device=score.device, dtype=top.dtype)
            padded[:top.numel()] = top
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
            top = torch.cat(parts)
            top = top[torch.isfinite(top)]
        n_keep = min(n_keep, top.numel())
        cut = top.topk(n_keep).values[-1] if n_keep else torch.tensor(float("inf"), device=score.device)
        return act * ((score >= cut) & (score > 0))

    def before_step(self) -> None:
        """Nothing to project: decoder norms are free (they carry the crosscoder's meaning)."""

    def after_step(self) -> None:
        """Nothing to renormalise (see :meth:`before_step`)."""

    def save(self, folder: Any, extra: dict[str, Any] | None = None) -> Any:
        from .io import save_crosscoder

        return save_crosscoder(self, folder, extra=extra)
