"""Crosscoders on disk: ``crosscoder.safetensors`` (per model ``W_enc.{i}``, ``W_dec.{i}``, ``b_dec.{i}``, the
shared ``b_enc``, ``input_scale`` and the BatchTopK ``threshold``) and ``cfg.json`` (the config, the models and
hook points, the actlab version). No pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..runs import atomic_path, write_json
from ..version import __version__
from .model import Crosscoder, CrosscoderConfig

WEIGHTS, CFG = "crosscoder.safetensors", "cfg.json"


def save_crosscoder(cc: Crosscoder, folder: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"b_enc": cc.b_enc.detach().cpu().clone(), "input_scale": cc.input_scale.detach().cpu().clone(),
               "threshold": cc.threshold.detach().cpu().clone().reshape(1)}
    for i in range(len(cc.cfg.d_ins)):
        tensors[f"W_enc.{i}"] = cc.W_enc[i].detach().cpu().contiguous()
        tensors[f"W_dec.{i}"] = cc.W_dec[i].detach().cpu().contiguous()
        tensors[f"b_dec.{i}"] = cc.b_dec[i].detach().cpu().contiguous()
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / CFG, {"kind": "crosscoder", "actlab_version": __version__, "config": cc.cfg.to_dict(),
                              **(extra or {})})
    return folder


def load_crosscoder(folder: str | os.PathLike[str]) -> Crosscoder:
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        raw = json.loads((folder / CFG).read_text(encoding="utf-8"))
        cfg = CrosscoderConfig(**raw["config"])
        t = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder} is not a crosscoder folder ({CFG} + {WEIGHTS}): {e}") from None
    cc = Crosscoder(cfg)
    with torch.no_grad():
        try:
            cc.b_enc.copy_(t["b_enc"])
            cc.input_scale.copy_(t["input_scale"])
            cc.threshold.copy_(t["threshold"][0])
            for i in range(len(cfg.d_ins)):
                cc.W_enc[i].copy_(t[f"W_enc.{i}"])
                cc.W_dec[i].copy_(t[f"W_dec.{i}"])
                cc.b_dec[i].copy_(t[f"b_dec.{i}"])
        except (KeyError, RuntimeError) as e:
            raise InputError(f"{folder}/{WEIGHTS} does not match its {CFG}: {e}") from None
    for name, p in cc.named_parameters():
        if not torch.isfinite(p).all():
            raise InputError(f"{folder}: {name} holds NaN or infinite values")
    cc.origin = {"folder": str(folder)}
    return cc
