"""Transcoders on disk: ``transcoder.safetensors`` (W_enc, b_enc, W_dec, b_dec, W_skip, input_scale) and
``cfg.json`` with SAELens's transcoder field names (``d_in``, ``d_out``, ``d_sae``, ``hook_name``,
``hook_name_out``, ``architecture``, ``k``) beside actlab's own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..runs import atomic_path, write_json
from ..version import __version__
from .model import Transcoder, TranscoderConfig

WEIGHTS = "transcoder.safetensors"


def save_transcoder(tc: Transcoder, folder: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tc.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "actlab_version": __version__})
    cfg = tc.cfg.to_dict()
    write_json(folder / "cfg.json", {**cfg, "hook_name": cfg["hook_point"], "hook_name_out": cfg["hook_point_out"],
                                     "actlab_kind": "transcoder", **(extra or {})})
    return folder


def load_transcoder(folder: str | os.PathLike[str], device: str = "cpu") -> Transcoder:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / "cfg.json").is_file():
        raise InputError(f"{str(folder)!r} is not a transcoder folder (needs {WEIGHTS} and cfg.json)")
    raw = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
    if raw.get("actlab_kind") != "transcoder":
        raise InputError(f"{str(folder)!r} holds no actlab transcoder (cfg.json actlab_kind is "
                         f"{raw.get('actlab_kind')!r})")
    keys = TranscoderConfig.__dataclass_fields__
    tc = Transcoder(TranscoderConfig(**{k: v for k, v in raw.items() if k in keys}))
    tc.load_state_dict(load_file(str(folder / WEIGHTS), device=device))
    tc.origin = {"folder": str(folder)}
    return tc.to(device)
