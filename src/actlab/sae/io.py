"""Saving and loading dictionaries: ``sae_weights.safetensors`` + ``cfg.json`` in a folder.

actlab writes the SAELens layout (same file names, tensor names and shapes, and the cfg keys SAELens
reads: ``d_in``, ``d_sae``, ``architecture``, ``hook_name``, ``model_name``, ``activation_fn_str``, ``k``,
``apply_b_dec_to_input``), plus its own keys under ``actlab``.

SAELens folders load with every cfg flag that changes what the dictionary computes either honoured or
refused in one line (:data:`SAELENS_FLAGS` lists them; see docs/sae.md):

- architectures ``standard`` (ReLU), ``topk`` and ``jumprelu`` (``threshold`` tensor);
- ``apply_b_dec_to_input: false`` is folded into the encoder bias (``b_enc - ...`` is exact);
- ``rescale_acts_by_decoder_norm: true`` (TopK) is folded into the weights: SAELens computes
  ``topk(pre * |W_dec row|)`` and decodes ``(f / |W_dec row|) @ W_dec``, which is the same function as a plain
  TopK dictionary with encoder columns and bias scaled by the norms and unit decoder rows;
- ``normalize_activations``: ``none`` and ``expected_average_only_in`` (SAELens applies nothing at inference
  for it) load; ``constant_norm_rescale`` and ``layer_norm`` (per-token rescaling around the dictionary) are
  refused; so are ``reshape_activations: hook_z``, a ``hook_head_index``, ``finetuning_scaling_factor`` and
  other architectures (gated, batchtopk training checkpoints, transcoders...).

Gemma Scope's ``params.npz`` (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``; read with
``allow_pickle=False``) loads as a JumpReLU dictionary.

A dictionary trained with an input scale ``s`` is saved with the scale folded into the weights
(``W_enc * s``, ``W_dec / s``, ``b_dec / s``), which computes the same function on raw activations, so a
SAELens reader (``normalize_activations: none``) gets the right outputs; actlab records ``s`` and unfolds it
on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..runs import atomic_path, sha256_file, write_json
from ..version import __version__
from .dictionary import SAEConfig, SparseAutoencoder

WEIGHTS, CFG, NPZ = "sae_weights.safetensors", "cfg.json", "params.npz"
SAELENS_ARCHITECTURES = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}
SAELENS_FLAGS = ("architecture", "activation_fn_str", "activation_fn", "apply_b_dec_to_input",
                 "rescale_acts_by_decoder_norm", "normalize_activations", "reshape_activations", "hook_head_index",
                 "finetuning_scaling_factor", "k")


def save_sae(sae: SparseAutoencoder, folder: str | os.PathLike[str], *, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = sae.cfg
    s = float(sae.input_scale)
    tensors = {"W_enc": (sae.W_enc.detach() * s).cpu().contiguous(),
               "W_dec": (sae.W_dec.detach() / s).cpu().contiguous(),
               "b_enc": sae.b_enc.detach().cpu().clone(), "b_dec": (sae.b_dec.detach() / s).cpu().contiguous()}
    if c.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().cpu().clone()  # pre-activations are unchanged by the fold
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    arch = {"relu": "standard"}.get(c.architecture, c.architecture)
    cfg = {"d_in": c.d_in, "d_sae": c.d_sae, "architecture": arch,
           "activation_fn_str": "topk" if c.architecture == "topk" else "relu", "k": c.k,
           "hook_name": c.hook_point, "model_name": c.model, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "dtype": "float32",
           "actlab": {"version": __version__, "config": c.to_dict(), "input_scale": s, "scale_folded": True,
                      **(extra or {})}}
    write_json(folder / CFG, cfg)
    return folder


def _saelens_config(folder: Path, raw: dict[str, Any]) -> tuple[SAEConfig, dict[str, Any]]:
    """The actlab config of a SAELens cfg.json, and the folds to apply to its weights (or a one-line refusal)."""
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    arch_raw = str(raw.get("architecture", "standard"))
    act = raw.get("activation_fn_str", raw.get("activation_fn"))
    if act == "topk" and arch_raw == "standard":  # SAELens < 5 stored TopK as standard + activation_fn_str topk
        arch_raw = "topk"
    if arch_raw not in SAELENS_ARCHITECTURES:
        return _fail(folder, f"SAELens architecture {arch_raw!r} is not supported; supported: "
                             f"{', '.join(sorted(SAELENS_ARCHITECTURES))}")
    arch = SAELENS_ARCHITECTURES[arch_raw]
    if act not in (None, "relu", "topk") or (act == "topk" and arch != "topk"):
        return _fail(folder, f"activation function {act!r} is not supported for architecture {arch_raw!r} "
                             "(supported: relu; topk for TopK)")
    norm = raw.get("normalize_activations", "none") or "none"
    if norm not in ("none", "expected_average_only_in"):
        return _fail(folder, f"normalize_activations={norm!r} is not supported (it rescales every token around the "
                             "dictionary); supported: none, expected_average_only_in")
    reshape = raw.get("reshape_activations", "none") or "none"
    if reshape != "none":
        return _fail(folder, f"reshape_activations={reshape!r} (per-head attention outputs) is not supported")
    if raw.get("hook_head_index") is not None:
        return _fail(folder, f"hook_head_index={raw['hook_head_index']!r} (one attention head) is not supported")
    if raw.get("finetuning_scaling_factor"):
        return _fail(folder, "finetuning_scaling_factor=true is not supported")
    rescale = bool(raw.get("rescale_acts_by_decoder_norm", False))
    if rescale and arch != "topk":
        return _fail(folder, f"rescale_acts_by_decoder_norm=true is only defined for TopK, not {arch_raw!r}")
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
    if arch == "topk" and not k:
        return _fail(folder, "a TopK dictionary without k in its cfg.json")
    cfg = SAEConfig(d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), architecture=arch,
                    k=int(k) if arch == "topk" else None,
                    hook_point=str(raw.get("hook_name") or meta.get("hook_name") or ""),
                    model=str(raw.get("model_name") or meta.get("model_name") or ""), name=folder.name)
    return cfg, {"apply_b_dec_to_input": bool(raw.get("apply_b_dec_to_input", True)), "rescale": rescale}


def _fail(folder: Path, msg: str):
    raise InputError(f"{folder}: {msg}")


def _fold(t: dict[str, torch.Tensor], folds: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Weights computing the SAELens function with actlab's encoder ``(x - b_dec) @ W_enc + b_enc``."""
    t = {k: v.double() for k, v in t.items()}
    if not folds.get("apply_b_dec_to_input", True):  # SAELens: x @ W_enc + b_enc
        t["b_enc"] = t["b_enc"] + t["b_dec"] @ t["W_enc"]
    if folds.get("rescale"):
        n = t["W_dec"].norm(dim=1)
        t["W_enc"] = t["W_enc"] * n[None, :]
        t["b_enc"] = t["b_enc"] * n
        t["W_dec"] = t["W_dec"] / n.clamp_min(1e-12)[:, None]
    return {k: v.float() for k, v in t.items()}


def load_sae(folder: str | os.PathLike[str]) -> SparseAutoencoder:
    """Load an actlab or SAELens dictionary folder, or a Gemma Scope ``params.npz`` (see module docstring)."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix == ".npz":
        return _load_npz(folder, folder.stem)
    if (folder / NPZ).is_file() and not (folder / WEIGHTS).is_file():
        return _load_npz(folder / NPZ, folder.name)
    if not (folder / CFG).is_file() or not (folder / WEIGHTS).is_file():
        raise InputError(f"{str(folder)!r} is not a dictionary folder (needs {CFG} and {WEIGHTS}, or {NPZ})")
    try:
        raw = json.loads((folder / CFG).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{folder / CFG}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{folder / CFG}: expected a JSON object")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        t = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{folder / WEIGHTS}: corrupt or truncated, not a readable safetensors file ({e})"
                         ) from None
    scale = 1.0
    try:
        if "actlab" in raw:
            cfg = SAEConfig(**raw["actlab"]["config"])
            if raw["actlab"].get("scale_folded"):
                scale = float(raw["actlab"].get("input_scale", 1.0))
            _check_shapes(folder, cfg, t)
        else:
            cfg, folds = _saelens_config(folder, raw)
            _check_shapes(folder, cfg, t)
            t = _fold(t, folds)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{folder / CFG}: malformed dictionary config ({type(e).__name__}: {e})") from None
    _check_values(folder, t, scale)
    return _build(folder, cfg, t, scale, sha256_file(folder / WEIGHTS))


def _check_values(folder: Path, t: dict[str, torch.Tensor], scale: float) -> None:
    """Refuse weights that would make every metric NaN (NaN/inf entries, an input scale of 0 or not finite)."""
    if not (scale > 0 and scale < float("inf")):
        raise InputError(f"{folder / CFG}: input_scale is {scale!r}; it must be a positive finite number")
    for key, v in t.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise InputError(f"{folder / WEIGHTS}: {key} holds NaN or infinite values; the dictionary is damaged")


def _check_shapes(folder: Path, cfg: SAEConfig, t: dict[str, torch.Tensor]) -> None:
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in), "b_enc": (cfg.d_sae,),
              "b_dec": (cfg.d_in,)}
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    for key, shape in shapes.items():
        if key not in t or tuple(t[key].shape) != shape:
            got = tuple(t[key].shape) if key in t else "missing"
            raise InputError(f"{folder / WEIGHTS}: {key} should be {shape}, got {got}")


def _build(folder: Path, cfg: SAEConfig, t: dict[str, torch.Tensor], scale: float, sha: str) -> SparseAutoencoder:
    sae = SparseAutoencoder(cfg)
    sae.origin = {"folder": str(folder), "sha256": sha}
    with torch.no_grad():
        sae.input_scale.fill_(scale)
        sae.W_enc.copy_(t["W_enc"] / scale)
        sae.b_enc.copy_(t["b_enc"])
        sae.b_dec.copy_(t["b_dec"] * scale)
        if not cfg.tied:
            sae.W_dec_param.copy_(t["W_dec"] * scale)
        if cfg.architecture == "jumprelu":
            sae.threshold.copy_(t["threshold"])
    return sae


def _load_npz(path: Path, name: str) -> SparseAutoencoder:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            t = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npz of dictionary weights ({e})") from None
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in t]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)} (expected Gemma Scope's JumpReLU parameters)")
    d_in, d_sae = (int(x) for x in t["W_enc"].shape)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu", name=name)
    _check_shapes(path, cfg, t)
    _check_values(path.parent, t, 1.0)
    return _build(path.parent, cfg, t, 1.0, sha256_file(path))
