"""Load-time validation of an adapter against the model's own outputs (nnterp-style).

On a short probe input: the lens at the last layer must reproduce the logits, and layer 0 must decompose
as resid_mid = resid_pre + attn_out (sequential) and resid_post = resid_mid + mlp_out (parallel:
resid_post = resid_pre + attn_out + mlp_out; a block that rescales its output, Gemma-4: resid_post =
scalar x (resid_mid + mlp_out)). A mislabelled module (say, a Gemma-2 post-norm taken for the
pre-MLP norm) fails here instead of silently corrupting results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import AdapterValidationError
from ..hooks.points import HookPoint, parse_points

if TYPE_CHECKING:
    from .model import Model

PROBE_TEXT = "The quick brown fox jumps over the lazy dog because"


def _tol(dtype: torch.dtype) -> float:
    return 1e-3 if dtype == torch.float32 or dtype == torch.float64 else 5e-2


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> tuple[bool, float]:
    a, b = a.double(), b.double()
    err = float((a - b).abs().max())
    scale = float(b.abs().max()) + 1e-6
    return err <= tol * scale, err / scale


def probe_batch(model: Model, n_tokens: int = 8) -> dict[str, torch.Tensor]:
    """A short real-text probe (falls back to the first token ids when there is no tokenizer)."""
    ids = None
    if model.tokenizer is not None:
        ids = model.tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"][:, :n_tokens]
    if ids is None or ids.shape[1] < 2:
        ids = torch.arange(min(n_tokens, model.vocab_size))[None]
    ids = ids.clamp(max=model.vocab_size - 1).to(model.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def validate_model(model: Model) -> dict[str, float]:
    """Check the adapter on a probe; returns the relative errors, raises AdapterValidationError on mismatch."""
    batch = probe_batch(model)
    if model.adapter.blocks_only:
        return _validate_blocks(model, batch)
    last = model.n_layers - 1
    pts = [*parse_points("blocks.0.resid_pre,blocks.0.attn_out,blocks.0.resid_mid,blocks.0.mlp_out,"
                         "blocks.0.resid_post", model.n_layers), HookPoint(last, "resid_post")]
    was_training = model.hf.training
    model.hf.eval()
    try:
        with model.capture(pts, positions="all", dtype=torch.float64, device="cpu") as acts:
            out = model(**batch, use_cache=False)
    finally:
        model.hf.train(was_training)
    tol = _tol(model.dtype)
    checks = {
        "lens(last resid_post) == logits": (model.unembed(acts[HookPoint(last, "resid_post")].to(model.dtype)),
                                            out.logits.float().cpu()),
        "resid_post == resid_mid + mlp_out" if model.adapter.resid_scale is None else
        f"resid_post == {model.adapter.resid_scale} x (resid_mid + mlp_out)": (
            model.block_scale(0) * (acts["blocks.0.resid_mid"] + acts["blocks.0.mlp_out"]),
            acts["blocks.0.resid_post"]),
    }
    if not model.parallel:
        checks["resid_mid == resid_pre + attn_out"] = (acts["blocks.0.resid_pre"] + acts["blocks.0.attn_out"],
                                                       acts["blocks.0.resid_mid"])
    return _checked(model, checks, tol, ". The module paths in its ArchAdapter are wrong for this model (see "
                                        "docs/adapters.md)")


def _checked(model: Model, checks: dict[str, tuple[torch.Tensor, torch.Tensor]], tol: float, hint: str
             ) -> dict[str, float]:
    """Each check's relative error; the first one past ``tol`` raises, naming it (``hint`` ends the message)."""
    errors: dict[str, float] = {}
    for what, (got, want) in checks.items():
        ok, rel = _close(got.cpu(), want.cpu(), tol)
        errors[what] = rel
        if not ok:
            raise AdapterValidationError(
                f"adapter {model.adapter.family!r} does not fit {model.name!r}: {what} fails on a probe input "
                f"(relative error {rel:.2e} > {tol:.0e}){hint}")
    return errors


@torch.no_grad()
def _validate_blocks(model: Model, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Block outputs only (the blocks did not decompose): every layer's captured output must equal the model's
    own ``hidden_states[i + 1]`` (a wrongly found layer list fails here) and the lens at the last layer the
    logits."""
    n = model.n_layers
    pts = [HookPoint(i, "resid_post") for i in range(n)]
    was_training = model.hf.training
    model.hf.eval()
    try:
        with model.capture(pts, positions="all", dtype=torch.float64, device="cpu") as acts:
            out = model(**batch, use_cache=False, output_hidden_states=True)
    finally:
        model.hf.train(was_training)
    tol = _tol(model.dtype)
    hs = getattr(out, "hidden_states", None)
    checks = {"lens(last resid_post) == logits": (model.unembed(acts[pts[-1]].to(model.dtype)),
                                                  out.logits.float().cpu())}
    if hs is not None and len(hs) == n + 1:
        for i in range(n - 1):  # the last hidden state is after the final norm
            checks[f"resid_post {i} == hidden_states[{i + 1}]"] = (acts[pts[i]], hs[i + 1].double().cpu())
    return _checked(model, checks, tol, f"; its blocks could not be decomposed either ({model.adapter.blocks_only})."
                                        " Register an adapter (see docs/adapters.md)")
