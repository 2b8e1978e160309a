"""Working with features: overlap between two dictionaries, top-activating contexts, and splicing a
dictionary into the model to zero-ablate or scale chosen features.

Feature interventions keep the reconstruction error: the activation becomes
``x + decode(f') - decode(f)`` with ``f = encode(x)`` and ``f'`` the edited codes, so features left alone
leave the model's outputs exactly unchanged, whatever the dictionary's reconstruction quality.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.interventions import Replace
from ..hooks.points import HookPoint
from ..models.tokens import token_strings
from ..progress import task as progress_task
from .dictionary import SparseAutoencoder

if TYPE_CHECKING:
    from ..models.model import Model

HUNGARIAN_MAX = 4096


def decoder_cosines(a: SparseAutoencoder, b: SparseAutoencoder) -> torch.Tensor:
    """``[d_sae_a, d_sae_b]`` cosine similarity between decoder directions."""
    if a.cfg.d_in != b.cfg.d_in:
        raise InputError(f"dictionaries of different input widths cannot be compared ({a.cfg.d_in} vs {b.cfg.d_in})")
    da = a.W_dec.detach().double()
    db = b.W_dec.detach().double().to(da.device)
    da = da / da.norm(dim=1, keepdim=True).clamp_min(1e-12)
    db = db / db.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return da @ db.T


def overlap(a: SparseAutoencoder, b: SparseAutoencoder, *, top: int = 20, hungarian: bool = True) -> dict[str, Any]:
    """Mean max cosine (greedy, both directions), Hungarian-matched mean cosine, and the most similar pairs."""
    c = decoder_cosines(a, b)
    out: dict[str, Any] = {"d_sae_a": a.cfg.d_sae, "d_sae_b": b.cfg.d_sae,
                           "mean_max_cos_a_to_b": float(c.max(1).values.mean()),
                           "mean_max_cos_b_to_a": float(c.max(0).values.mean())}
    if hungarian:
        if min(c.shape) > HUNGARIAN_MAX:
            raise InputError(f"Hungarian matching of {c.shape[0]} x {c.shape[1]} features is too slow (limit "
                             f"{HUNGARIAN_MAX}); use hungarian=False (--no-hungarian) for the greedy measure")
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-c.cpu().numpy())
        out["hungarian_mean_cos"] = float(c[rows, cols].mean())
        out["hungarian_matched"] = len(rows)
    best = c.max(1)
    order = best.values.argsort(descending=True)[:top]
    out["top_pairs"] = [{"feature_a": int(i), "feature_b": int(best.indices[i]), "cos": float(best.values[i])}
                        for i in order]
    return out


class FeatureEdit(Replace):
    """Zero-ablate (``ablate=[...]``) or scale (``scale={f: s}``) a dictionary's features at its hook point during
    forward passes or generation, keeping the reconstruction error (see module docstring)."""

    kind = "sae_features"

    def __init__(self, sae: SparseAutoencoder, point: str | HookPoint | None = None, *, ablate: Sequence[int] = (),
                 scale: Mapping[int, float] | None = None):
        bad = [f for f in [*ablate, *(scale or {})] if not 0 <= f < sae.cfg.d_sae]
        if bad:
            raise InputError(f"features {bad} do not exist; the dictionary has features 0..{sae.cfg.d_sae - 1}")
        where = point if point is not None else sae.cfg.hook_point
        if not where:
            raise InputError("the dictionary records no hook point; give the point to edit")
        factors = torch.ones(sae.cfg.d_sae)
        for f in ablate:
            factors[f] = 0.0
        for f, s in (scale or {}).items():
            factors[f] = float(s)
        touched = (factors != 1).nonzero()[:, 0]
        fac = factors[touched].to(sae.W_enc.device)
        w = sae.W_dec[touched].detach()

        def edit(x: torch.Tensor) -> torch.Tensor:  # per-head kinds: the heads side by side, as cached
            with torch.no_grad():
                f = sae.encode(x.reshape(*x.shape[:2], -1).to(sae.W_enc.device, torch.float32))[..., touched]
                delta = ((fac - 1) * f) @ w
            return x + delta.to(x.device, x.dtype).reshape(x.shape)

        self.ablated, self.scaled = sorted(int(f) for f in ablate), {int(k): float(v) for k, v in (scale or {}).items()}
        super().__init__(where, edit, label="sae_feature_edit",
                         source={"dictionary": {"name": sae.cfg.name, **getattr(sae, "origin", {})}})

    def record(self) -> dict[str, Any]:
        return {**super().record(), "kind": self.kind, "ablate": self.ablated, "scale": self.scaled}


class _TopK:
    """The ``k`` largest activations of each feature seen so far and where they were (text, token)."""

    def __init__(self, n_features: int, k: int):
        self.k = k
        self.values = torch.full((n_features, k), -1.0)
        self.where = torch.full((n_features, k, 2), -1, dtype=torch.long)

    def update(self, codes: torch.Tensor, first_text: int) -> None:
        """``codes`` ``[B, T, F]`` with invalid positions set to -1; rows are texts ``first_text``..."""
        B, T, F = codes.shape
        flat = codes.reshape(B * T, F).T  # [F, B*T]
        v, i = flat.topk(min(self.k, flat.shape[1]), dim=1)
        loc = torch.stack([i // T + first_text, i % T], -1)
        cat_v, cat_l = torch.cat([self.values, v], 1), torch.cat([self.where, loc], 1)
        top = cat_v.topk(self.k, dim=1)
        self.values = top.values
        self.where = cat_l.gather(1, top.indices[..., None].expand(-1, -1, 2))

    def winners(self, j: int) -> list[tuple[float, int, int]]:
        """(value, text index, token index) of feature column ``j``, largest first, active ones only."""
        return [(float(self.values[j, r]), int(self.where[j, r, 0]), int(self.where[j, r, 1]))
                for r in range(self.k) if float(self.values[j, r]) > 0]


def feature_columns(sae: SparseAutoencoder, features: Sequence[int] | None) -> torch.Tensor:
    """The feature indices to read (all when None), checked against the dictionary's size."""
    feats = torch.arange(sae.cfg.d_sae) if features is None else torch.tensor(list(features), dtype=torch.long)
    if len(feats) and (int(feats.min()) < 0 or int(feats.max()) >= sae.cfg.d_sae):
        raise InputError(f"features must be in 0..{sae.cfg.d_sae - 1}, got {sorted(set(feats.tolist()))[:5]}")
    return feats


def scan_codes(model: Model, sae: Any, point: str, texts: Sequence[str], feats: torch.Tensor, *,
               batch_size: int = 8, max_length: int = 128, keep_bos: bool = False, what: str = "reading features",
               read: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]] | None = None
               ) -> Iterator[tuple[int, list[list[int]], torch.Tensor, torch.Tensor]]:
    """Per batch of texts: (index of its first text, each text's token ids, codes of ``feats`` ``[B, T, F]``
    with invalid positions - padding, and BOS unless ``keep_bos`` - set to -1, valid mask ``[B, T]``).
    ``read(batch) -> (activations [B, T, d], lengths [B])`` replaces the capture at ``point`` (a crosscoder reads
    two models' activations of the same tokens)."""
    from .store import _token_batch

    pts = model.parse_points(point)
    if len(pts) != 1:
        raise InputError(f"features are read at one hook point; {point!r} names {len(pts)}")
    name = pts[0].name
    dev = next(iter(sae.parameters())).device
    bos = getattr(model.tokenizer, "bos_token_id", None)
    with progress_task(what, total=len(texts), unit="texts") as task:
        for s in range(0, len(texts), batch_size):
            batch = _token_batch(model, texts[s:s + batch_size], max_length)
            if read is None:
                acts = model.activations(batch, name, positions="all", dtype=torch.float32)
                x, lengths = acts[name], acts.lengths.cpu()
            else:
                x, lengths = read(batch)
                lengths = lengths.cpu()
            codes = sae.encode(x.to(dev))[..., feats.to(dev)].cpu()  # [B, T, F]
            valid = torch.arange(codes.shape[1])[None, :] < lengths[:, None]
            ids = batch["input_ids"].cpu()
            if not keep_bos and bos is not None:
                valid[:, 0] &= ids[:, 0] != bos
            rows = [ids[b, : int(n)].tolist() for b, n in enumerate(lengths)]
            yield s, rows, codes.masked_fill(~valid[..., None], -1.0), valid
            task.advance(codes.shape[0])


@torch.no_grad()
def top_examples(model: Model, sae: SparseAutoencoder, point: str, texts: Sequence[str], *,
                 features: Sequence[int] | None = None, k: int = 8, batch_size: int = 8, max_length: int = 128,
                 window: int = 12, keep_bos: bool = False,
                 read: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 ) -> dict[int, list[dict[str, Any]]]:
    """For each feature, the ``k`` tokens (over ``texts``) where it is most active, with their context (token
    text as the tokenizer spaces it). The BOS token is skipped unless ``keep_bos`` (dictionaries are trained
    without it: its activations are atypical); ``read`` as in :func:`scan_codes` (a crosscoder's paired
    activations). :func:`actlab.sae.dashboard.feature_dashboards` adds per-token activations, histograms and
    logit effects."""
    feats = feature_columns(sae, features)
    best = _TopK(len(feats), k)
    all_ids: list[list[int]] = []
    for s, ids, codes, _valid in scan_codes(model, sae, point, texts, feats, batch_size=batch_size,
                                            max_length=max_length, keep_bos=keep_bos, what="top examples",
                                            read=read):
        best.update(codes, s)
        all_ids += ids
    out: dict[int, list[dict[str, Any]]] = {}
    for j, f in enumerate(feats.tolist()):
        rows = []
        for v, t_i, p_i in best.winners(j):
            ids = all_ids[t_i]
            lo = max(0, p_i - window)
            rows.append({"value": v, "text_index": t_i, "token_index": p_i,
                         "tokens": token_strings(model.tokenizer, ids[lo:p_i + 4]), "highlight": p_i - lo})
        out[f] = rows
    return out

