"""Dictionary quality: reconstruction (MSE, fraction of variance explained), sparsity (L0, dead and dense
feature fractions) and the downstream language-model loss with the reconstruction spliced in.

Loss recovered = (L_zero - L_spliced) / (L_zero - L_clean), where L_zero replaces the activation by zeros
(zero-ablation) and L_clean leaves the model alone: 1 means the dictionary loses nothing, 0 means it is as
bad as deleting the activation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.interventions import Replace
from ..progress import task as progress_task
from ..runs import write_json
from .dictionary import SparseAutoencoder

if TYPE_CHECKING:
    from ..models.model import Model

DENSE_THRESHOLD = 0.1  # a feature active on more than 10% of tokens counts as dense


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches: Iterable[torch.Tensor], *, max_batches: int | None = None
                           ) -> dict[str, Any]:
    """Over held-out batches: MSE per token, explained variance (1 - FVU), mean L0, dead/dense fractions."""
    dev = sae.W_enc.device
    n, se, l0 = 0, 0.0, 0.0
    sum_x = sum_x2 = None
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=dev)
    with progress_task("reconstruction metrics", total=max_batches, unit="batches") as task:
        for b, x in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            x = x.to(dev, torch.float32)
            x_hat, f = sae(x)
            se += float((x_hat - x).double().pow(2).sum())
            l0 += float((f > 0).double().sum())
            fires += (f > 0).double().sum(0)
            xd = x.double()
            sum_x = xd.sum(0) if sum_x is None else sum_x + xd.sum(0)
            sum_x2 = xd.pow(2).sum(0) if sum_x2 is None else sum_x2 + xd.pow(2).sum(0)
            n += len(x)
            task.advance(1, tokens=n)
    if n == 0 or sum_x is None or sum_x2 is None:
        raise InputError("no activations to evaluate on")
    total_var = float((sum_x2 - sum_x.pow(2) / n).sum())
    density = fires / n
    return {"n_tokens": n, "mse": se / n, "fvu": se / total_var if total_var > 0 else float("nan"),
            "explained_variance": 1 - se / total_var if total_var > 0 else float("nan"), "l0": l0 / n,
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
            "density": density.float().cpu().tolist()}


def write_metrics(out: str | os.PathLike[str], metrics: Mapping[str, Mapping[str, Any]], *,
                  name: str = "sae_metrics") -> Path:
    """``<name>.json``: one table row per dictionary (densities kept under their own key)."""
    table = [{"dictionary": n, **{k: v for k, v in m.items() if k != "density"}} for n, m in metrics.items()]
    return write_json(Path(out) / f"{name}.json", {
        "kind": "sae_metrics", "dictionaries": table,
        "density": {n: m["density"] for n, m in metrics.items() if "density" in m}})


def _lm_loss(model: Model, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    logits = model(**batch, use_cache=False).logits.float()
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    lp = torch.log_softmax(logits[:, :-1], -1)
    nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
    m = mask[:, 1:] & mask[:, :-1]
    return float((nll * m).sum()), int(m.sum())


def _reconstruct(sae: SparseAutoencoder):
    def fn(x: torch.Tensor) -> torch.Tensor:  # per-head kinds: the heads side by side, as the cache stores them
        flat = x.reshape(*x.shape[:2], -1).to(sae.W_enc.device, torch.float32)
        return sae(flat)[0].to(x.device, x.dtype).reshape(x.shape)

    return fn


@torch.no_grad()
def downstream_loss(model: Model, sae: SparseAutoencoder, point: str, texts: Sequence[str], *, batch_size: int = 8,
                    max_length: int = 128) -> dict[str, float]:
    """Next-token loss (nats/token) clean, with the reconstruction spliced in, and with zero-ablation."""
    from .store import _token_batch

    tot = {"clean": 0.0, "spliced": 0.0, "zero_ablation": 0.0}
    count = 0
    with progress_task("downstream loss", total=len(texts), unit="texts") as task:
        for s in range(0, len(texts), batch_size):
            batch = _token_batch(model, texts[s:s + batch_size], max_length)
            loss, n = _lm_loss(model, batch)
            tot["clean"] += loss
            with model.edit(Replace(point, _reconstruct(sae), label="sae_reconstruction",
                                    source={"dictionary": {"name": sae.cfg.name, **getattr(sae, "origin", {})}})):
                tot["spliced"] += _lm_loss(model, batch)[0]
            with model.edit(Replace(point, torch.zeros_like, label="zeros")):
                tot["zero_ablation"] += _lm_loss(model, batch)[0]
            count += n
            task.advance(len(texts[s:s + batch_size]))
    if count == 0:
        raise InputError("no tokens to score")
    out = {k: v / count for k, v in tot.items()}
    den = out["zero_ablation"] - out["clean"]
    out["loss_recovered"] = (out["zero_ablation"] - out["spliced"]) / den if abs(den) > 1e-12 else float("nan")
    out["n_tokens"] = count
    return out
