"""The support matrix: for every causal-LM model type the installed transformers registers, a tiny random model
built from that type's own config class, and what actlab makes of it - ``validated`` (the adapter, hand-written
or derived, passes the load-time validation; captured resid_post equals ``output_hidden_states``; steering
through actlab equals a hand-written forward hook; the lens at the last layer equals the logits), ``partial``
(blocks that do not decompose: the same checks at the block outputs only), ``refused`` with its one-line
reason, or ``failing``. ``python tests/support_matrix.py --write`` regenerates the table in
docs/support.md; ``tests/test_support_matrix.py`` holds that table equal to fresh results."""

from __future__ import annotations

import inspect
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "support.md"

SMALL = {
    "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_kv_heads": 2, "head_dim": 16, "intermediate_size": 128,
    "ffn_hidden_size": 128, "n_inner": 128, "ffn_dim": 128, "max_position_embeddings": 256, "n_positions": 256,
    "moe_intermediate_size": 64, "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "n_shared_experts": 1, "shared_expert_intermediate_size": 64,
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "sliding_window": 64, "rotary_dim": 4,
    "attention_types": [[["global", "local"], 1]], "vocab_size_per_layer_input": 256,
    "hidden_size_per_layer_input": 8, "n_group": 1, "topk_group": 1, "num_kv_shared_layers": 0,
    # hybrids' Mamba-2 mixers (heads x head width = 2 x hidden; the scan's state and chunk small)
    "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_ssm": 128, "mamba_d_state": 16, "mamba_chunk_size": 16,
    "linear_num_heads": 4, "linear_head_dim": 16,  # Kimi-Linear's delta-attention heads
}
# Per type: values real checkpoints ship where the tiny default would hide a behaviour (IBM Granite 3.x scales
# each residual branch by 0.22; the default 1.0 would not exercise the scaled-branch derivation).
REALISTIC = {"granite": {"residual_multiplier": 0.22}, "granitemoe": {"residual_multiplier": 0.22},
             "granitemoeshared": {"residual_multiplier": 0.22},
             # DBRX names its widths its own way and nests attention / MoE settings (DBRX-Instruct's clip_qkv: 8)
             "dbrx": {"d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": 256,
                      "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
                      "ffn_config": {"ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2}},
             # defaults that do not build at 2 layers: Cohere-compass's default config has no rope parameters
             # for its own layer type; Moshi's decoder leaves the audio vocabulary unset; LFM2 and LFM2-MoE
             # interleave short convolutions with attention as shipped (a hybrid; LFM2's default is all attention)
             "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default",
                                                                           "rope_theta": 10000.0}}},
             "moshi": {"audio_vocab_size": 64}, "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
             "lfm2": {"layer_types": ["conv", "full_attention"]},
             # Zamba2's default stack is 54 layers (its shared attention block every 6th), Zamba's 76: 4 and 6, two of
             # them hybrid; hybrids at 2 layers would often be recurrent only (no attention KV cache to check)
             "zamba2": {"num_hidden_layers": 4, "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"]},
             "zamba": {"num_hidden_layers": 6, "attn_layer_period": 3, "attn_layer_offset": 2},
             **{t: {"layer_types": ["linear_attention", "full_attention"]}
                for t in ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "kimi_linear", "bailing_hybrid")},
             "granitemoehybrid": {"layer_types": ["mamba", "attention"]}, "bamba": {"attn_layer_indices": [1]},
             "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1},
             # LongCat-Flash counts layers in pairs (num_layers) and adds 256 zero-compute experts by default;
             # BLT hashes byte n-grams into a 500,002-row table
             "longcat_flash": {"num_layers": 1, "zero_expert_num": 2},
             "blt": {"encoder_hash_byte_group_vocab": 512},
             # dots.3-note: per-layer MLA settings for its sliding layers (not small), grouped routing, and
             # vision / audio adapters whose widths must equal the text width
             "dots3_note": {
                 "text_config": {"vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
                                 "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 8,
                                 "intermediate_size": 128, "max_position_embeddings": 256,
                                 "moe_intermediate_size": 64, "n_routed_experts": 4, "num_experts_per_tok": 2,
                                 "n_shared_experts": 1, "kv_lora_rank": 16, "q_lora_rank": 32,
                                 "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "pad_token_id": 0,
                                 "bos_token_id": 1, "eos_token_id": 2, "n_group": 2, "topk_group": 1,
                                 "layer_types": ["indexed_attention", "indexed_attention"],
                                 "mlp_layer_types": ["dense", "sparse"]},
                 "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                   "intermediate_size": 64, "patch_size": 14, "mlp_layer_types": ["dense"],
                                   "adapter_in_dim": 32, "adapter_out_dim": 64},
                 "audio_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 64, "adapter_input_size": 32, "adapter_out_dim": 64,
                                  "downsample_hidden_size": 32}},
             # Gemma-4 unified: the vision embedder's own widths (3840 by default, 29M parameters); the
             # assistants (drafters) take a Gemma-4 text config without per-layer inputs
             "gemma4_unified": {"vision_config": {"patch_size": 14, "mm_embed_dim": 32, "mm_posemb_size": 64,
                                                  "output_proj_dims": 32}},
             "gemma4_assistant": {"text_config": {"model_type": "gemma4_text", "hidden_size_per_layer_input": 0,
                                                  "vocab_size_per_layer_input": 0}},
             "gemma4_unified_assistant": {"text_config": {"model_type": "gemma4_text"}},
             # Kolibri-1.1 (transformers >= 5.25): its indexer has at most as many heads as a key head serves
             "kolibri1_1": {"index_num_heads": 2}}
# Gemma-4 with per-layer inputs (the E-models' per-layer embeddings, a third write after the MLP) is refused with
# that reason (tests/test_models_derive.py); the matrix validates the architecture without them.
NO_PER_LAYER_INPUTS = {"gemma4", "gemma4_text"}
# Vision / audio towers of multimodal checkpoints: small too (only the fields each sub-config takes).
SMALL_TOWER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "image_size": 28, "patch_size": 14, "depth": 1, "embed_dim": 32, "num_heads": 2}
# Encoder-only architectures transformers also registers as causal LMs (``is_decoder=True``): post-LayerNorm
# blocks, whose residual stream is re-normalised inside each block.
POST_LN = {"bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert",
           "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl",
           "xmod", "xlm", "xlnet", "openai-gpt", "ctrl", "biogpt", "cpmant", "git", "trocr", "prophetnet"}


@dataclass
class Result:
    model_type: str
    status: str  # validated | refused | failing
    adapter: str  # the family (hand-written) or derived:TYPE, or "-"
    detail: str


def _accepted(cls: type) -> set[str]:
    names = set(inspect.signature(cls.__init__).parameters) | set(getattr(cls, "attribute_map", {}))
    return names - {"self", "kwargs"}


def tiny_config(model_type: str):
    """The model type's own config class with small widths (only the fields it takes)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    kw = {**_small(cls), **REALISTIC.get(model_type, {})}
    if model_type in NO_PER_LAYER_INPUTS:
        no_ple = {"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0}
        kw = {k: no_ple.get(k, v) for k, v in kw.items()}
        sub = (getattr(cls, "sub_configs", None) or {}).get("text_config")
        if isinstance(sub, type) and "text_config" in _accepted(cls) and "text_config" not in kw:
            kw["text_config"] = {**_small(sub), **{k: v for k, v in no_ple.items() if k in _accepted(sub)}}
    cfg = None
    for _ in range(4):  # a validator that refuses a small value names the field: leave that one at its default
        try:
            cfg = _with_towers(cls, kw)
            break
        except Exception as e:
            named = [k for k in kw if k in str(e)]
            if not named:
                raise
            kw = {k: v for k, v in kw.items() if k not in named}
    cfg = cfg if cfg is not None else _with_towers(cls, kw)
    if model_type in NO_PER_LAYER_INPUTS:
        for c in (cfg, getattr(cfg, "text_config", None)):
            if c is not None and hasattr(c, "hidden_size_per_layer_input"):
                c.hidden_size_per_layer_input = 0
    return cfg


def _with_towers(cls: type, kw: dict):
    kw = dict(kw)
    for key, sub in (getattr(cls, "sub_configs", None) or {}).items():
        if key in _accepted(cls) and key not in kw and isinstance(sub, type) and sub.__name__ != "AutoConfig":
            kw[key] = _small(sub) if key == "text_config" else {k: v for k, v in SMALL_TOWER.items()
                                                              if k in _accepted(sub)}
    cfg = cls(**kw)
    for key in (getattr(cls, "sub_configs", None) or {}):  # sub-configs built from defaults (AutoConfig)
        sub = getattr(cfg, key, None)
        if sub is not None and hasattr(sub, "to_dict") and key not in kw:
            small = SMALL if key == "text_config" else SMALL_TOWER
            for k, v in small.items():
                if hasattr(sub, k) and not isinstance(getattr(sub, k), (list, dict)):
                    setattr(sub, k, v)
    return cfg


def _small(cls: type) -> dict:
    ok = _accepted(cls)
    kw = {k: v for k, v in SMALL.items() if k in ok}
    if "qk_rope_head_dim" in ok and "head_dim" in ok:  # multi-head latent attention: rotary width = head_dim
        kw["head_dim"] = kw["qk_rope_head_dim"]
    if "kv_lora_rank" in ok and "num_key_value_heads" in ok:  # its keys have one head per query head
        kw["num_key_value_heads"] = kw["num_attention_heads"]
    return kw


def _randomise(model: torch.nn.Module) -> None:
    """Weights scaled up so layers differ visibly (as tests/tiny_models.py does)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "norm" in name or "ln" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "weight" in name else 0.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in model.named_buffers():  # per-layer output scalars (Gemma-4's layer_scalar): not 1
            if name.endswith("layer_scalar") and b.is_floating_point():
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


MAX_PARAMS = 20_000_000


def _build(tf, cfg):
    try:
        return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    except (ValueError, TypeError):
        return tf.AutoModelForCausalLM.from_config(cfg)


def tiny_model(model_type: str) -> torch.nn.Module:
    """The model type's tiny random model as the matrix checks it (``tiny_config``, eager attention where taken,
    weights randomised, eval mode; transformers' warnings silenced)."""
    import transformers as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = _build(tf, tiny_config(model_type))
    _randomise(hf)
    return hf.eval()


def _first_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return f"{type(e).__name__}: {s[:200]}"


def check(model_type: str) -> Result:
    """Build, wrap and check one model type (see module docstring)."""
    import transformers as tf

    from actlab.errors import UnsupportedArchitectureError
    from actlab.models import Model
    from actlab.models.derive import REFUSED, refusal

    if model_type in POST_LN:
        return Result(model_type, "refused", "-", "post-LayerNorm encoder architecture used as a decoder: the "
                      "residual stream is re-normalised inside each block")
    if model_type in REFUSED:
        return Result(model_type, "refused", "-", "recurrent in depth (two modules applied in loops), no stack of "
                      "layers" if model_type == "hrm_text" else
                      "recurrent / state-space: no attention + MLP residual blocks")
    try:
        cfg = tiny_config(model_type)
    except Exception as e:
        return Result(model_type, "failing", "-", f"config: {_first_line(e)}")
    if getattr(cfg, "is_encoder_decoder", False):
        return Result(model_type, "refused", "-", "encoder-decoder")
    why = refusal(cfg)  # refused from the config alone, before any weights (AltUp's parallel streams, drafters)
    if why:
        return Result(model_type, "refused", "-", _reason(why) or why.split(";")[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):  # size it first: a config that does not shrink is not built
                n = sum(p.numel() for p in _build(tf, cfg).parameters())
            if n > MAX_PARAMS:
                return Result(model_type, "failing", "-", f"build: the tiny config still has {n / 1e6:.0f}M "
                              "parameters (its sub-configs do not take the small widths)")
            hf = _build(tf, cfg)
    except Exception as e:
        return Result(model_type, "failing", "-", f"build: {_first_line(e)}")
    _randomise(hf)
    hf.eval()
    try:
        m = Model.wrap(hf, None, validate=True, name=model_type)
    except UnsupportedArchitectureError as e:
        if "the probe forward failed" in str(e):  # a tiny config transformers' own code cannot run is not ours
            try:
                with torch.no_grad():
                    hf(input_ids=torch.tensor([PROBE]) % int(hf.get_input_embeddings().weight.shape[0]),
                       use_cache=False)
            except Exception as e2:
                return Result(model_type, "failing", "-",
                              f"forward: transformers' own forward fails ({_first_line(e2)})")
        reason = _reason(str(e))
        return Result(model_type, "refused" if reason else "failing", "-", reason or _first_line(e))
    except Exception as e:
        return Result(model_type, "failing", "-", f"wrap: {_first_line(e)}")
    fam = m.adapter.family
    if m.adapter.blocks_only:  # the stream between blocks only: what a block-level adapter must still get right
        try:
            _equalities(m)
            extra = [_padding(m), _kv_cache(m), _prefix_reuse(m), _block_patching(m), _tuned_lens(m)]
        except Exception as e:
            return Result(model_type, "failing", fam, _first_line(e))
        why = ("per-layer inputs" if "per-layer-input" in m.adapter.blocks_only else
               "several sub-layers per layer" if "several sub-layers" in m.adapter.blocks_only else
               "hybrid: recurrent or linear-attention layers" if "a hybrid: " in m.adapter.blocks_only else
               "the residual is rescaled inside the block")
        return Result(model_type, "partial", fam, f"block outputs only ({why}); " + "; ".join(extra))
    try:
        _equalities(m)
        extra = [_kv_cache(m), _prefix_reuse(m), _patching(m), _tuned_lens(m), _orthogonalisation(m),
                 _attention_internals(m)]
    except Exception as e:
        return Result(model_type, "failing", fam, _first_line(e))
    how = "parallel" if m.parallel else "sequential"
    moe = f"; MoE router {m.adapter.router}" if m.adapter.router else ""
    return Result(model_type, "validated", fam, f"{how}{moe}; " + "; ".join(extra))


# What a derivation's or the config's refusal says (a marker in the message), the label the table gives it, and
# where the reason starts in the message; the reason runs to its first ';'.
REASONS = [(" is a hybrid: ", "hybrid", " is a hybrid: "),
           (" uses hyper-connections ", "hyper-connections", ": each layer "),
           (" is recurrent in depth: ", "recurrent in depth", " in depth: "),
           ("stacks (", "several stacks", ": "),
           ("speculative-decoding drafter", "speculative-decoding drafter", ": "),
           (" uses AltUp ", "parallel streams", ": ")]


def _reason(message: str) -> str | None:
    """The table's detail for a refusal with a known reason ("LABEL: reason"); None for anything else."""
    for marker, label, start in REASONS:
        if marker in message:
            return f"{label}: " + message.split(start, 1)[-1].split(";")[0]
    return None


def _patched_layer(m) -> int:
    """Where the patching checks patch: layer 0, or the last layer on a model that carries a second state between
    layers (said at load), where nothing follows."""
    return m.n_layers - 1 if m.adapter.carried_state else 0


PROBE, OTHER = (5, 17, 33, 9, 61, 42, 77), (8, 3, 21, 11, 50, 6, 90)  # token ids of the checks' prompts


def _ids(m, tokens: tuple[int, ...] = PROBE) -> torch.Tensor:
    """A one-row prompt of ``tokens`` within the model's vocabulary."""
    return torch.tensor([tokens]) % m.vocab_size


def _close(got: torch.Tensor, want: torch.Tensor, atol: float) -> bool:
    """Logits equal up to ``atol`` relative to their largest magnitude (rtol 1e-4)."""
    return torch.allclose(got, want, atol=atol * (1 + float(want.abs().max())), rtol=1e-4)


@torch.no_grad()
def _equalities(m) -> None:
    """resid_post == hidden_states; actlab steering == a hand hook; lens(last resid_post) == logits."""
    from actlab.hooks.additions import Add

    ids = _ids(m)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pts = [f"blocks.{i}.resid_post" for i in range(m.n_layers)]
    with m.capture(pts, dtype=torch.float64) as acts:
        out = m.hf(**batch, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    for i in range(m.n_layers - 1):  # the last entry is after the final norm in most families
        if not torch.allclose(acts[pts[i]], hs[i + 1].double(), atol=1e-5, rtol=1e-4):
            raise AssertionError(f"resid_post of layer {i} != hidden_states[{i + 1}]")
    lens = m.unembed(acts[pts[-1]].to(m.dtype))
    if not torch.allclose(lens.double(), out.logits.double(), atol=1e-4 * (1 + float(out.logits.abs().max()))):
        raise AssertionError("lens(last resid_post) != logits")
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(1))
    with m.edit(Add({"blocks.0.resid_post": v}, 2.0, positions="all")):
        steered = m.hf(**batch, use_cache=False).logits

    def hook(_mod, _args, output):
        if isinstance(output, tuple):
            return (output[0] + 2.0 * v.to(output[0].dtype), *output[1:])
        return output + 2.0 * v.to(output.dtype)

    h = m.layers[0].register_forward_hook(hook)
    try:
        by_hand = m.hf(**batch, use_cache=False).logits
    finally:
        h.remove()
    if not torch.allclose(steered, by_hand, atol=1e-5, rtol=1e-4):
        raise AssertionError("steering resid_post 0 != a hand-written hook on layer 0")


def _word_tokenizer(n: int):
    """A word-level tokenizer over ``t0 .. t{n-1}`` (token ``ti`` is id ``i``): text for the tiny models, which
    have no tokenizer of their own."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(n)}, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", unk_token="t3")


def _tuned_lens(m) -> str:  # not under no_grad: it trains
    """An untrained tuned lens is the logit lens at every layer (identity translators through the same final
    norm and unembedding); training it through this adapter (every layer's resid_pre, gradients through the
    final norm and unembedding) lowers its KL to the model's output."""
    import actlab
    from actlab.tuned_lens import TunedLens, train_tuned_lens

    ids = _ids(m)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    plain = actlab.logit_lens(m, batch, points="resid_post", top_k=3)
    tuned = actlab.logit_lens(m, batch, points="resid_post", top_k=3, lens=TunedLens.for_model(m))
    if not (torch.equal(plain.top_ids, tuned.top_ids) and torch.allclose(plain.top_probs, tuned.top_probs)):
        raise AssertionError("an untrained tuned lens != the logit lens")
    g = torch.Generator().manual_seed(2)
    n = min(m.vocab_size, 256)
    texts = [" ".join(f"t{int(t)}" for t in torch.randint(4, n, (int(k),), generator=g))
             for k in torch.randint(5, 10, (8,), generator=g)]
    was, m.tokenizer = m.tokenizer, _word_tokenizer(n)
    try:
        _, history = train_tuned_lens(m, texts, steps=6, batch_size=4, max_length=12, lr=1e-2)
    finally:
        m.tokenizer = was
    first, last = history[0]["kl"], history[-1]["kl"]
    if not last < first:
        raise AssertionError(f"training the tuned lens did not lower its KL ({first:.4g} -> {last:.4g})")
    return "tuned lens = logit lens untrained, training lowers its KL"


@torch.no_grad()
def _patching(m) -> str:
    """Patching: another prompt's resid_mid and mlp_out of layer 0 (every position) written into this run give
    exactly that prompt's logits (the write paths of a composite and a plain kind)."""
    from actlab.hooks.interventions import Replace

    a, b = _ids(m), _ids(m, OTHER)
    layer = _patched_layer(m)
    pts = [f"blocks.{layer}.resid_mid", f"blocks.{layer}.mlp_out"]
    with m.capture(pts, dtype=None) as src:
        want = m.hf(input_ids=a, use_cache=False).logits
    edits = [Replace(p, lambda x, v=src[p]: v.to(x.dtype)) for p in pts]
    with m.edit(*edits):
        got = m.hf(input_ids=b, use_cache=False).logits
    if not _close(got, want, 1e-4):
        raise AssertionError(f"patching resid_mid and mlp_out of layer {layer} != the source prompt's logits")
    return "patching exact"


@torch.no_grad()
def _prefix_reuse(m) -> str:
    """The A/B sweep's path: the prompts' tokens before the end of instruction run once and their KV cache is
    shared by every steering cell (ragged rows, left padding) - equal to steering each cell from the boundary on
    over the whole prompts."""
    from actlab.hooks.additions import Add
    from actlab.hooks.points import HookPoint
    from actlab.hooks.positions import eoi_start
    from actlab.steering.prefix import cell_logits, pad_rows, prefix_reuse_exact

    reuse = prefix_reuse_exact(m)
    eoi = [7, 8, 9]
    rows = [[1, *PROBE, *eoi, 12], [1, *OTHER[:4], *eoi, 14, 15]]
    starts = [int(eoi_start(torch.tensor([r]), eoi)[0]) for r in rows]
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    cell = {HookPoint(0, "resid_post"): 2 * v, HookPoint(m.n_layers - 1, "resid_pre"): -v}
    got = cell_logits(m, rows, starts, [{}, cell], batch_size=2, cells_per_batch=2)
    ids, mask = pad_rows(rows, 0, "left")
    with m.edit(Add(dict(cell), 1.0, positions="from_eoi", eoi_ids=eoi)):
        ref = m.last_logits(ids, mask)
    plain = m.last_logits(ids, mask)
    if not (_close(got[:, 1], ref, 2e-5) and _close(got[:, 0], plain, 2e-5)):
        raise AssertionError("cells sharing the prompts' prefix cache != steering each cell on whole prompts")
    return "sweep prefix reuse exact" if reuse else "sweep exact (whole prompts: no reusable prefix cache)"


@torch.no_grad()
def _padding(m) -> str:
    """Batched = unbatched: a left-padded row's block outputs equal the same prompt's run alone (a recurrent
    mixer must not carry the padding into its state)."""
    short, long = _ids(m)[:, :4], _ids(m, OTHER)
    mask = torch.ones(2, long.shape[1], dtype=torch.long)
    mask[0, :3] = 0
    pts = [f"blocks.{i}.resid_post" for i in range(m.n_layers)]
    with m.capture(pts, dtype=torch.float64) as both:  # the wrapper derives position_ids from the mask
        m(torch.cat([torch.cat([torch.zeros_like(long[:, :3]), short], 1), long]), mask, use_cache=False)
    for row, alone_ids in ((0, short), (1, long)):
        with m.capture(pts, dtype=torch.float64) as alone:
            m(alone_ids, torch.ones_like(alone_ids), use_cache=False)
        for p in pts:  # captures hold each row's tokens from index 0 (padding moved to the end)
            want = alone[p][0]  # float32 kernels batch differently (reference scans; 2e-4 over Zamba2's 54
            # layers): 1e-3 of the largest value, as at load (padding that leaks changes far more)
            if float((both[p][row, :alone_ids.shape[1]] - want).abs().max()) > 1e-3 * (1 + float(want.abs().max())):
                raise AssertionError(f"{p} of a left-padded row != the prompt alone (batched != unbatched)")
    return "left-padded batch = each prompt alone"


@torch.no_grad()
def _block_patching(m) -> str:
    """Patching at the block outputs: another prompt's resid_post of layer 0 (every position) written into this
    run gives exactly that prompt's logits."""
    from actlab.hooks.interventions import Replace

    a, b = _ids(m), _ids(m, OTHER)
    point = f"blocks.{_patched_layer(m)}.resid_post"
    with m.capture(point, dtype=None) as src:
        want = m.hf(input_ids=a, use_cache=False).logits
    with m.edit(Replace(point, lambda x: src[point].to(x.dtype))):
        got = m.hf(input_ids=b, use_cache=False).logits
    if not _close(got, want, 1e-4):
        raise AssertionError(f"patching {point} != the source prompt's logits")
    if m.adapter.carried_state:
        return (f"patching exact at the last layer (earlier layers pass {m.adapter.carried_state} on, which "
                "patching the residual leaves alone)")
    return "patching exact"


@torch.no_grad()
def _kv_cache(m) -> str:
    """Steered greedy generation with the KV cache (prefix reused) equals the same steering recomputed on the
    whole sequence at every step."""
    from actlab.hooks.additions import Add

    ids = _ids(m)[:, :5]
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(4))

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        cached = m.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1]:]
        seq = ids
        for _ in range(len(cached)):  # generation stops early at an end-of-sequence token
            nxt = m.hf(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        return cached, seq[0, ids.shape[1]:]

    try:
        m.generate(ids, max_new_tokens=2, do_sample=False)
    except Exception as e:  # transformers' own generation fails for this tiny config (an all-recurrent hybrid)
        return f"KV cache not checked: transformers' own generation fails ({type(e).__name__})"
    with m.edit(Add({"blocks.0.resid_post": v}, 3.0, positions="all")):
        cached, whole = both()
    if not torch.equal(cached, whole):
        if not torch.equal(*both()):  # the model's own cache already disagrees (Moshi on transformers 4.x)
            return "KV cache not checked: this transformers' own cached generation != recomputed, unsteered"
        raise AssertionError("steered generation with the KV cache != recomputed without it")
    return "steered generation with KV cache exact"


@torch.no_grad()
def _orthogonalisation(m) -> str:
    """Weight orthogonalisation equals hook ablation of the same direction, or a clear refusal."""
    from actlab.errors import InputError
    from actlab.steering import ablate, orthogonalize

    ids = _ids(m)
    r = torch.randn(m.d_model, generator=torch.Generator().manual_seed(2))
    try:
        baked = orthogonalize(m, r)
    except InputError as e:
        why = ("a mixture of experts" if "mixture of experts" in str(e) else "not exact on a probe"
               if "relative error" in str(e) else "attention output not one linear map")
        return f"orthogonalisation refused ({why}; hook ablation instead)"
    with ablate(m, r):
        hooked = m.hf(input_ids=ids, use_cache=False).logits
    got = baked.hf(input_ids=ids, use_cache=False).logits
    if not _close(got, hooked, 2e-4):
        raise AssertionError("weight orthogonalisation != hook ablation")
    return "orthogonalisation = hook ablation"


@torch.no_grad()
def _attention_internals(m) -> str:
    """Reading attn.pattern / attn.result leaves the logits bit-equal; the pattern's rows sum to 1; the per-head
    results plus bias sum to the output projection's output."""
    if m.adapter.attn_core is None:
        return "q/k/v/pattern n/a (its attention does not call transformers' attention interface)"
    ids = _ids(m)
    ref = m.hf(input_ids=ids, use_cache=False).logits
    seen = {}
    o = m.module("attn_o", 0) or m.module("attn_proj", 0)
    if o is None:
        with m.capture(["blocks.0.attn.pattern"]) as acts:
            out = m.hf(input_ids=ids, use_cache=False).logits
        pat = acts["blocks.0.attn.pattern"]
        if not torch.equal(out, ref) or not torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-4):
            raise AssertionError("attention pattern: logits changed or rows do not sum to 1")
        return "attention pattern exact (no plain output projection: no attn.z / attn.result)"
    h = o.register_forward_hook(lambda mod, a, out: seen.setdefault("o", out))
    try:
        with m.capture(["blocks.0.attn.pattern", "blocks.0.attn.result"]) as acts:
            out = m.hf(input_ids=ids, use_cache=False).logits
    finally:
        h.remove()
    if not torch.equal(out, ref):
        raise AssertionError("reading attention internals changed the logits")
    pat = acts["blocks.0.attn.pattern"]
    if not torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-4):
        raise AssertionError("attention pattern rows do not sum to 1")
    bias = getattr(o, "bias", None)
    total = acts["blocks.0.attn.result"].sum(2) + (bias.float() if bias is not None else 0)
    want = seen["o"][0] if isinstance(seen["o"], tuple) else seen["o"]
    if not torch.allclose(total, want.float().reshape(total.shape), atol=1e-4):
        raise AssertionError("per-head attention results do not sum to the output projection's output")
    return "attention internals exact"


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


BEGIN, END = "<!-- support matrix: begin (generated) -->", "<!-- support matrix: end -->"


def run_all(types: list[str] | None = None, *, verbose: bool = False) -> list[Result]:
    import time

    out = []
    for mt in types or causal_lm_types():
        t0 = time.time()
        r = check(mt)
        out.append(r)
        if verbose:
            print(f"{mt:28s} {r.status:10s} {time.time() - t0:5.1f}s {r.adapter:24s} {r.detail[:140]}", flush=True)
    return out


def table(results: list[Result]) -> str:
    """The generated part of docs/support.md."""
    import transformers

    counts = {s: sum(r.status == s for r in results) for s in ("validated", "partial", "refused", "failing")}
    lines = [BEGIN, "", f"transformers {transformers.__version__}: {len(results)} causal-LM model types; "
             f"{counts['validated']} validated, {counts['partial']} partial (block outputs only), "
             f"{counts['refused']} refused, {counts['failing']} failing.", "",
             "| model type | status | adapter | detail |", "|---|---|---|---|"]
    for r in results:
        detail = r.detail.replace("|", "/")
        lines.append(f"| `{r.model_type}` | {r.status} | {r.adapter} | {detail[:220]} |")
    return "\n".join([*lines, "", END])


def parse_table(text: str) -> tuple[str | None, dict[str, str]]:
    """(transformers version, {model type: status}) from docs/support.md."""
    import re

    m = re.search(r"^transformers (\S+): ", text, re.M)
    rows = dict(re.findall(r"^\| `([^`]+)` \| (\w+) \|", text, re.M))
    return (m.group(1) if m else None), rows


if __name__ == "__main__":
    from collections import Counter

    types = [a for a in sys.argv[1:] if not a.startswith("--")]
    res = run_all(types or None, verbose=True)
    print(dict(Counter(r.status for r in res)))
    if "--write" in sys.argv and not types:
        text = DOC.read_text(encoding="utf-8")
        head, tail = text.split(BEGIN)[0], text.split(END)[1]
        DOC.write_text(head + table(res) + tail, encoding="utf-8")
        print(f"wrote {DOC}")
