"""The :class:`Model` wrapper: a native HF causal LM, its tokenizer and its adapter, with named hook points.

The wrapper never changes the wrapped model; hooks live only inside ``capture``/intervention contexts.
Calling the wrapper derives ``position_ids`` from the attention mask, so a left-padded row sees the same
positions as the same row unpadded (HF's forward alone would shift them).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import HookPointError, InputError, UnsupportedArchitectureError
from ..hooks.capture import Activations, Capture
from ..hooks.core import CACHE_KWARGS, StopForward
from ..hooks.interventions import Edits, Intervention
from ..hooks.points import HookPoint, all_point_names, parse_points
from ..hooks.positions import PositionSpec
from ..hooks.sites import read_plan, write_plan
from ..runs import apply_umask, write_json
from .adapters import ArchAdapter
from .derive import resolve_adapter, text_config_of

TextBatch = str | Sequence[str]


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens: ``[0, 1, ...]`` from each row's first real token (pads get 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def save_pretrained_plain(hf_model: nn.Module, folder: str | os.PathLike[str], *, dtype: torch.dtype | None = None
                          ) -> None:
    """``save_pretrained`` that also works for GGUF-loaded models: their weights are plain de-quantized
    tensors, but transformers 5 keeps a GGUF "quantizer" on them and refuses to save; detach it meanwhile.
    With ``dtype``, floating-point weights are written in it (a cast copy; the model is not changed)."""
    quantizer = getattr(hf_model, "hf_quantizer", None)
    qcfg = getattr(hf_model.config, "quantization_config", None)
    try:
        if quantizer is not None:
            hf_model.hf_quantizer = None
        if qcfg is not None:
            del hf_model.config.quantization_config
        kw: dict[str, Any] = {}
        mem_dtype = next((p.dtype for p in hf_model.parameters() if p.is_floating_point()), None)
        if dtype is not None and dtype != mem_dtype:
            kw["state_dict"] = {k: v.to(dtype) if v.is_floating_point() else v
                                for k, v in hf_model.state_dict().items()}
            attr = "dtype" if int(__import__("transformers").__version__.split(".")[0]) >= 5 else "torch_dtype"
            old_cfg = getattr(hf_model.config, attr, None)
            setattr(hf_model.config, attr, dtype)
        try:
            hf_model.save_pretrained(folder, safe_serialization=True, **kw)
        finally:
            if "state_dict" in kw:
                setattr(hf_model.config, attr, old_cfg)
        if "state_dict" in kw:  # save_pretrained writes the in-memory dtype into config.json; say what was saved
            cfg_path = Path(folder) / "config.json"
            cfg = json.loads(cfg_path.read_text())
            for key in {attr, *(k for k in ("dtype", "torch_dtype") if k in cfg)}:  # 4.5x writes both names
                cfg[key] = str(dtype).replace("torch.", "")
            write_json(cfg_path, cfg)
    finally:
        if quantizer is not None:
            hf_model.hf_quantizer = quantizer
        if qcfg is not None:
            hf_model.config.quantization_config = qcfg


class Model:
    """A causal LM with named hook points. Build one with :func:`actlab.load_model` or :meth:`wrap`."""

    def __init__(self, hf_model: nn.Module, tokenizer: Any, *, name: str = "", adapter: ArchAdapter | None = None,
                 source: dict[str, Any] | None = None):
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.config = hf_model.config
        self.adapter = adapter or resolve_adapter(hf_model)
        self.name = name or getattr(self.config, "_name_or_path", "") or type(hf_model).__name__
        self.source = source or {}
        self.validation: dict[str, float] = {}  # what the load-time validation checked: check -> relative error
        a = self.adapter
        self.base: nn.Module = self._submodule(a.base, "base")
        self.layers: nn.ModuleList = self._submodule(a.layers, "layers")  # type: ignore[assignment]
        self.final_norm_module: nn.Module = self._submodule(a.final_norm, "final_norm")
        for field in ("attn", "mlp_out", "mlp_norm", "mlp_down", "attn_proj"):
            path = getattr(a, field)
            if path:
                self._submodule(f"{a.layers}.0.{path}", field)
        head = hf_model.get_submodule(a.unembed) if a.unembed else hf_model.get_output_embeddings()
        if head is None:
            raise HookPointError(f"{type(hf_model).__name__} has no output embedding (unembedding) module")
        self.lm_head: nn.Module = head
        self.project_out: nn.Module | None = None
        if a.project_out:
            try:
                self.project_out = hf_model.get_submodule(a.project_out)
            except AttributeError:
                self.project_out = None
        self.parallel = a.is_parallel(self.config)
        self._mlp_norm = a.mlp_norm_path(self.config)
        if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None:
            fallback = tokenizer.eos_token or getattr(tokenizer, "unk_token", None)
            if fallback is not None:
                tokenizer.pad_token = fallback

    def _submodule(self, path: str, field: str) -> nn.Module:
        """A module the adapter names, or a clear error: which field, which path, what to do."""
        try:
            return self.hf.get_submodule(path)
        except AttributeError:
            raise UnsupportedArchitectureError(
                f"adapter {self.adapter.family!r} names {field} = {path!r}, which {type(self.hf).__name__} does not "
                "have (a renamed or rearranged module?); register an adapter for this layout: "
                "actlab.register_adapter(actlab.ArchAdapter(...), overwrite=True) (see docs/adapters.md)") from None

    @classmethod
    def wrap(cls, hf_model: nn.Module, tokenizer: Any = None, *, validate: bool = True, **kw: Any) -> Model:
        """Wrap an already-loaded HF model (optionally validating the adapter on a probe input)."""
        m = cls(hf_model, tokenizer, **kw)
        if validate:
            from .validate import validate_model

            m.validation = validate_model(m)
        if m.adapter.carried_state:
            from ..progress import info

            info(f"{m.name}: {m.carried_note()}")
        return m

    def carried_note(self) -> str | None:
        """What patching leaves out on a model whose layers take a second state beside the residual - from the layer
        before (Zaya's router state) or from the model (Zamba's embeddings) - (None when they take only the
        residual stream)."""
        c = self.adapter.carried_state
        if not c:
            return None
        return (f"each layer also takes {c!r} (from the layer before it or from the model), beside the residual "
                f"stream; hook points read and write the residual exactly, but patching a layer's residual does not "
                f"patch {c!r}")

    def save(self, out_dir: str | os.PathLike[str], *, dtype: str | torch.dtype | None = "checkpoint") -> Path:
        """Save the model (e.g. an orthogonalised or fine-tuned copy) and its tokenizer in standard HF format,
        in the checkpoint's dtype by default (a bf16 checkpoint loaded in float32 on a CPU is saved in bf16
        again; the weights in memory are left alone), or in ``dtype`` (None: as in memory)."""
        from ..progress import third_party_quiet

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        target = self.source.get("checkpoint_dtype") if dtype == "checkpoint" else dtype
        if isinstance(target, str):
            target = getattr(torch, target, None)
        with third_party_quiet():
            save_pretrained_plain(self.hf, out, dtype=target if isinstance(target, torch.dtype) else None)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(out)
        apply_umask(out)
        return out

    # -- shape facts -------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.hf.get_input_embeddings().weight.shape[1])

    @property
    def d_mlp(self) -> int:
        if self.adapter.mlp_down is None:
            raise HookPointError(f"{self.adapter.family}: no single linear map writes the MLP output (mixture of "
                                 "experts?), so the MLP hidden width is not defined")
        down = self.layers[0].get_submodule(self.adapter.mlp_down)
        if isinstance(down, nn.Linear):
            return int(down.in_features)
        return int(getattr(down, "nx", down.weight.shape[0]))  # GPT-2 Conv1D stores [in, out]

    @property
    def n_heads(self) -> int:
        """Attention (query) heads per layer."""
        c = self.text_config
        for attr in ("num_attention_heads", "n_head", "num_heads"):
            if getattr(c, attr, None):
                return int(getattr(c, attr))
        raise AttributeError(f"{type(c).__name__} names no attention head count")

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer (fewer than :attr:`n_heads` with grouped-query attention)."""
        return int(getattr(self.text_config, "num_key_value_heads", None) or self.n_heads)

    @property
    def d_head(self) -> int:
        """Width of one attention head."""
        hd = getattr(self.text_config, "head_dim", None)
        return int(hd) if hd else self.d_model // self.n_heads

    @property
    def text_config(self) -> Any:
        """The language model's config (a multimodal checkpoint's text tower; the config itself otherwise)."""
        return text_config_of(self.config)

    @property
    def vocab_size(self) -> int:
        w = getattr(self.lm_head, "weight", None)
        return int(w.shape[0]) if w is not None else int(self.config.vocab_size)

    @property
    def context_length(self) -> int | None:
        for attr in self.adapter.context_attrs:
            v = getattr(self.config, attr, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    @property
    def device(self) -> torch.device:
        return self.hf.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_input_embeddings().weight.dtype

    def branch_scale(self, field: str) -> float:
        """What the residual receives per unit of ``field``'s output (1 unless the adapter scales a branch)."""
        a = self.adapter
        s = a.attn_scale if field == "attn" else a.mlp_scale if field == "mlp_out" else None
        return 1.0 if s is None else float(s)

    def block_scale(self, layer: int) -> float:
        """The scalar layer ``layer`` multiplies its output by (1 unless the adapter names one: resid_post =
        scale x (resid_mid + mlp_out))."""
        attr = self.adapter.resid_scale
        if attr is None:
            return 1.0
        return float(getattr(self.module("block", layer), attr))

    @property
    def n_experts(self) -> int:
        """Experts per mixture-of-experts block (the router's output width)."""
        if self.adapter.router is None:
            raise HookPointError(f"{self.adapter.family}: no router (a dense MLP, not a mixture of experts)")
        for i in range(self.n_layers):
            r = self.module("router", i)
            if r is not None:
                return int(r.weight.shape[0])
        raise HookPointError(f"{self.adapter.family}: no layer has the router {self.adapter.router!r}")

    @property
    def hook_points(self) -> list[str]:
        names = all_point_names(self.n_layers)
        if self.adapter.router is None:
            return [n for n in names if not n.endswith(".mlp.router")]
        return [n for n in names if not n.endswith(".mlp.router") or self.module("router", int(n.split(".")[1]))]

    def parse_points(self, spec: str | HookPoint | Iterable[str | HookPoint]) -> list[HookPoint]:
        """Expand a hook-point spec (``'resid_post'``, ``'blocks.3.attn_out'``, ``'blocks.2:5.mlp_out'``...)."""
        return parse_points(spec, self.n_layers)

    def __repr__(self) -> str:
        return (f"actlab.Model({self.name!r}, family={self.adapter.family}, layers={self.n_layers}, "
                f"d_model={self.d_model}, parallel={self.parallel}, dtype={self.dtype}, device={self.device})")

    # -- sites ---------------------------------------------------------------------------------------
    def layer(self, i: int) -> nn.Module:
        return self.layers[i]

    def attn(self, i: int) -> nn.Module:
        return self.layers[i].get_submodule(self.adapter.attn)

    def mlp(self, i: int) -> nn.Module:
        return self.layers[i].get_submodule(self.adapter.mlp or self.adapter.mlp_out)

    def module(self, field: str, layer: int | None) -> nn.Module | None:
        """The native module an adapter field names (the :class:`~actlab.hooks.sites.HookTarget` protocol):
        ``block`` is decoder layer ``layer``; ``final_norm`` the model's final norm; other fields are paths
        inside layer ``layer`` (``mlp_norm`` is None for parallel-residual blocks, which have none)."""
        if field == "final_norm":
            return self.final_norm_module
        if layer is None:
            raise HookPointError(f"adapter field {field!r} lives inside a layer; no layer given")
        if not 0 <= layer < self.n_layers:
            raise HookPointError(f"layer {layer} is out of range; the model has layers 0..{self.n_layers - 1}")
        blk = self.layers[layer]
        if field == "block":
            return blk
        path = self._mlp_norm if field == "mlp_norm" else getattr(self.adapter, field, None)
        if not path:
            return None
        try:  # MoE models may keep dense MLPs in some layers (DeepSeek's first ones): no router there
            return blk.get_submodule(path)
        except AttributeError:
            return None

    def read_site(self, p: HookPoint) -> tuple[Any, str]:
        """``(module, 'in'|'out')`` where a point is read, or ``('derived', '')`` for a composite kind without a
        module (parallel resid_mid). Kept for compatibility; see :func:`actlab.hooks.sites.read_plan`."""
        plan = read_plan(self, parse_points(p, self.n_layers)[0])
        return (plan.site.module, plan.site.where) if plan.site is not None else ("derived", "")

    def write_site(self, p: HookPoint) -> tuple[nn.Module, str]:
        """Where an edit of a point is written (``resid_mid``: the attention output). Kept for compatibility;
        see :func:`actlab.hooks.sites.write_plan`."""
        site = write_plan(self, parse_points(p, self.n_layers)[0]).site
        return site.module, site.where

    def hooks(self, hooks: Mapping[str, Callable[..., torch.Tensor | None]], *, positions: str = "all",
              eoi_ids: Sequence[int] | None = None) -> Edits:
        """Your own functions at hook points, as one context: ``with model.hooks({"blocks.3.attn.pattern": fn}):``.
        Each ``fn(x)`` or ``fn(x, call)`` returns None (read) or a same-shaped tensor (replace); ``positions``
        limits replacements as for steering (``from_eoi`` needs ``eoi_ids``, e.g.
        ``actlab.steering.prompts.eoi_token_ids(model)``). See :class:`~actlab.hooks.interventions.Hook`.
        Composes with :meth:`edit` and :meth:`capture`."""
        from ..hooks.interventions import Hook

        if not isinstance(hooks, Mapping) or not hooks:
            raise InputError("model.hooks() takes a non-empty mapping of hook point -> function")
        return self.edit(*[Hook(p, fn, positions=positions, eoi_ids=eoi_ids) for p, fn in hooks.items()])

    def edit(self, *interventions: Intervention) -> Edits:
        """Apply interventions together (``with model.edit(Steer(...), ProjectOut(...)):``); see
        :mod:`actlab.hooks.interventions`. Also a handle: ``h = model.edit(...); ...; h.remove()``."""
        if len(interventions) == 1 and isinstance(interventions[0], (list, tuple)):
            interventions = tuple(interventions[0])
        return Edits(self, interventions)

    # -- text in -----------------------------------------------------------------------------------
    def tokenize(self, texts: TextBatch, *, padding_side: str = "right", add_special_tokens: bool = True,
                 check_context: bool = True, truncate_left: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenize one text or a batch into ``input_ids`` + ``attention_mask`` on the model's device;
        ``truncate_left=N`` keeps only the last ``N`` tokens of a longer text."""
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; pass token ids instead of text")
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch:
            raise InputError("no prompt given (empty batch)")
        for k, t in enumerate(batch):
            if not isinstance(t, str):
                raise InputError(f"prompt {k} is a {type(t).__name__}, not a string")
            if not t.strip():
                raise InputError(f"prompt {k} is empty; give some text")
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side {padding_side!r} is not one of: left, right")
        tok = self.tokenizer
        old, old_trunc = tok.padding_side, getattr(tok, "truncation_side", "right")
        tok.padding_side = padding_side
        kw: dict[str, Any] = {}
        if truncate_left is not None:
            tok.truncation_side = "left"
            kw = {"truncation": True, "max_length": int(truncate_left)}
        try:
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens, **kw)
        finally:
            tok.padding_side, tok.truncation_side = old, old_trunc
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] == 0 or bool((mask.sum(1) == 0).any()):
            raise InputError("a prompt tokenizes to no tokens")
        ctx = self.context_length
        if check_context and ctx is not None and ids.shape[1] > ctx:
            lens = mask.sum(1)
            k = int(torch.argmax(lens))
            raise InputError(f"prompt {k} is {int(lens[k])} tokens, longer than the model's context of {ctx}")
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def as_batch(self, inputs: Any, *, padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Accept text, a list of texts, a token-id tensor or a tokenizer output; return model inputs."""
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
            return self.tokenize(inputs, padding_side=padding_side)
        if isinstance(inputs, torch.Tensor):
            ids = inputs if inputs.dim() == 2 else inputs[None]
            return {"input_ids": ids.to(self.device), "attention_mask": torch.ones_like(ids, device=self.device)}
        if isinstance(inputs, dict) or hasattr(inputs, "keys"):
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(ids)
            return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if isinstance(inputs, (list, tuple)) and not inputs:
            raise InputError("no prompt given (empty batch)")
        raise InputError(f"cannot use {type(inputs).__name__} as model input; give text, a list of texts, "
                         "a token-id tensor or a dict with input_ids/attention_mask")

    def chat_prompt(self, user: str, *, system: str | None = None, history: Sequence[dict[str, str]] = ()) -> str:
        """Format one user turn with the tokenizer's chat template (generation prompt appended)."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InputError(f"model {self.name!r} has no chat template; use plain prompts")
        msgs = [*([{"role": "system", "content": system}] if system else []), *history,
                {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    # -- forward / generate ------------------------------------------------------------------------
    def __call__(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> Any:
        """Run the HF forward with ``position_ids`` derived from the attention mask."""
        if attention_mask is not None and "position_ids" not in kwargs and not any(
                kwargs.get(k) is not None for k in CACHE_KWARGS):
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    forward = __call__

    def last_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
                    ) -> torch.Tensor:
        """Next-token logits at the last position only ``[batch, vocab]`` (float32): the unembedding is not
        applied to the other positions (``logits_to_keep=1``), which dominates the cost for large vocabularies.
        Needs left padding (or none) so that the last position is a real token."""
        if attention_mask is not None and attention_mask.shape[0] > 1 and not bool(attention_mask[:, -1].all()):
            raise InputError("last_logits needs left padding (a row ends in padding)")
        kwargs.setdefault("use_cache", False)
        if self.accepts_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, -1].float()

    def _forward_params(self) -> Any:
        if not hasattr(self, "_params"):
            import inspect

            self._params = inspect.signature(self.hf.forward).parameters
        return self._params

    @property
    def accepts_logits_to_keep(self) -> bool:
        """Whether the forward takes ``logits_to_keep`` (unembed only the last positions)."""
        return "logits_to_keep" in self._forward_params()

    @property
    def cache_argument(self) -> str:
        """The forward's name for the KV cache (``cache`` since transformers 5.24, ``past_key_values`` before;
        one of :data:`actlab.hooks.core.CACHE_KWARGS`)."""
        params = self._forward_params()
        return next((k for k in CACHE_KWARGS if k in params), "past_key_values")

    @torch.no_grad()
    def generate_text(self, prompts: TextBatch, *, max_new_tokens: int = 32, do_sample: bool = False,
                      add_special_tokens: bool = True, skip_special_tokens: bool = True, **gen_kwargs: Any
                      ) -> list[str]:
        """Generate continuations (new text only) for a batch of prompts, left-padded."""
        batch = self.tokenize(prompts, padding_side="left", add_special_tokens=add_special_tokens)
        out = self.generate(**batch, max_new_tokens=max_new_tokens, do_sample=do_sample, **gen_kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=skip_special_tokens)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
                 ) -> torch.Tensor:
        """``hf.generate`` with the attention mask and a pad token always passed."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape[0] > 1 and not bool(attention_mask[:, -1].all()):
            raise InputError("batched generation needs left padding (a row ends in padding); "
                             "tokenize with padding_side='left'")
        kwargs.setdefault("pad_token_id", getattr(self.tokenizer, "pad_token_id", None)
                          or getattr(self.config, "pad_token_id", None) or 0)
        return self.hf.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # -- reading -----------------------------------------------------------------------------------
    def capture(self, points: str | Iterable[str] | HookPoint, positions: PositionSpec = "all", *,
                dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu",
                stop: bool = False, detach: bool = True, grad: bool = False) -> Capture:
        """Context manager capturing ``points`` at ``positions`` (see :mod:`actlab.hooks.capture`); with
        ``grad=True``, ``acts.grads`` gets each point's gradient after ``backward()`` inside the block."""
        return Capture(self, points, positions, dtype=dtype, device=device, stop=stop, detach=detach, grad=grad)

    @torch.no_grad()
    def activations(self, inputs: Any, points: str | Iterable[str] | HookPoint, positions: PositionSpec = "all", *,
                    batch_size: int | None = None, padding_side: str = "right",
                    dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu") -> Activations:
        """Run ``inputs`` and return the activations at ``points``; stops after the last one needed."""
        batch = self.as_batch(inputs, padding_side=padding_side)
        n = batch["input_ids"].shape[0]
        step = batch_size or n
        cap = self.capture(points, positions, dtype=dtype, device=device, stop=True)
        with cap:
            for s in range(0, n, step):
                chunk = {k: v[s:s + step] for k, v in batch.items()}
                with contextlib.suppress(StopForward):  # raised once the capture has all it needs
                    self(**chunk, use_cache=False)
        return cap.result

    @property
    def unembed(self):
        """Final norm + unembedding (+ softcap) as one callable (see :class:`actlab.lens.Unembed`)."""
        from .unembed import Unembed

        return Unembed(self)
