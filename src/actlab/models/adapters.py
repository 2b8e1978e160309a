"""Architecture adapters: one small declarative entry per model family.

An adapter says where the native Hugging Face modules are; actlab never re-implements a model.
Every path is a dotted ``get_submodule`` path: ``layers``, ``final_norm``, ``unembed``, ``base`` and
``project_out`` from the CausalLM root (``unembed`` defaults to ``get_output_embeddings()``, whose name
changes across transformers versions), the others from inside one decoder layer.

Hook points are read from (and written to) these modules:

=================  ===================================================================
``resid_pre``      input of layer ``i`` (``embed`` is the input of layer 0)
``attn_out``       output of ``attn`` (what the attention sub-block adds to the residual)
``resid_mid``      input of ``mlp_norm`` (sequential); ``resid_pre + attn_out`` (parallel)
``mlp_hidden``     input of ``mlp_down`` (after the nonlinearity / gating)
``mlp_out``        output of ``mlp_out`` (what the MLP sub-block adds to the residual)
``resid_post``     output of layer ``i``
``final_norm``     output of ``final_norm``
=================  ===================================================================

To support a new family, build an :class:`ArchAdapter` and call :func:`register_adapter`; the adapter is
validated when a model loads (see ``docs/adapters.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchAdapter:
    """Where a family keeps its layers, sub-blocks, final norm and unembedding."""

    family: str
    model_types: tuple[str, ...]
    base: str
    layers: str
    attn: str | None  # None only with blocks_only
    mlp: str | None
    mlp_out: str | None  # None only with blocks_only
    mlp_down: str | None  # None: no single linear map writes the MLP output (a mixture of experts)
    mlp_norm: str | None
    final_norm: str
    unembed: str | None = None  # None: the model's get_output_embeddings()
    parallel: bool | Callable[[Any], bool] = False
    project_out: str | None = None
    softcap_attr: str | None = None
    context_attrs: tuple[str, ...] = ("max_position_embeddings", "n_positions", "n_ctx")
    check: Callable[[Any], str | None] = field(default=lambda config: None)
    # For weight orthogonalisation: the linear map whose output is attn_out (None: not a plain linear,
    # e.g. Gemma-2's post-attention norm), learned position embeddings, and a projection after the embedding.
    attn_proj: str | None = None
    pos_embed: str | None = None
    project_in: str | None = None
    # Attention internals (hooks.attention): the module that calls the attention function, and the output
    # projection whose input is the per-head output z (None: attn_proj).
    attn_core: str | None = None
    attn_o: str | None = None
    # The logits are the unembedding times this (Cohere's logit_scale, Granite's 1 / logits_scaling); derived
    # adapters measure it. ``derived``: built by actlab.models.derive from the module tree, not written here.
    logit_scale: float | None = None
    derived: bool = False
    # Mixture-of-experts: the router inside the MLP block (its first output: logits per expert), and the config
    # attribute counting the experts. None: a dense MLP (the point blocks.i.mlp.router does not exist).
    router: str | None = None
    # Scaled residual branches: the residual receives attn_scale x the attention output and mlp_scale x the
    # MLP output (Granite's residual_multiplier, MiniCPM's scale_depth / sqrt(layers)); hooks see the scaled
    # values, so attn_out and mlp_out still sum into the stream. Derived adapters measure them.
    attn_scale: float | None = None
    mlp_scale: float | None = None
    # A block that multiplies its whole output by a per-layer scalar attribute (Gemma-4's ``layer_scalar``):
    # resid_post = scalar x (resid_mid + mlp_out). The stream is rescaled at every layer, so attn_out and
    # mlp_out no longer sum into resid_post; Model.block_scale(i) reads the scalar. Derived adapters find it.
    resid_scale: str | None = None
    # Block outputs only: why the blocks could not be decomposed into attention and MLP writes (a residual
    # rescaled inside the block, a third branch...). Then only the stream between blocks is hooked (embed,
    # resid_pre, resid_post, final_norm: capture, steering, patching, the lens); every sub-block point is
    # refused with this reason. Derived adapters set it; load-time validation then checks every layer's
    # output against the model's own hidden states.
    blocks_only: str | None = None
    # A second tensor each layer returns and the next layer takes (Zaya's prev_router_hidden_states: the MoE
    # router reads the previous layer's router state): a state carried beside the residual stream. Every hook
    # point still reads and writes the residual exactly; patching a layer's residual does not patch this state,
    # so the patched run is not the source run from there on (said at load and by `actlab info`).
    carried_state: str | None = None

    def is_parallel(self, config: Any) -> bool:
        """Whether attention and MLP read the same residual (GPT-NeoX/Pythia, GPT-J)."""
        return self.parallel(config) if callable(self.parallel) else bool(self.parallel)

    def mlp_norm_path(self, config: Any) -> str | None:
        """The pre-MLP norm, whose input is resid_mid; None for parallel-residual models."""
        return None if self.is_parallel(config) else self.mlp_norm


_LLAMA_LIKE = dict(
    base="model",
    layers="model.layers",
    attn="self_attn",
    mlp="mlp",
    mlp_out="mlp",
    mlp_down="mlp.down_proj",
    mlp_norm="post_attention_layernorm",
    final_norm="model.norm",
    attn_proj="self_attn.o_proj",
    attn_core="self_attn",
    attn_o="self_attn.o_proj",
)


def _opt_check(config: Any) -> str | None:
    if not getattr(config, "do_layer_norm_before", True):
        return (
            "OPT with do_layer_norm_before=False (e.g. facebook/opt-350m) is post-LayerNorm: its residual "
            "stream is re-normalised inside each block, so resid_mid/resid_post do not decompose into "
            "sums; use another OPT size"
        )
    return None


ADAPTERS: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter, *, overwrite: bool = False) -> None:
    """Register an adapter for ``adapter.model_types`` (``config.model_type`` values)."""
    for mt in adapter.model_types:
        if mt in ADAPTERS and not overwrite:
            raise ValueError(f"an adapter for model_type {mt!r} exists ({ADAPTERS[mt].family}); "
                             "pass overwrite=True to replace it")
    for mt in adapter.model_types:
        ADAPTERS[mt] = adapter


for _a in (
    ArchAdapter(family="llama", model_types=("llama", "mistral", "qwen2", "qwen3"), **_LLAMA_LIKE),
    ArchAdapter(family="gemma", model_types=("gemma",), **_LLAMA_LIKE),
    ArchAdapter(
        family="gemma2",
        model_types=("gemma2", "gemma3_text"),
        **{**_LLAMA_LIKE, "attn": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm",
           "mlp_norm": "pre_feedforward_layernorm", "attn_proj": None},
        softcap_attr="final_logit_softcapping",
    ),
    ArchAdapter(family="phi3", model_types=("phi3",), **_LLAMA_LIKE),
    ArchAdapter(
        family="gpt2", model_types=("gpt2",), base="transformer", layers="transformer.h", attn="attn",
        mlp="mlp", mlp_out="mlp", mlp_down="mlp.c_proj", mlp_norm="ln_2", final_norm="transformer.ln_f",
        attn_proj="attn.c_proj", pos_embed="transformer.wpe", attn_core="attn", attn_o="attn.c_proj",
    ),
    ArchAdapter(
        family="gpt_neox", model_types=("gpt_neox",), base="gpt_neox", layers="gpt_neox.layers",
        attn="attention", mlp="mlp", mlp_out="mlp", mlp_down="mlp.dense_4h_to_h",
        mlp_norm="post_attention_layernorm", final_norm="gpt_neox.final_layer_norm", attn_proj="attention.dense",
        attn_core="attention", attn_o="attention.dense",
        parallel=lambda config: bool(getattr(config, "use_parallel_residual", True)),
    ),
    ArchAdapter(
        family="gpt_neo", model_types=("gpt_neo",), base="transformer", layers="transformer.h", attn="attn",
        mlp="mlp", mlp_out="mlp", mlp_down="mlp.c_proj", mlp_norm="ln_2", final_norm="transformer.ln_f",
        attn_proj="attn.attention.out_proj", pos_embed="transformer.wpe", attn_core="attn.attention",
        attn_o="attn.attention.out_proj",
    ),
    ArchAdapter(
        family="gptj", model_types=("gptj",), base="transformer", layers="transformer.h", attn="attn",
        mlp="mlp", mlp_out="mlp", mlp_down="mlp.fc_out", mlp_norm=None, final_norm="transformer.ln_f", parallel=True,
        attn_proj="attn.out_proj", attn_core="attn", attn_o="attn.out_proj",
    ),
    ArchAdapter(
        family="opt", model_types=("opt",), base="model.decoder", layers="model.decoder.layers",
        attn="self_attn", mlp=None, mlp_out="fc2", mlp_down="fc2", mlp_norm="final_layer_norm",
        final_norm="model.decoder.final_layer_norm",
        project_out="model.decoder.project_out", check=_opt_check, attn_proj="self_attn.out_proj",
        attn_core="self_attn", attn_o="self_attn.out_proj",
        pos_embed="model.decoder.embed_positions", project_in="model.decoder.project_in",
    ),
):
    register_adapter(_a)


def supported_families() -> dict[str, list[str]]:
    """Family name -> the ``model_type`` values it covers."""
    out: dict[str, list[str]] = {}
    for mt, a in ADAPTERS.items():
        out.setdefault(a.family, []).append(mt)
    return out


def check_config(config: Any) -> ArchAdapter | None:
    """Before any weights load: the hand-written adapter for ``config.model_type`` (its config checked), None
    when the adapter will be derived from the loaded model (:mod:`actlab.models.derive`), or a clear error for
    what cannot be read (encoder-decoder, recurrent)."""
    mt = getattr(config, "model_type", None)
    if mt in ADAPTERS:
        return get_adapter(config)
    from .derive import refusal

    why = refusal(config)
    if why:
        raise UnsupportedArchitectureError(why)
    return None


def get_adapter(config: Any) -> ArchAdapter:
    """The hand-written adapter for ``config.model_type``; a clear error naming the supported families
    otherwise (:func:`actlab.models.derive.derive_adapter` covers other decoder-only models)."""
    mt = getattr(config, "model_type", None)
    adapter = ADAPTERS.get(mt)
    if adapter is None:
        fams = "; ".join(f"{f} ({', '.join(mts)})" for f, mts in supported_families().items())
        raise UnsupportedArchitectureError(
            f"unsupported architecture model_type={mt!r}. Supported families: {fams}. To add one, "
            "register an adapter: actlab.register_adapter(actlab.ArchAdapter(...)) (see docs/adapters.md)."
        )
    problem = adapter.check(config)
    if problem:
        raise UnsupportedArchitectureError(f"unsupported configuration for model_type={mt!r}: {problem}")
    return adapter
