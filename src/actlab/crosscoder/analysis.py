"""What a trained crosscoder says about two models, as pure functions of its weights and activations.

- **Relative norm difference** (Lindsey et al. 2024; Minder et al. 2025 eq. 3): per latent ``j``,
  ``Delta_j = 0.5 * ((||d_j^tuned|| - ||d_j^base||) / max(||d_j^tuned||, ||d_j^base||) + 1)`` in [0, 1]: 0 when
  the latent decodes only into the base model, 1 only into the tuned model, 0.5 equally into both.
- **Classes** (Minder et al.'s thresholds, configurable): ``base-only`` Delta < 0.1, ``tuned-only`` Delta > 0.9,
  ``shared`` 0.4 <= Delta <= 0.6, ``other`` in between; ``dead`` when the latent never fires on the evaluation
  tokens.
- **Decoder cosine** of the two decoder directions (shared latents that point elsewhere in the tuned model
  changed meaning).
- **Latent scaling** (Minder et al. 2025, section 3): for a latent ``j`` with decoder direction ``d`` (the tuned
  model's, for a tuned-only latent), the least-squares coefficient of ``f_j(x) d`` against a target ``y`` over
  tokens, ``beta = sum_t f_t (d . y_t) / (||d||^2 sum_t f_t^2)``. With ``y`` the base model's reconstruction error
  with the latent's own contribution added back (``epsilon``) and ``y`` the base model's reconstruction (``r``),
  and the same for the tuned model, the ratios ``nu_eps = beta_eps^base / beta_eps^tuned`` and ``nu_r =
  beta_r^base / beta_r^tuned`` are near 0 for a latent that is truly tuned-only, and near 1 for one whose
  information the base model also carries (in its error: "complete shrinkage"; in its reconstruction: "latent
  decoupling").
- **Explained variance** per model: ``1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .model import Crosscoder

CLASSES = ("base-only", "tuned-only", "shared", "other", "dead")


@dataclass
class Thresholds:
    """Class boundaries on the relative norm difference (Minder et al. 2025)."""

    base_only: float = 0.1
    tuned_only: float = 0.9
    shared_low: float = 0.4
    shared_high: float = 0.6


def relative_norm_difference(norms: torch.Tensor, base: int = 0, tuned: int = 1) -> torch.Tensor:
    """``Delta`` per latent from decoder norms ``[n_models, d_sae]`` (0.5 where both norms are 0)."""
    b, t = norms[base].double(), norms[tuned].double()
    top = torch.maximum(b, t)
    return torch.where(top > 0, 0.5 * ((t - b) / top.clamp_min(1e-30) + 1), torch.full_like(top, 0.5))


def classify(delta: torch.Tensor, fired: torch.Tensor | None = None, th: Thresholds | None = None) -> list[str]:
    """A class per latent (see module docstring); ``fired`` marks latents that fired at least once."""
    th = th or Thresholds()
    out = []
    for j, d in enumerate(delta.tolist()):
        if fired is not None and not bool(fired[j]):
            out.append("dead")
        elif d < th.base_only:
            out.append("base-only")
        elif d > th.tuned_only:
            out.append("tuned-only")
        elif th.shared_low <= d <= th.shared_high:
            out.append("shared")
        else:
            out.append("other")
    return out


def decoder_cosines(cc: Crosscoder, a: int = 0, b: int = 1) -> torch.Tensor:
    """Per latent, the cosine between its decoder directions in models ``a`` and ``b`` (equal widths only)."""
    wa, wb = cc.W_dec[a].detach().double(), cc.W_dec[b].detach().double()
    if wa.shape != wb.shape:
        raise ValueError("decoder cosines need models of equal width")
    return (wa * wb).sum(-1) / (wa.norm(dim=-1) * wb.norm(dim=-1)).clamp_min(1e-30)


def scaling_beta(codes: torch.Tensor, direction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-squares ``beta`` per latent: ``codes [tokens, L]`` (the latents' activations), ``direction [L, d]``
    (each latent's decoder direction), ``target [tokens, d]`` or ``[L, tokens, d]`` (one target per latent):
    ``argmin_beta sum_t ||beta f_t d - y_t||^2 = sum_t f_t (d . y_t) / (||d||^2 sum_t f_t^2)`` (NaN for a latent
    that never fires)."""
    f = codes.double()
    d = direction.double()
    y = target.double()
    proj = (y @ d.T) if y.dim() == 2 else torch.einsum("ltd,ld->tl", y, d)  # [tokens, L]: d_j . y_t
    num = (f * proj).sum(0)
    den = (d * d).sum(-1) * (f * f).sum(0)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


@torch.no_grad()
def latent_scaling(cc: Crosscoder, batches: Iterable[torch.Tensor], latents: list[int], *, owner: int = 1,
                   base: int = 0, tuned: int = 1) -> dict[str, torch.Tensor]:
    """``beta`` of each latent's ``owner``-model decoder direction against each model's error (own contribution
    added back) and reconstruction, accumulated over ``batches`` (raw rows ``[tokens, sum d_i]``, normalised
    space); returns the four betas and the ratios ``nu_eps`` and ``nu_r``: the other model's beta over the
    owner's (see module docstring; for a base-only latent, tuned over base)."""
    idx = torch.tensor(latents, dtype=torch.long)
    d = cc.W_dec[owner].detach()[idx].double()  # [L, d]
    acc = {k: torch.zeros(len(latents), dtype=torch.float64) for k in ("num_eps_b", "num_eps_t", "num_r_b",
                                                                      "num_r_t", "den")}
    for x in batches:
        f = cc.encode(x)
        xs = [xi.double() * cc.input_scale[i] for i, xi in enumerate(cc.split(x))]
        recon = [(f @ w + b).double() for w, b in zip(cc.W_dec, cc.b_dec, strict=True)]
        fl = f[:, idx].double()  # [t, L]
        for m, tag in ((base, "b"), (tuned, "t")):
            # (error + the latent's own contribution f_l w_l) . d_l, per token and latent, without [L, t, d]
            own = (cc.W_dec[m].detach()[idx].double() * d).sum(-1)  # w_l . d_l  [L]
            eps_dot = (xs[m] - recon[m]) @ d.T + fl * own  # [t, L]
            acc[f"num_eps_{tag}"] += (fl * eps_dot).sum(0)
            acc[f"num_r_{tag}"] += (fl * (recon[m] @ d.T)).sum(0)
        acc["den"] += (fl * fl).sum(0)
    den = (d * d).sum(-1) * acc["den"]
    safe = den.clamp_min(1e-300)

    def beta(num: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / safe, torch.full_like(num, float("nan")))

    out = {"beta_eps_base": beta(acc["num_eps_b"]), "beta_eps_tuned": beta(acc["num_eps_t"]),
           "beta_r_base": beta(acc["num_r_b"]), "beta_r_tuned": beta(acc["num_r_t"])}
    mine, other = ("tuned", "base") if owner == tuned else ("base", "tuned")  # the other model over the owner
    out["nu_eps"] = out[f"beta_eps_{other}"] / out[f"beta_eps_{mine}"]
    out["nu_r"] = out[f"beta_r_{other}"] / out[f"beta_r_{mine}"]
    return out


@torch.no_grad()
def evaluate(cc: Crosscoder, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Over ``batches``: explained variance per model, mean L0, which latents fired, and each latent's firing
    frequency and mean activation when on."""
    n_models = len(cc.cfg.d_ins)
    sse = torch.zeros(n_models, dtype=torch.float64)
    s1 = [torch.zeros(d, dtype=torch.float64) for d in cc.cfg.d_ins]
    s2 = torch.zeros(n_models, dtype=torch.float64)
    n = 0
    l0 = 0.0
    on_count = torch.zeros(cc.cfg.d_sae, dtype=torch.float64)
    on_sum = torch.zeros(cc.cfg.d_sae, dtype=torch.float64)
    for x in batches:
        x_hat, f = cc(x)
        for i, (xi, hi) in enumerate(zip(cc.split(x), cc.split(x_hat), strict=True)):
            sse[i] += (xi.double() - hi.double()).pow(2).sum()
            s1[i] += xi.double().sum(0)
            s2[i] += xi.double().pow(2).sum()
        n += x.shape[0]
        on = f > 0
        l0 += float(on.sum())
        on_count += on.sum(0).double()
        on_sum += f.double().sum(0)
    var = torch.stack([s2[i] - (s1[i] ** 2).sum() / max(n, 1) for i in range(n_models)])
    return {"explained_variance": 1 - sse / var.clamp_min(1e-30), "l0": torch.tensor(l0 / max(n, 1)),
            "fired": on_count > 0, "frequency": on_count / max(n, 1),
            "mean_when_on": on_sum / on_count.clamp_min(1), "n_tokens": torch.tensor(n)}


def analyse(cc: Crosscoder, batches: list[torch.Tensor], *, thresholds: Thresholds | None = None,
            max_scaled: int = 256) -> dict:
    """Everything :mod:`actlab.crosscoder.analysis` computes, for a run folder's ``latents.json``: per latent its
    decoder norms, relative norm difference, class, decoder cosine (equal widths), firing frequency and mean
    activation, and - for up to ``max_scaled`` latents beyond the shared band on either side, the most frequent
    first - the latent-scaling betas and ratios; a summary with the class counts, the dead fraction, L0 and the
    explained variance per model. ``batches`` are held-out rows."""
    th = thresholds or Thresholds()
    ev = evaluate(cc, batches)
    norms = cc.decoder_norms().detach().cpu()
    delta = relative_norm_difference(norms)
    cls = classify(delta, ev["fired"], th)
    cos = decoder_cosines(cc) if len(set(cc.cfg.d_ins)) == 1 else None
    latents = []
    for j in range(cc.cfg.d_sae):
        latents.append({"latent": j, "class": cls[j], "delta": float(delta[j]), "norm_base": float(norms[0, j]),
                        "norm_tuned": float(norms[1, j]), "cosine": None if cos is None else float(cos[j]),
                        "frequency": float(ev["frequency"][j]), "mean_when_on": float(ev["mean_when_on"][j])})
    leans = {1: lambda j: float(delta[j]) > th.shared_high, 0: lambda j: float(delta[j]) < th.shared_low}
    for owner in (1, 0):  # model-specific latents, and those leaning that way without crossing the cut
        chosen = sorted((j for j in range(cc.cfg.d_sae) if cls[j] != "dead" and leans[owner](j)),
                        key=lambda j: -latents[j]["frequency"])[:max_scaled]
        if not chosen:
            continue
        sc = latent_scaling(cc, batches, chosen, owner=owner)
        for i, j in enumerate(chosen):
            latents[j]["scaling"] = {k: (None if v[i].isnan() else float(v[i])) for k, v in sc.items()}
    counts = {c: cls.count(c) for c in CLASSES}
    summary = {"d_sae": cc.cfg.d_sae, "architecture": cc.cfg.architecture, "classes": counts,
               "model_specific_fraction": (counts["base-only"] + counts["tuned-only"]) / cc.cfg.d_sae,
               "dead_fraction": counts["dead"] / cc.cfg.d_sae, "l0": float(ev["l0"]),
               "explained_variance": [float(v) for v in ev["explained_variance"]],
               "n_tokens": int(ev["n_tokens"]), "input_scale": [float(s) for s in cc.input_scale],
               "threshold": float(cc.threshold)}
    return {"summary": summary, "thresholds": th.__dict__, "latents": latents}
