"""Activation deltas, probes and agreement with the true feedback (the core of the LFP analysis).

- Features of a text: the codes of the chosen dictionary at each selected layer, averaged over the
  substituted word's tokens (or all tokens), concatenated across layers.
- Deltas: ``||F(pos) - F(neu)||`` for the positive variant and ``-||F(neg) - F(neu)||`` for the negative one
  (neutral: 0), scaled into the per-word reward range ``[-0.8, 0.8]`` (a lexicon valence in [-4, 4] / 5) by
  the largest absolute delta. ``per_token``: the norm at each token (pair) first, then the mean
  (:func:`per_token_deltas`).
- Probes: ridge-regularised linear regression from features to scaled deltas (sentiment), or logistic
  regression positive-vs-negative (dialogue tasks); held out by triple; an untrained Xavier-initialised
  linear probe is the baseline.
- Agreement: Kendall's tau (and p-value) between the probe's predictions for lexicon words and their
  lexicon valences, sign accuracy on positive and on negative words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError
from ..hooks.points import HookPoint
from ..sae.dictionary import SparseAutoencoder

if TYPE_CHECKING:
    from ..models.model import Model

WORD_REWARD_MAX = 0.8  # one word's reward: valence (|v| <= 4) / 5


def token_positions(model: Model, text: str, span: Sequence[int] | None) -> list[int]:
    """Token indices covering the character span (all tokens when ``span`` is None)."""
    enc = model.tokenizer(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if span is None:
        return [i for i, (s, e) in enumerate(offsets) if e > s] or [len(offsets) - 1]
    lo, hi = span
    idx = [i for i, (s, e) in enumerate(offsets) if e > s and s < hi and e > lo]
    if not idx:
        raise InputError(f"no token covers characters {lo}..{hi} of {text[:60]!r}")
    return idx


@torch.no_grad()
def sae_token_codes(model: Model, saes: dict[int, SparseAutoencoder], texts: Sequence[str],
                    spans: Sequence[Sequence[int] | None], *, point: str = "mlp_out", batch_size: int = 16
                    ) -> list[torch.Tensor]:
    """Per text ``[its positions, sum of d_sae]``: dictionary codes at each token of its span (all tokens when
    the span is None), concatenated by layer."""
    layers = sorted(saes)
    names = [HookPoint(i, point).name for i in layers]
    out: list[torch.Tensor] = []
    for s in range(0, len(texts), batch_size):
        chunk = list(texts[s:s + batch_size])
        pos = [token_positions(model, t, sp) for t, sp in zip(chunk, spans[s:s + batch_size], strict=True)]
        batch = model.tokenize(chunk, padding_side="right")
        mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
        for b, p in enumerate(pos):
            mask[b, p] = True
        acts = model.activations(batch, names, positions=mask)
        counts = [len(p) for p in pos]
        codes = torch.cat([saes[i].encode(acts[name].to(saes[i].W_enc.device)).cpu()
                           for i, name in zip(layers, names, strict=True)], dim=1)
        out += list(torch.split(codes, counts))
    return out


def sae_features(model: Model, saes: dict[int, SparseAutoencoder], texts: Sequence[str],
                 spans: Sequence[Sequence[int] | None], *, point: str = "mlp_out", batch_size: int = 16
                 ) -> torch.Tensor:
    """``[n, sum of d_sae]``: per text, dictionary codes averaged over its positions, concatenated by layer."""
    codes = sae_token_codes(model, saes, texts, spans, point=point, batch_size=batch_size)
    return torch.stack([c.mean(0) for c in codes])


def scaled_deltas(d_pos: torch.Tensor, d_neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw deltas (positive, and negative ones as negative numbers) and the same scaled into the per-word reward
    range by the largest absolute delta."""
    d_pos, d_neg = d_pos.double(), d_neg.double()
    scale = float(torch.cat([d_pos, d_neg.abs()]).max())
    if scale <= 0:
        raise InputError("all activation deltas are zero: the dictionaries do not see the substitutions")
    k = WORD_REWARD_MAX / scale
    return {"pos": d_pos, "neg": d_neg, "pos_scaled": d_pos * k, "neg_scaled": d_neg * k, "scale": torch.tensor(k)}


def deltas(f_pos: torch.Tensor, f_neu: torch.Tensor, f_neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """Deltas of the averaged codes per triple: ``||F(pos) - F(neu)||`` (see module docstring)."""
    return scaled_deltas((f_pos.double() - f_neu.double()).norm(dim=1),
                         -(f_neg.double() - f_neu.double()).norm(dim=1))


def per_token_deltas(t_pos: Sequence[torch.Tensor], t_neu: Sequence[torch.Tensor], t_neg: Sequence[torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """Per-token deltas averaged per triple: the mean over token pairs (one of the variant's word, one of the
    neutral word's) of ``||F_t(variant) - F_s(neu)||``. Single-token words give the same number as
    :func:`deltas`; words split into several tokens take the norm before averaging instead of after."""
    def mean_pair(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.cdist(x.double(), y.double()).mean() for x, y in zip(a, b, strict=True)])

    return scaled_deltas(mean_pair(t_pos, t_neu), -mean_pair(t_neg, t_neu))


def split_triples(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_test = max(1, round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    nz = y != 0
    ss_res = float(((pred - y) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1.0
    corr = float(np.corrcoef(pred, y)[0, 1]) if np.std(pred) > 0 and np.std(y) > 0 else 0.0
    return {"r2": 1 - ss_res / ss_tot, "pearson": corr,
            "sign_accuracy": float((np.sign(pred[nz]) == np.sign(y[nz])).mean()) if nz.any() else float("nan"),
            "mse": ss_res / len(y)}


def xavier_predictions(x: np.ndarray, seed: int) -> np.ndarray:
    """An untrained linear probe (Xavier-uniform weights, zero bias) on standardised inputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(1, x.shape[1])
    torch.nn.init.xavier_uniform_(w, generator=g)
    return (torch.from_numpy(x).float() @ w.T).numpy()[:, 0]


def fit_regression_probe(f_pos: torch.Tensor, f_neu: torch.Tensor, f_neg: torch.Tensor, d: dict[str, torch.Tensor],
                         *, test_fraction: float = 0.2, alpha: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Ridge regression from features to scaled deltas; metrics on held-out triples and the Xavier baseline."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    n = len(f_pos)
    tr, te = split_triples(n, test_fraction, seed)

    def stack(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.cat([f_pos[idx], f_neu[idx], f_neg[idx]]).double().numpy()
        y = np.concatenate([d["pos_scaled"][idx].numpy(), np.zeros(len(idx)), d["neg_scaled"][idx].numpy()])
        return x, y

    x_tr, y_tr = stack(tr)
    x_te, y_te = stack(te)
    scaler = StandardScaler().fit(x_tr)
    probe = Ridge(alpha=alpha).fit(scaler.transform(x_tr), y_tr)
    pred_te = probe.predict(scaler.transform(x_te))
    base_te = xavier_predictions(scaler.transform(x_te), seed)
    return {"probe": probe, "scaler": scaler, "train_triples": tr.tolist(), "test_triples": te.tolist(),
            "train": _regression_metrics(probe.predict(scaler.transform(x_tr)), y_tr),
            "test": _regression_metrics(pred_te, y_te), "xavier_baseline_test": _regression_metrics(base_te, y_te)}


def fit_logistic_probe(f_pos: torch.Tensor, f_neg: torch.Tensor, *, test_fraction: float = 0.2, seed: int = 0
                       ) -> dict[str, Any]:
    """Logistic regression positive-vs-negative (dialogue tasks) with held-out accuracy and the baseline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n = len(f_pos)
    tr, te = split_triples(n, test_fraction, seed)

    def stack(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (torch.cat([f_pos[idx], f_neg[idx]]).double().numpy(),
                np.concatenate([np.ones(len(idx)), np.zeros(len(idx))]))

    x_tr, y_tr = stack(tr)
    x_te, y_te = stack(te)
    scaler = StandardScaler().fit(x_tr)
    probe = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(x_tr), y_tr)
    base = xavier_predictions(scaler.transform(x_te), seed) > 0
    return {"probe": probe, "scaler": scaler, "train_triples": tr.tolist(), "test_triples": te.tolist(),
            "train": {"accuracy": float(probe.score(scaler.transform(x_tr), y_tr))},
            "test": {"accuracy": float(probe.score(scaler.transform(x_te), y_te))},
            "xavier_baseline_test": {"accuracy": float((base == (y_te == 1)).mean())}}


def agreement(pred: Sequence[float], true: Sequence[float]) -> dict[str, float]:
    """Kendall's tau between predicted and true values; sign accuracy overall, on positive and on negative words."""
    from scipy.stats import kendalltau

    p, t = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    tau, pval = kendalltau(p, t)
    pos, neg = t > 0, t < 0
    out = {"kendall_tau": float(tau), "p_value": float(pval), "n_words": len(t),
           "sign_accuracy": float((np.sign(p[t != 0]) == np.sign(t[t != 0])).mean()),
           "sign_accuracy_positive": float((p[pos] > 0).mean()) if pos.any() else float("nan"),
           "sign_accuracy_negative": float((p[neg] < 0).mean()) if neg.any() else float("nan")}
    if neg.sum() > 1:
        tau_n, p_n = kendalltau(p[neg], t[neg])
        out["kendall_tau_negative"], out["p_value_negative"] = float(tau_n), float(p_n)
    return out
