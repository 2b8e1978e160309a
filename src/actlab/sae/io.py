"""Saving and loading dictionaries: ``sae_weights.safetensors`` + ``cfg.json`` in a folder.

actlab writes the SAELens layout (same file names, tensor names and shapes, and the cfg keys SAELens
reads: ``d_in``, ``d_sae``, ``architecture``, ``hook_name``, ``model_name``, ``activation_fn_str``, ``k``,
``apply_b_dec_to_input``), plus its own keys under ``actlab``. Folders written by SAELens load too
(``standard``/``relu`` and ``topk`` architectures).

A dictionary trained with an input scale ``s`` is saved with the scale folded into the weights
(``W_enc * s``, ``W_dec / s``, ``b_dec / s``), which computes the same function on raw activations, so a
SAELens reader (``normalize_activations: none``) gets the right outputs; actlab records ``s`` and unfolds it
on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import InputError
from ..runs import atomic_path, sha256_file, write_json
from ..version import __version__
from .dictionary import SAEConfig, SparseAutoencoder

WEIGHTS, CFG = "sae_weights.safetensors", "cfg.json"


def save_sae(sae: SparseAutoencoder, folder: str | os.PathLike[str], *, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = sae.cfg
    s = float(sae.input_scale)
    tensors = {"W_enc": (sae.W_enc.detach() * s).cpu().contiguous(),
               "W_dec": (sae.W_dec.detach() / s).cpu().contiguous(),
               "b_enc": sae.b_enc.detach().cpu().clone(), "b_dec": (sae.b_dec.detach() / s).cpu().contiguous()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    cfg = {"d_in": c.d_in, "d_sae": c.d_sae, "architecture": "standard" if c.architecture == "relu" else "topk",
           "activation_fn_str": "relu" if c.architecture == "relu" else "topk", "k": c.k,
           "hook_name": c.hook_point, "model_name": c.model, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "dtype": "float32",
           "actlab": {"version": __version__, "config": c.to_dict(), "input_scale": s, "scale_folded": True,
                      **(extra or {})}}
    write_json(folder / CFG, cfg)
    return folder


def load_sae(folder: str | os.PathLike[str]) -> SparseAutoencoder:
    """Load an actlab or SAELens dictionary folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CFG).is_file() or not (folder / WEIGHTS).is_file():
        raise InputError(f"{str(folder)!r} is not a dictionary folder (needs {CFG} and {WEIGHTS})")
    raw = json.loads((folder / CFG).read_text())
    t = load_file(str(folder / WEIGHTS))
    scale = 1.0
    if "actlab" in raw:
        cfg = SAEConfig(**raw["actlab"]["config"])
        if raw["actlab"].get("scale_folded"):
            scale = float(raw["actlab"].get("input_scale", 1.0))
    else:
        arch = raw.get("architecture", "standard")
        act = raw.get("activation_fn_str", "relu")
        if arch not in ("standard", "topk") and act != "topk":
            raise InputError(f"{folder}: SAELens architecture {arch!r} is not supported (standard, topk)")
        if not raw.get("apply_b_dec_to_input", True):
            raise InputError(f"{folder}: apply_b_dec_to_input=false is not supported")
        if raw.get("normalize_activations", "none") not in ("none", None):
            raise InputError(f"{folder}: normalize_activations={raw['normalize_activations']!r} is not supported")
        is_topk = arch == "topk" or act == "topk"
        k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
        cfg = SAEConfig(d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), architecture="topk" if is_topk else "relu",
                        k=int(k) if is_topk and k else None, hook_point=raw.get("hook_name", ""),
                        model=raw.get("model_name", ""), name=folder.name)
    for key, shape in (("W_enc", (cfg.d_in, cfg.d_sae)), ("W_dec", (cfg.d_sae, cfg.d_in)), ("b_enc", (cfg.d_sae,)),
                       ("b_dec", (cfg.d_in,))):
        if key not in t or tuple(t[key].shape) != shape:
            got = tuple(t[key].shape) if key in t else "missing"
            raise InputError(f"{folder / WEIGHTS}: {key} should be {shape}, got {got}")
    sae = SparseAutoencoder(cfg)
    sae.origin = {"folder": str(folder), "sha256": sha256_file(folder / WEIGHTS)}
    with torch.no_grad():
        sae.input_scale.fill_(scale)
        sae.W_enc.copy_(t["W_enc"] / scale)
        sae.b_enc.copy_(t["b_enc"])
        sae.b_dec.copy_(t["b_dec"] * scale)
        if not cfg.tied:
            sae.W_dec_param.copy_(t["W_dec"] * scale)
    return sae
