"""Directional ablation: remove a direction (e.g. refusal) from the residual stream.

Two equivalent forms (Arditi et al. 2024):

- :func:`ablate` hooks: project ``r`` out of every block input (``resid_pre``) and every attention and MLP
  output at the chosen layers, at every position: ``x <- x - (x . r) r`` with ``r`` unit-norm;
- :func:`orthogonalize`: bake the same projection into the weights that write to the residual stream
  (token and position embeddings, attention output projections, MLP down projections, and their biases),
  so a saved copy behaves like the hooked model with no hooks at all. Tied embeddings are untied first
  (the unembedding must keep its original weights). Families whose sub-blocks end in a norm rather than a
  linear map (Gemma-2/3) are refused: no weight edit is exactly equivalent there.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import InputError
from ..hooks.directions import ProjectOut
from ..hooks.interventions import Edits, unit
from ..hooks.points import ABLATION_KINDS

if TYPE_CHECKING:
    from ..models.model import Model


def ablate(model: Model, direction: torch.Tensor, *, layers: str | int | Iterable[int] | None = None,
           kinds: Iterable[str] = ABLATION_KINDS, source: dict | None = None) -> Edits:
    """Ablate ``direction`` at every layer (or ``layers``): block inputs and attention/MLP outputs (a context
    manager or a handle; ``model.edit(ProjectOut(...), ...)`` composes it with other interventions). ``source``
    says in the run record which direction it is."""
    return model.edit(ProjectOut(direction, layers=layers, kinds=kinds, source=source))


def orthogonalization_record(model: Model, direction: torch.Tensor, *,
                             layers: str | int | Iterable[int] | None = None,
                             source: dict | None = None) -> dict:
    """What :func:`orthogonalize` bakes into the weights, as a run record: the hook-point ablation it equals
    (every layer's block input and attention/MLP outputs; with ``layers``, those layers' attention and MLP
    outputs)."""
    from ..hooks.points import WRITE_KINDS

    po = ProjectOut(direction, layers=layers, kinds=ABLATION_KINDS if layers is None else WRITE_KINDS,
                    source=source)
    po.edits(model)  # resolves the layers; installs nothing
    return {**po.record(), "kind": "orthogonalize", "applied_to": "weights"}


@torch.no_grad()
def _orth_out(module: nn.Module, r: torch.Tensor) -> None:
    """Make a module's output orthogonal to ``r`` (Linear, GPT-2 Conv1D, Embedding)."""
    w = module.weight
    rr = r.to(device=w.device, dtype=torch.float64)
    if isinstance(module, nn.Embedding) or type(module).__name__.endswith("Embedding"):
        w64 = w.double()
        w.copy_((w64 - (w64 @ rr)[:, None] * rr[None, :]).to(w.dtype))
    elif isinstance(module, nn.Linear):  # y = W x + b, W: [d_out, d_in]
        w64 = w.double()
        w.copy_((w64 - rr[:, None] * (rr @ w64)[None, :]).to(w.dtype))
    elif type(module).__name__ == "Conv1D":  # y = x W + b, W: [d_in, d_out]
        w64 = w.double()
        w.copy_((w64 - (w64 @ rr)[:, None] * rr[None, :]).to(w.dtype))
    else:
        raise InputError(f"cannot orthogonalise a {type(module).__name__}")
    b = getattr(module, "bias", None)
    if b is not None:
        b64 = b.double()
        b.copy_((b64 - (b64 @ rr) * rr).to(b.dtype))


def _untie(hf: nn.Module) -> None:
    out, inp = hf.get_output_embeddings(), hf.get_input_embeddings()
    if out is not None and out.weight.data_ptr() == inp.weight.data_ptr():
        out.weight = nn.Parameter(out.weight.detach().clone())
    for cfg in (hf.config, getattr(hf.config, "text_config", None)):
        if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False


@torch.no_grad()
def orthogonalize(model: Model, direction: torch.Tensor, *, copy_model: bool = True,
                  layers: str | int | Iterable[int] | None = None) -> Model:
    """A model whose weights never write ``direction`` into the residual stream (see module docstring).

    ``layers`` (the layer grammar) restricts the edit to the attention and MLP output weights of those layers:
    the saved copy then equals hook ablation of ``attn_out`` and ``mlp_out`` at those layers
    (``ProjectOut(direction, layers=..., kinds=WRITE_KINDS)``); the embeddings are edited only with every layer
    (a block input, ``resid_pre``, also carries what earlier layers wrote, which no weight edit of a subset can
    remove). ``copy_model=False`` edits ``model`` in place (no second copy in memory, for large models)."""
    from ..hooks.points import parse_layers
    from ..models.model import Model as ModelCls

    a = model.adapter
    if a.attn_proj is None:
        raise InputError(f"weight orthogonalisation is not exact for the {a.family!r} family (its attention output "
                         "is not written by one linear map: a norm after it, as in Gemma-2/3, or no single output "
                         "projection); use hook ablation (ablate)")
    if a.mlp_down is None:
        raise InputError(f"weight orthogonalisation needs one linear map writing each MLP output; the "
                         f"{a.family!r} MLP is a mixture of experts (no single one): use hook ablation (ablate)")
    r = unit(direction)  # float64: the edit is exact in the model's own dtype, fp64 included
    if r.dim() != 1:
        raise InputError("orthogonalisation bakes one direction into the weights; give a [d] vector")
    subset = parse_layers(layers, model.n_layers)
    want = _hooked_probe(model, r, subset) if a.derived else None
    hf = copy.deepcopy(model.hf) if copy_model else model.hf
    _untie(hf)
    target = ModelCls(hf, model.tokenizer, name=model.name + "+orth", adapter=a, source=dict(model.source))
    if subset is None:
        project_in = None
        if a.project_in:
            try:
                project_in = hf.get_submodule(a.project_in)
            except AttributeError:
                project_in = None
        _orth_out(project_in if project_in is not None else hf.get_input_embeddings(), r)
        if a.pos_embed:
            _orth_out(hf.get_submodule(a.pos_embed), r)
    for i, layer in enumerate(target.layers):
        if subset is None or i in subset:
            _orth_out(layer.get_submodule(a.attn_proj), r)
            _orth_out(layer.get_submodule(a.mlp_down), r)
    target.source["orthogonalized"] = "all layers" if subset is None else subset
    if want is not None:  # a derived adapter: the bake is checked against hook ablation, never assumed
        batch, logits = want
        with torch.no_grad():
            got = target(**batch, use_cache=False).logits.double()
        err = float((got - logits).abs().max() / (logits.abs().max() + 1e-6))
        if err > 1e-3:
            raise InputError(f"weight orthogonalisation is not exact for {model.name!r} (derived adapter "
                             f"{a.family!r}: relative error {err:.1e} against hook ablation on a probe; something "
                             "other than the embeddings and output projections writes to the residual stream)"
                             + ("; the model in memory was edited in place: reload it" if not copy_model else "")
                             + "; use hook ablation (ablate)")
    return target


@torch.no_grad()
def _hooked_probe(model: Model, r: torch.Tensor, subset: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A probe batch and the logits under the hook ablation the bake must equal."""
    from ..hooks.directions import ProjectOut
    from ..hooks.points import WRITE_KINDS
    from ..models.validate import probe_batch

    batch = probe_batch(model)
    edit = ablate(model, r) if subset is None else model.edit(ProjectOut(r, layers=sorted(subset), kinds=WRITE_KINDS))
    with edit:
        return batch, model(**batch, use_cache=False).logits.double()
