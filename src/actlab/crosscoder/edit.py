"""Crosscoder latents as an intervention: zero-ablate latents in the tuned model while it generates. An acausal
crosscoder encodes from both models' activations of the same tokens, so at each step the base model reads the
tokens generated so far and the tuned model's activation at its point loses those latents' contributions
through its own decoder (the reconstruction error and the other latents stay)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import InputError
from ..hooks.interventions import Replace
from .model import Crosscoder

if TYPE_CHECKING:
    from ..models.model import Model


def latent_contribution(cc: Crosscoder, codes: torch.Tensor, latents: Sequence[int], owner: int = 1) -> torch.Tensor:
    """What ``latents`` add to model ``owner``'s reconstruction (raw activation space): ``codes[..., latents] @
    W_dec[owner][latents] / input_scale[owner]``; ``codes`` are the full codes ``[..., d_sae]``."""
    idx = torch.as_tensor(list(latents), dtype=torch.long, device=codes.device)
    return codes[..., idx] @ cc.W_dec[owner][idx].detach() / cc.input_scale[owner]


def ablation(cc: Crosscoder, point: str, base_acts: torch.Tensor, latents: Sequence[int]) -> Replace:
    """The intervention at the tuned model's ``point`` that removes ``latents``' contributions, their codes read
    from ``base_acts`` (the base model's activations of the same tokens, ``[batch, seq, d_base]``) beside the
    tuned activation being edited."""

    def ablate(x: torch.Tensor) -> torch.Tensor:
        xt = x.to(cc.b_enc.device, torch.float32)
        codes = cc.encode(torch.cat([base_acts.to(cc.b_enc.device, torch.float32), xt], -1))
        return x - latent_contribution(cc, codes, latents).to(x.device, x.dtype)

    return Replace(point, ablate, label="crosscoder_latent_ablation",
                   source={"crosscoder": cc.cfg.name, "latents": [int(j) for j in latents]})


@torch.no_grad()
def generate_ablated(base: Model, tuned: Model, cc: Crosscoder, points: Sequence[str], prompts: Sequence[str],
                     latents: Sequence[int] = (), *, max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
    """Greedy continuations of ``prompts`` by ``tuned`` with ``latents`` zero-ablated at its point (``points``:
    the base and tuned points the crosscoder reads). With no latents: the plain greedy continuations through the
    same loop. Without a KV cache (the base model re-reads every token at each step): for evaluation-sized runs."""
    bad = [j for j in latents if not 0 <= j < cc.cfg.d_sae]
    if bad:
        raise InputError(f"latent {bad[0]} does not exist; the crosscoder has latents 0..{cc.cfg.d_sae - 1}")
    pb, pt = (m.parse_points(p)[0] for m, p in zip((base, tuned), points, strict=True))
    eos = getattr(tuned.tokenizer, "eos_token_id", None)
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        batch = tuned.tokenize(list(prompts[s:s + batch_size]), padding_side="left")
        ids, mask = batch["input_ids"].to(tuned.device), batch["attention_mask"].to(tuned.device)
        start = ids.shape[1]
        for _ in range(max_new_tokens):
            if latents:
                xb = base.activations({"input_ids": ids, "attention_mask": mask}, pb.name, positions="all",
                                      padding_side="left")[pb.name]
                with tuned.edit(ablation(cc, pt.name, xb, latents)):
                    logits = tuned.last_logits(ids, mask)
            else:
                logits = tuned.last_logits(ids, mask)
            nxt = logits.argmax(-1, keepdim=True).to(ids.device)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        for row in ids[:, start:].tolist():
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            out.append(tuned.tokenizer.decode(row, skip_special_tokens=True))
    return out
