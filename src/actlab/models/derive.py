"""A derived adapter for a decoder-only model no hand-written adapter covers: its hook sites read from its own
module tree and from one probe forward, never from names alone.

1. **Layers**: the outermost ``nn.ModuleList`` holding ``num_hidden_layers`` modules of one class; ``base`` is
   its parent.
2. **One probe forward** (a few token ids) records layer 0's input and output and the input and output of each
   of its children (and of every linear map inside them).
3. **The block's algebra decides the roles**: a sequential block has a child ``a`` whose output is what the
   attention adds (``resid_mid = resid_pre + out(a)``, read as the input of a child ``n``) and a child ``m``
   with ``resid_post = resid_mid + out(m)``; a parallel one has ``resid_post = resid_pre + out(a) + out(m)``.
   Children named like attention / MLP are tried first, then norms (sandwich norms: Gemma-2's post-norms are
   what the residual receives). Inside the MLP, ``mlp_down`` is the linear map whose output is the MLP's;
   inside attention, ``attn_proj`` the one whose output is the attention's.
4. **Final norm**: a norm child of ``base`` (or of the root) for which unembedding the last layer's output
   through it reproduces the logits, up to one scalar (a logit scale, as Cohere and Granite have), recorded.

A block that rescales its whole output by a scalar attribute of its own (Gemma-4's ``layer_scalar``) is solved
with that scalar divided out (``resid_scale``). A block that still does not decompose, but whose output the
final norm reads (step 4), gets a **block-outputs-only** adapter (``blocks_only``: the reason): only the stream
between blocks is hooked, and validation checks every layer against the model's hidden states. A **hybrid**
(a recurrent / state-space / convolution / linear-attention mixer in some layer, or layers that differ) goes
there directly, after one more check: a left-padded prompt must give the same layer outputs as the prompt alone
(some implementations carry the padding into the recurrent state; those are refused with the difference).

Whatever cannot be matched raises :class:`UnsupportedArchitectureError` naming the part, never a guess; the
load-time validation (:mod:`actlab.models.validate`) then checks the result like any hand-written adapter.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError
from ..hooks.attention import _uses_interface
from .adapters import ArchAdapter

ATTN_WORDS = ("attn", "attention", "mixer", "self_attn", "temporal")
MLP_WORDS = ("mlp", "feed_forward", "ffn", "moe", "experts", "ff", "channel")
# Recurrent / state-space families (every layer recurrent; refused from the config). Hybrids - some layers
# recurrent - are read at their block outputs where left padding does not leak (``_refuse_padding_leak``).
REFUSED = {"mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma", "reformer",
           "hrm_text"}  # HRM: two modules applied in loops (recurrent in depth), no stack of layers
# What marks a recurrent / state-space / linear-attention mixer inside a hybrid model's layer: a child name
# with one of these words (between underscores), or a class name with one of these parts.
RECURRENT_NAMES = re.compile(r"(^|_)(mamba|ssm|conv|linear_attn|rwkv|recurrent|deltanet|gated_delta)(_|$|\d)")
RECURRENT_CLASSES = ("Mamba", "SSM", "Ssm", "ShortConv", "Conv1d", "Rwkv", "Recurrent", "DeltaNet", "GatedDelta",
                     "DeltaAttention", "LinearAttention", "Lightning")


def refusal(config: Any) -> str | None:
    """Why a model type is refused before loading (encoder-decoder, recurrent, several parallel residual streams);
    None when it is not."""
    mt = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        return f"model_type={mt!r} is an encoder-decoder model; actlab reads decoder-only causal LMs"
    if mt == "hrm_text":
        return (f"model_type={mt!r} is recurrent in depth (the Hierarchical Reasoning Model applies two modules in "
                "loops): there is no stack of layers whose residual stream actlab could name")
    if mt in REFUSED:
        return (f"model_type={mt!r} is a recurrent / state-space model: its blocks have no attention and MLP "
                "sub-blocks of the residual form actlab reads")
    if str(mt).endswith("_assistant") and getattr(config, "backbone_hidden_size", None):
        return (f"model_type={mt!r} is a speculative-decoding drafter: it reads another model's hidden states "
                f"(backbone_hidden_size={config.backbone_hidden_size}) and KV cache, not token ids; load the model it "
                "drafts for")
    altup = getattr(text_config_of(config), "altup_num_inputs", None)
    if isinstance(altup, int) and altup > 1:
        return (f"model_type={mt!r} uses AltUp (altup_num_inputs={altup}): each layer carries {altup} parallel "
                "copies of the residual stream that it predicts and corrects, not one stream of d_model that "
                "attention and MLP add to; register an adapter that names the stream to read (docs/adapters.md)")
    return None


def text_config_of(config: Any) -> Any:
    """The language model's config (a multimodal checkpoint's text tower; the config itself otherwise)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _config_int(config: Any, names: tuple[str, ...], above: int) -> int | None:
    """The first of ``names`` on the text config that is an int greater than ``above``."""
    text = text_config_of(config)
    for attr in names:
        v = getattr(text, attr, None)
        if isinstance(v, int) and v > above:
            return v
    return None


def n_layers_of(config: Any) -> int | None:
    return _config_int(config, ("num_hidden_layers", "n_layer", "num_layers", "n_layers"), 0)


def _is_norm(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return "norm" in name and not any(isinstance(c, nn.Linear) for c in m.modules())


def _linear_like(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(m, nn.Linear) or (type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor))


def _nested(name: str) -> bool:
    """A module inside an element of a ModuleList (``model.layers.0.self_attn``): not a stack of layers."""
    return any(part.isdigit() for part in name.split("."))


def _layer_lists(hf_model: nn.Module) -> Iterator[tuple[str, nn.ModuleList]]:
    """The ModuleLists that could hold decoder layers: not inside another list's element, elements with
    children."""
    for name, m in hf_model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and name and not _nested(name) \
                and any(True for _ in m[0].children()):
            yield name, m


def _stacks(hf_model: nn.Module) -> list[str]:
    """Paths of the lists of layers (named as layer stacks, one class) that are not inside another list."""
    return [name for name, m in _layer_lists(hf_model)
            if name.rsplit(".", 1)[-1] in ("layers", "h", "blocks", "layer") and len({type(x) for x in m}) == 1]


def _groups_layers(stack: nn.ModuleList, n: int) -> bool:
    """Whether each element of ``stack`` holds ``n / len(stack)`` sub-layers (a ModuleList of that length):
    a stack that groups the config's ``n`` layers, as LongCat-Flash's does in pairs."""
    k, rest = divmod(n, len(stack))
    return k > 1 and rest == 0 and all(any(isinstance(c, nn.ModuleList) and len(c) == k for c in layer.children())
                                       for layer in stack)


def find_layers(hf_model: nn.Module, n: int) -> str:
    """Path of the decoder layer list: the outermost ModuleList of ``n`` modules of one class (not one inside a
    layer), or of several classes (a hybrid's attention and recurrent layers); else the one stack of layers that
    groups them, each layer holding ``n / len`` sub-layers (LongCat-Flash counts two attention + MLP pairs per
    decoder layer in num_hidden_layers)."""
    lists = [(name, m) for name, m in _layer_lists(hf_model) if len(m) == n]
    found = [(name, m) for name, m in lists if len({type(x) for x in m}) == 1] or lists  # a hybrid mixes classes
    if not found:
        stacks = [s for s in _stacks(hf_model) if _groups_layers(hf_model.get_submodule(s), n)]
        if len(stacks) == 1:
            return stacks[0]
        raise UnsupportedArchitectureError(
            f"{type(hf_model).__name__}: no list of {n} decoder layers (an nn.ModuleList of num_hidden_layers "
            "blocks of one class) was found in its module tree; register an adapter: "
            "actlab.register_adapter(actlab.ArchAdapter(...)) (see docs/adapters.md)")
    return min(found, key=lambda x: x[0].count("."))[0]


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    if hasattr(x, "last_hidden_state"):
        return x.last_hidden_state
    return None


@contextmanager
def _recording(mods: dict[str, nn.Module], rec: dict[str, dict[str, torch.Tensor]]) -> Iterator[None]:
    """Record the first tensor input (positional, or ``hidden_states``) and output of each module (first call)."""
    handles = []

    def pre(name: str):
        def fn(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            x = _first_tensor(args) if args else None
            if x is None:
                x = kwargs.get("hidden_states", kwargs.get("x", kwargs.get("input")))
            if isinstance(x, torch.Tensor) and "in" not in rec.setdefault(name, {}):
                rec[name]["in"] = x.detach().double().clone()
        return fn

    def post(name: str):
        def fn(_m: nn.Module, _args: Any, out: Any) -> None:
            t = _first_tensor(out)
            if isinstance(t, torch.Tensor) and "out" not in rec.setdefault(name, {}):
                rec[name]["out"] = t.detach().double().clone()
        return fn

    try:
        for name, m in mods.items():
            handles.append(m.register_forward_pre_hook(pre(name), with_kwargs=True))
            handles.append(m.register_forward_hook(post(name)))
        yield
    finally:
        for h in handles:
            h.remove()


class _Calls:
    """What the probe forward saw of the layer list: calls per layer, and the name of a second tensor a layer
    returns that the next layer takes as input (a state carried beside the residual stream), if any."""

    def __init__(self, n: int) -> None:
        self.counts = [0] * n
        self.extra: list[torch.Tensor] = []  # layer 0's outputs after the first
        self.carried: str | None = None


@contextmanager
def _layer_calls(layers: nn.ModuleList) -> Iterator[_Calls]:
    calls = _Calls(len(layers))
    handles = []

    def count(i: int):
        def fn(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.counts[i] += 1
            if i != 1 or calls.counts[1] != 1:
                return
            names = [p for p in inspect.signature(type(_m).forward).parameters if p != "self"]
            if not names:
                return
            given = {**{names[k]: a for k, a in enumerate(args) if k < len(names)}, **kwargs}
            first = given.get(names[0])
            # a state layer 0 returned beside the residual (Zaya's router state); else a second stream of the
            # residual's shape the model feeds every layer (Zamba's original_hidden_states: the embeddings)
            calls.carried = next((k for k, v in given.items() if k != names[0]
                                  and any(v is t for t in calls.extra)), None) if calls.extra else None
            if calls.carried is None and isinstance(first, torch.Tensor):
                calls.carried = next((k for k, v in given.items() if k != names[0] and isinstance(v, torch.Tensor)
                                      and v.shape == first.shape and v.is_floating_point()), None)
        return fn

    def out0(_m: nn.Module, _args: Any, out: Any) -> None:
        if not calls.extra and isinstance(out, (tuple, list)):
            calls.extra = [t for t in out[1:] if isinstance(t, torch.Tensor)]

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(count(i), with_kwargs=True))
        if len(layers) > 1:
            handles.append(layers[0].register_forward_hook(out0))
        yield calls
    finally:
        for h in handles:
            h.remove()


def _close(a: torch.Tensor | None, b: torch.Tensor | None, tol: float = 1e-4) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    scale = float(b.abs().max()) + 1e-6
    return float((a - b).abs().max()) <= tol * scale


def _rank(names: list[str], words: tuple[str, ...]) -> list[str]:
    """Names containing one of ``words`` first (in ``words`` order), then the rest in module order."""
    def key(n: str) -> int:
        low = n.lower()
        return next((i for i, w in enumerate(words) if w in low), len(words))
    return sorted(names, key=key)


@torch.no_grad()
def derive_adapter(hf_model: nn.Module, *, tol: float = 1e-4) -> ArchAdapter:
    """An :class:`ArchAdapter` for ``hf_model`` derived from its module tree and one probe forward (see module
    docstring); raises :class:`UnsupportedArchitectureError` naming what could not be matched."""
    config = hf_model.config
    mt = getattr(config, "model_type", type(hf_model).__name__)
    why = refusal(config)
    if why:
        raise UnsupportedArchitectureError(why)
    n = n_layers_of(config)
    if n is None:
        stacks = _stacks(hf_model)
        if len(stacks) > 1:
            raise UnsupportedArchitectureError(
                f"model_type={mt!r}: its layers form {len(stacks)} stacks ({', '.join(stacks)}), not one stack "
                "through which a residual stream runs from the embedding to the logits (byte-level or multi-scale "
                "models: one stack reads patches, another bytes); register an adapter for the stack to read "
                "(docs/adapters.md)")
        raise UnsupportedArchitectureError(f"model_type={mt!r}: its config names no layer count")
    layers_path = find_layers(hf_model, n)
    base_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    layers = hf_model.get_submodule(layers_path)
    n = len(layers)  # the stack found may group the config's layers (LongCat-Flash: two sub-layers per layer)
    block = layers[0]
    children = dict(block.named_children())
    hybrid = _hybrid(layers)
    hc = [f"{n}: {type(c).__name__}" for n, c in children.items()
          if "HyperConnection" in type(c).__name__ or "hyper_connection" in n]
    if hc:
        raise UnsupportedArchitectureError(
            f"model_type={mt!r} uses hyper-connections ({', '.join(hc)}): each layer mixes several residual streams "
            "per token, not one residual stream of d_model that attention and MLP add to; register an adapter "
            "that names the stream to read (docs/adapters.md)")
    inner = {f"{c}.{k}": m for c, cm in children.items() for k, m in cm.named_modules() if k and _linear_like(m)}
    inner.update({c: m for c, m in children.items() if _linear_like(m)})
    last = layers[n - 1]
    base = hf_model.get_submodule(base_path) if base_path else hf_model
    norm_cands = {f"{base_path}.{k}" if base_path else k: m for k, m in base.named_children() if _is_norm(m)}
    if base_path:
        norm_cands.update({k: m for k, m in hf_model.named_children() if _is_norm(m)})
    mods = {"__block__": block, "__last__": last, **{f"c:{k}": m for k, m in children.items()},
            **{f"i:{k}": m for k, m in inner.items()}}
    emb = hf_model.get_input_embeddings()
    vocab = int(emb.weight.shape[0])
    ids = (torch.arange(7, device=emb.weight.device) * 7 + 3) % max(vocab, 1)
    rec: dict[str, dict[str, torch.Tensor]] = {}
    was = hf_model.training
    hf_model.eval()
    try:
        with _recording(mods, rec), _layer_calls(layers) as calls:
            out = hf_model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], use_cache=False)
    except Exception as e:
        raise UnsupportedArchitectureError(f"model_type={mt!r}: the probe forward failed ({type(e).__name__}: "
                                           f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    finally:
        hf_model.train(was)
    looped = {i: c for i, c in enumerate(calls.counts) if c > 1}
    if looped:
        i, c = next(iter(looped.items()))
        raise UnsupportedArchitectureError(
            f"model_type={mt!r} is recurrent in depth: decoder layer {i} runs {c} times in one forward "
            f"({len(looped)} of its {n} layers are applied in loops), so a layer index names no single point of "
            "the residual stream; register an adapter for one unrolled pass (docs/adapters.md)")
    carried = calls.carried
    x_in, x_out = rec.get("__block__", {}).get("in"), rec.get("__block__", {}).get("out")
    if x_in is None or x_out is None or x_in.shape != x_out.shape:
        raise UnsupportedArchitectureError(f"model_type={mt!r}: decoder layer 0 ({type(block).__name__}) does not "
                                           "map a residual stream [batch, seq, d_model] to one of the same shape")
    kids = {k[2:]: v for k, v in rec.items() if k.startswith("c:")}
    # a sub-block may work on [batch * seq, d] (OPT's MLP, Llama-4's MoE); hooks see it as [batch, seq, d]
    outs = {k: v["out"].reshape(x_in.shape) for k, v in kids.items()
            if "out" in v and v["out"].numel() == x_in.numel() and v["out"].shape[-1] == x_in.shape[-1]}
    ins = {k: v["in"] for k, v in kids.items() if "in" in v and v["in"].shape == x_in.shape}
    names = list(children)
    norms = [c for c in names if _is_norm(children[c])]
    # sub-blocks first, then norms (a post-norm's output is what the residual receives): the algebra decides
    attn_c = _rank([c for c in names if c in outs and not _is_norm(children[c])], ATTN_WORDS) + norms
    mlp_c = _rank([c for c in names if c in outs and not _is_norm(children[c])], MLP_WORDS) + norms
    readers = _rank(norms, ("post_attention", "pre_feedforward", "ln_2", "norm")) + \
        _rank([c for c in names if c not in norms], MLP_WORDS)
    roles = None
    for free in (False, True) if not hybrid else ():  # plain sums first; then one scale per branch
        roles = _solve(x_in, x_out, ins, outs, attn_c, mlp_c, readers, tol, free)
        if roles:
            break
    if roles is None and not hybrid:  # a sub-block that adds the residual itself (BLOOM's attention, MPT's
        # MLP): its output projection's output is what the stream receives
        lin = {k: v["out"].reshape(x_in.shape) for k, v in ((k[2:], v) for k, v in rec.items() if k.startswith("i:"))
               if "out" in v and v["out"].numel() == x_in.numel() and v["out"].shape[-1] == x_in.shape[-1]}
        outs_all = {**outs, **lin}
        roles = _solve(x_in, x_out, ins, outs_all, attn_c + _rank(list(lin), ATTN_WORDS),
                       mlp_c + _rank(list(lin), MLP_WORDS), readers, tol, False)
        if roles:
            outs = outs_all
    resid_scale = None
    if roles is None and not hybrid:  # a block that rescales its whole output by a scalar (Gemma-4's layer_scalar)
        for attr, value in _block_scalars(block):
            for free in (False, True):
                roles = _solve(x_in, x_out / value, ins, outs, attn_c, mlp_c, readers, tol, free)
                if roles:
                    resid_scale = attr
                    break
            if roles:
                break
    if roles is None:  # the stream between blocks is still there: block outputs only (with the reason)
        if hybrid:
            _refuse_padding_leak(hf_model, ids, mt, hybrid)
            why = f"a hybrid: {hybrid}"
        elif "per_layer_input" in inspect.signature(block.forward).parameters:
            why = ("it adds a per-layer-input branch (Gemma-3n / Gemma-4 E-models: per-layer embeddings gated into "
                   "the stream after the MLP), a third write that attn_out and mlp_out would not cover")
        elif any(isinstance(children[c], nn.ModuleList) for c in names):
            why = (f"decoder layer 0 ({type(block).__name__}) holds several sub-layers per layer (ModuleLists "
                   f"{[c for c in names if isinstance(children[c], nn.ModuleList)]}: LongCat-Flash runs two attention "
                   "+ MLP pairs and a shortcut MoE in each layer), not one attention and one MLP write")
        else:
            why = (f"decoder layer 0 ({type(block).__name__}, children {names}) does not decompose as resid_post = "
                   "resid_pre + attention + MLP through any of its children (the residual itself is rescaled or "
                   "interpolated inside the block)")
        try:
            final_norm, scale, project_out = _final_norm(hf_model, norm_cands, rec["__last__"].get("out"), out,
                                                         tol, mt)
        except UnsupportedArchitectureError:  # nor is the stream between blocks what the final norm reads
            if hybrid:
                raise UnsupportedArchitectureError(
                    f"model_type={mt!r} is a hybrid: {hybrid}, and no final norm turns the last layer's output into "
                    "the logits (the stream between its layers is not the one its head reads); register an adapter "
                    "(docs/adapters.md)") from None
            raise UnsupportedArchitectureError(
                f"model_type={mt!r}: decoder layer 0 ({type(block).__name__}, children {names}) does not decompose "
                "as resid_post = resid_pre + attention + MLP through any of its children, and no final norm turns "
                "the last layer's output into the logits (a recurrent, hybrid or post-norm block?); register an "
                "adapter: actlab.register_adapter(actlab.ArchAdapter(...)) (see docs/adapters.md)") from None
        return ArchAdapter(
            family=f"derived:{mt}", model_types=(mt,), base=base_path, layers=layers_path, attn=None, mlp=None,
            mlp_out=None, mlp_down=None, mlp_norm=None, final_norm=final_norm,
            softcap_attr="final_logit_softcapping" if getattr(config, "final_logit_softcapping", None) else None,
            logit_scale=scale, derived=True, project_out=project_out, carried_state=carried,
            blocks_only=f"model_type={mt!r}: {why}; only the stream between blocks is hooked (embed, resid_pre, "
                        "resid_post, final_norm)")
    attn_mod = _owner(roles["attn"], names, ATTN_WORDS, children)
    mlp_mod = _owner(roles["mlp_out"], names, MLP_WORDS, children)
    mlp_target = outs.get(roles["mlp_out"] if "." in roles["mlp_out"] else mlp_mod)
    mlp_down = next((k for k in inner if k.startswith(f"{mlp_mod}.") and _close(rec.get(f"i:{k}", {}).get("out"),
                                                                                  mlp_target, tol)), None)
    attn_target = outs.get(roles["attn"] if "." in roles["attn"] else attn_mod)
    attn_proj = next((k for k in inner if k.startswith(f"{attn_mod}.") and _close(rec.get(f"i:{k}", {}).get("out"),
                                                                                    attn_target, tol)), None)
    final_norm, scale, project_out = _final_norm(hf_model, norm_cands, rec["__last__"].get("out"), out, tol, mt)
    pos = [f"{base_path}.{k}" if base_path else k for k, m in base.named_children()
           if isinstance(m, nn.Embedding) and m is not emb and ("pos" in k or k in ("wpe",))]
    router = _router(layers, mlp_mod, config)
    mlp_down = mlp_down if _in_every(layers, mlp_down) else None  # MoE layers after dense ones have none
    attn_proj = attn_proj if _in_every(layers, attn_proj) else None
    return ArchAdapter(
        family=f"derived:{mt}", model_types=(mt,), base=base_path, layers=layers_path, attn=roles["attn"],
        mlp=mlp_mod, mlp_out=roles["mlp_out"], mlp_down=mlp_down, mlp_norm=roles["mlp_norm"],
        final_norm=final_norm, parallel=roles["parallel"],
        softcap_attr="final_logit_softcapping" if getattr(config, "final_logit_softcapping", None) else None,
        attn_proj=attn_proj if roles["attn"] in (attn_mod, attn_proj) else None, pos_embed=pos[0] if pos else None,
        attn_core=attn_mod if _uses_interface(children[attn_mod]) else None, attn_o=attn_proj,
        logit_scale=scale, derived=True, router=router, project_out=project_out, attn_scale=roles["attn_scale"],
        mlp_scale=roles["mlp_scale"], resid_scale=resid_scale, carried_state=carried,
    )


def _block_scalars(block: nn.Module) -> list[tuple[str, float]]:
    """One-element floating tensors held by the block itself (not its sub-blocks), with their values: candidate
    output scales (Gemma-4's ``layer_scalar``)."""
    out = []
    for name, t in [*block.named_buffers(recurse=False), *block.named_parameters(recurse=False)]:
        if t.is_floating_point() and t.numel() == 1 and float(t.detach().abs()) > 0:
            out.append((name, float(t.detach().double())))
    return out


def _in_every(layers: nn.ModuleList, path: str | None) -> bool:
    if path is None:
        return False
    try:
        for layer in layers:
            layer.get_submodule(path)
    except AttributeError:
        return False
    return True


def _coef(part: torch.Tensor, target: torch.Tensor, free: bool) -> float | None:
    """The scale c with target = c x part (1 when not ``free``; None when part is zero)."""
    if not free:
        return 1.0
    den = float((part * part).sum())
    if den <= 1e-24:
        return None
    c = float((part * target).sum()) / den
    return 1.0 if abs(c - 1.0) < 1e-6 else c


def _solve(x_in: torch.Tensor, x_out: torch.Tensor, ins: dict[str, torch.Tensor], outs: dict[str, torch.Tensor],
           attn_c: list[str], mlp_c: list[str], readers: list[str], tol: float, free: bool) -> dict[str, Any] | None:
    """The roles that make layer 0's algebra hold (see module docstring), or None."""
    def scale(c: float) -> float | None:
        return None if c == 1.0 else c

    for a in attn_c:  # sequential: resid_mid = resid_pre + c_a out(a), read as the input of a reader
        if a not in outs:
            continue
        for n in readers:
            if n == a or n not in ins:
                continue
            c_a = _coef(outs[a], ins[n] - x_in, free)
            if c_a is None or not _close(x_in + c_a * outs[a], ins[n], tol):
                continue
            for m in mlp_c:
                if m == a or m not in outs:
                    continue
                c_m = _coef(outs[m], x_out - ins[n], free)
                if c_m is not None and _close(ins[n] + c_m * outs[m], x_out, tol):
                    return {"attn": a, "mlp_out": m, "mlp_norm": n, "parallel": False,
                            "attn_scale": scale(c_a), "mlp_scale": scale(c_m)}
    for a in attn_c:  # parallel: resid_post = resid_pre + c_a out(a) + c_m out(m)
        for m in mlp_c:
            if a == m or a not in outs or m not in outs:
                continue
            c_a = c_m = 1.0
            if free:
                basis = torch.stack([outs[a].reshape(-1), outs[m].reshape(-1)], 1)
                sol = torch.linalg.lstsq(basis, (x_out - x_in).reshape(-1, 1)).solution.reshape(-1)
                c_a, c_m = (1.0 if abs(float(v) - 1) < 1e-6 else float(v) for v in sol)
            if _close(x_in + c_a * outs[a] + c_m * outs[m], x_out, tol):
                return {"attn": a, "mlp_out": m, "mlp_norm": None, "parallel": True,
                        "attn_scale": scale(c_a), "mlp_scale": scale(c_m)}
    return None


def n_experts_of(config: Any) -> int | None:
    return _config_int(config, ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"), 1)


def _router(layers: nn.ModuleList, mlp: str, config: Any) -> str | None:
    """The MoE router inside the MLP block: a module named ``gate`` or ``router`` whose weight has one row per
    expert, in the first layer that has one (MoE models may keep dense MLPs in their first layers)."""
    n = n_experts_of(config)
    if n is None:
        return None
    for layer in layers:
        try:
            block = layer.get_submodule(mlp)
        except AttributeError:
            continue
        for name, m in block.named_modules():
            w = getattr(m, "weight", None)
            if name.split(".")[-1] in ("gate", "router") and isinstance(w, torch.Tensor) and w.dim() == 2 \
                    and w.shape[0] == n:
                return f"{mlp}.{name}"
    return None


def _hybrid(layers: nn.ModuleList) -> str | None:
    """Why the layers form a hybrid (some recurrent / state-space / linear-attention, or layers whose sub-blocks
    differ), or None: one set of sub-block names cannot cover every layer, so a hybrid is read at its block
    outputs (the residual stream between layers is still one stream)."""
    names = [tuple(n for n, _ in layer.named_children()) for layer in layers]
    for i, layer in enumerate(layers):
        for n, c in layer.named_children():
            if RECURRENT_NAMES.search(n.lower()) or any(w in type(c).__name__ for w in RECURRENT_CLASSES):
                return (f"decoder layer {i} holds a recurrent / state-space / linear-attention mixer "
                        f"({n}: {type(c).__name__}), not an attention + MLP residual block")
    if len({type(x) for x in layers}) > 1:
        return f"its decoder layers are of different classes ({sorted({type(x).__name__ for x in layers})})"
    if len(set(names)) > 1:
        return (f"its decoder layers differ in their sub-blocks ({names[0]} vs "
                f"{next(x for x in names if x != names[0])})")
    return None


@torch.no_grad()
def _refuse_padding_leak(hf_model: nn.Module, ids: torch.Tensor, mt: str, hybrid: str) -> None:
    """A hybrid's recurrent mixers must leave a left-padded row equal to the same prompt alone (batched =
    unbatched, as actlab pads every batch on the left); an implementation that lets the padding into the
    recurrent state or the convolution is refused with the measured difference. The tolerance (1e-3 of the
    largest value in float32, 3e-2 in half precision) is above the rounding a deep stack accumulates when a batch
    of two runs other kernels (2e-4 over Zamba2's 54 layers) and far below what padding that leaks changes."""
    from .model import position_ids_from_mask

    alone = ids[None, :4]  # a batch of two rows: this prompt left-padded by 3 beside a full 7-token row
    batch = torch.stack([torch.cat([torch.zeros_like(ids[:3]), ids[:4]]), ids.flip(0)])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    was = hf_model.training
    hf_model.eval()
    try:
        one = hf_model(input_ids=alone, attention_mask=torch.ones_like(alone), use_cache=False,
                       output_hidden_states=True)
        two = hf_model(input_ids=batch, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       use_cache=False, output_hidden_states=True)
    finally:
        hf_model.train(was)
    # every layer's output, or the logits where the model returns no hidden states
    a, b = one.hidden_states or (None, one.logits), two.hidden_states or (None, two.logits)
    tol = 1e-3 if a[-1].dtype in (torch.float32, torch.float64) else 3e-2
    for i, (x, y) in enumerate(zip(a[1:], b[1:], strict=True)):
        d = float((x[0].double() - y[0, 3:].double()).abs().max())
        if d > tol * (1 + float(x.abs().max())):
            raise UnsupportedArchitectureError(
                f"model_type={mt!r} is a hybrid: {hybrid}, and left padding changes its outputs (layer {i}: a "
                f"left-padded prompt differs from the prompt alone by {d:.3g}: transformers' implementation "
                "carries the padding into the recurrent state), so batched runs would not equal single prompts; "
                "register an adapter for it (docs/adapters.md)")


def _owner(role: str, names: list[str], words: tuple[str, ...], children: dict[str, nn.Module]) -> str:
    """The sub-block behind a role: the child itself (or the child holding a linear map that plays it), or (a
    sandwich post-norm) the child named like the sub-block, the nearest earlier one first (module order is
    registration order, not call order)."""
    if "." in role:
        return role.split(".")[0]
    if not _is_norm(children[role]):
        return role
    i = names.index(role)
    for c in [*reversed(names[:i]), *names[i + 1:]]:
        if not _is_norm(children[c]) and any(w in c.lower() for w in words):
            return c
    return role


def _final_norm(hf_model: nn.Module, cands: dict[str, nn.Module], h_last: torch.Tensor | None, out: Any,
                tol: float, mt: str) -> tuple[str, float | None, str | None]:
    """(final norm path, logit scale or None, projection between norm and unembedding or None): the first
    that reproduces the logits. A projection (ModernBERT-decoder's prediction head, OPT's project_out) is a
    root-level module other than the base and the output embedding, tried after the plain norm."""
    logits = getattr(out, "logits", None)
    head = hf_model.get_output_embeddings()
    if h_last is None or logits is None or head is None:
        raise UnsupportedArchitectureError(f"model_type={mt!r}: no logits or no output embedding to check a final "
                                           "norm against")
    want = logits.detach().double()
    ranked = _rank(list(cands), ("final", "ln_f", "norm_f", "norm"))
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    projections: list[tuple[str | None, nn.Module | None]] = [(None, None)]
    projections += [(k, m) for k, m in hf_model.named_children() if m is not head and not _is_norm(m)
                    and not isinstance(m, (nn.ModuleList, nn.Embedding)) and any(_linear_like(x) for x in m.modules())
                    and not any(isinstance(x, nn.ModuleList) for x in m.modules())]
    w = head.weight
    for proj_name, proj in projections:
        for name in ranked:
            try:
                h = cands[name](h_last.to(w.dtype))
                got = head(proj(h) if proj is not None else h).double()
            except Exception:  # a module that does not take this input is not the projection
                continue
            if cap:
                got = torch.tanh(got / cap) * cap
            if got.shape != want.shape:
                continue
            if _close(got, want, tol * 10):
                return name, None, proj_name
            c = float((got * want).sum() / (got * got).sum().clamp_min(1e-30))
            if _close(got * c, want, tol * 10):
                return name, c, proj_name
    raise UnsupportedArchitectureError(
        f"model_type={mt!r}: no final norm found (candidates {ranked}): unembedding the last layer's output "
        "through none of them gives the logits")


def resolve_adapter(hf_model: nn.Module) -> ArchAdapter:
    """The hand-written adapter for the model's type when one exists (the fast path and the documentation),
    else one derived from the model itself (:func:`derive_adapter`)."""
    from .adapters import ADAPTERS, get_adapter

    if getattr(hf_model.config, "model_type", None) in ADAPTERS:
        return get_adapter(hf_model.config)
    return derive_adapter(hf_model)
