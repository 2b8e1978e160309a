"""``actlab sae transcoder``: a skip transcoder for one layer's MLP, trained from a cache of (input, output)
pairs and judged as a replacement on held-out texts (see :mod:`actlab.transcoder`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..parallel import rank_and_world
from ..runs import Run, write_json
from .common import ModelLike, TextsLike, as_model, as_texts, name_of


@torch.no_grad()
def replacement_metrics(m: Any, tc: Any, texts: list[str], *, max_length: int = 128, batch_size: int = 8
                        ) -> dict[str, float]:
    """On ``texts``: the fraction of the MLP output's variance the transcoder explains, and the mean next-token
    KL (nats) from the original model to the model with the transcoder in place of the MLP, with and without
    the error term, and the next-token loss of each."""
    from ..distributions import kl_from_logits
    from ..sae.store import _token_batch
    from ..transcoder import TranscoderReplace

    p_in, p_out = tc.cfg.hook_point, tc.cfg.hook_point_out
    sse = tot = 0.0
    ys: list[torch.Tensor] = []
    kl = {"replaced": 0.0, "with_error_term": 0.0}
    loss = {"original": 0.0, "replaced": 0.0, "with_error_term": 0.0}
    n = 0
    for s in range(0, len(texts), batch_size):
        batch = _token_batch(m, texts[s:s + batch_size], max_length)
        mask = batch["attention_mask"].bool()
        acts = m.activations(batch, [p_in, p_out], positions="all", dtype=torch.float32)
        x, y = acts[p_in][mask], acts[p_out][mask]
        y_hat = tc(x.to(tc.W_enc.device)).cpu()
        sse += float((y - y_hat).double().pow(2).sum())
        ys.append(y.double())
        logits = {"original": m(**batch).logits.float()}
        for name, err in (("replaced", False), ("with_error_term", True)):
            with m.edit(TranscoderReplace(tc, error_term=err)):
                logits[name] = m(**batch).logits.float()
        nxt = mask[:, 1:]  # predictions whose next token is real
        target = batch["input_ids"][:, 1:][nxt]
        for name, lg in logits.items():
            loss[name] += float(torch.nn.functional.cross_entropy(lg[:, :-1][nxt], target, reduction="sum"))
            if name != "original":
                kl[name] += float(kl_from_logits(logits["original"][:, :-1][nxt], lg[:, :-1][nxt]).sum())
        n += int(nxt.sum())
    y_all = torch.cat(ys)
    tot = float((y_all - y_all.mean(0)).pow(2).sum())
    return {"explained_variance": 1 - sse / tot if tot > 0 else float("nan"), "n_tokens": n,
            "kl_replaced": kl["replaced"] / max(n, 1), "kl_with_error_term": kl["with_error_term"] / max(n, 1),
            "loss_original": loss["original"] / max(n, 1), "loss_replaced": loss["replaced"] / max(n, 1),
            "loss_with_error_term": loss["with_error_term"] / max(n, 1)}


def train_transcoder(model: ModelLike, data: TextsLike, out: str | os.PathLike[str], *, layer: int,
                     limit: int | None = 400, max_length: int = 128, expansion: int = 8, k: int = 32,
                     skip: bool = True, steps: int = 2000, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
                     checkpoint_every: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Cache ``blocks.{layer}.resid_mid`` and ``.mlp_out`` of ``data`` (a tenth held out), train a skip
    transcoder between them (resumable, data-parallel under torchrun), and write ``transcoder.json`` with its
    replacement metrics on the held-out texts. Returns them."""
    from ..crosscoder import PairedReader
    from ..sae import TrainConfig, cache_activations
    from ..sae.train import skip as skip_to
    from ..sae.train import train_saes
    from ..transcoder import TranscoderConfig

    m = as_model(model)
    if not 0 <= layer < m.n_layers:
        raise InputError(f"--layer {layer} does not exist; {m.name} has layers 0..{m.n_layers - 1}")
    texts = as_texts(data, limit=limit)
    n_held = max(1, len(texts) // 10)
    if len(texts) < 2:
        raise InputError(f"a transcoder needs at least 2 texts (one held out); got {len(texts)}")
    train_texts, held = texts[:-n_held], texts[-n_held:]
    p_in, p_out = f"blocks.{layer}.resid_mid", f"blocks.{layer}.mlp_out"
    out = Path(out)
    rank, _ = rank_and_world()
    config = {"model": name_of(model), "data": name_of(data), "layer": layer, "limit": limit,
              "max_length": max_length, "expansion": expansion, "k": k, "skip": skip, "steps": steps,
              "batch_size": batch_size, "lr": lr, "seed": seed}
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(Run(out, "sae transcoder", config, seed=seed)) if rank == 0 else None
        cache = out / "cache"
        cache_activations(m, train_texts, [p_in, p_out], cache, max_length=max_length, shard_tokens=16384,
                          overwrite=overwrite)
        reader = PairedReader([cache, cache], [p_in, p_out])
        bs = min(batch_size, reader.n_tokens)
        cfg = TranscoderConfig(d_in=m.d_model, d_out=m.d_model, d_sae=expansion * m.d_model, k=k, skip=skip,
                               hook_point=p_in, hook_point_out=p_out)
        tcfg = TrainConfig(steps=steps, batch_size=bs, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                           grad_clip=1.0, dead_steps=max(50, steps // 10), log_every=max(1, steps // 100))

        def make(start: int) -> Iterator[torch.Tensor]:
            return skip_to(reader.batches(bs, seed=seed, epochs=None), start)

        (tc,), _ = train_saes([cfg], make, tcfg, out_dir=out, job="sae transcoder", subfolder="transcoders",
                              overwrite=overwrite)
        if rank != 0:
            return {}
        metrics = replacement_metrics(m, tc, held, max_length=max_length)
        result = {"kind": "transcoder_eval", "model": m.name, "layer": layer, "points": [p_in, p_out],
                  "config": cfg.to_dict(), "held_out_texts": len(held), **metrics}
        write_json(out / "transcoder.json", result)
        assert run is not None
        run.results = metrics
    return result
