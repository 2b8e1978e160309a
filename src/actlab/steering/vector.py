"""``SteeringVector``: per-layer directions plus the metadata needed to use them correctly later.

Saved as safetensors (tensors ``layer.{i}``) with a JSON header under the ``actlab`` metadata key
(schema version, model id, hook point, method, read positions, dataset fingerprint, actlab version...).
Exported to / imported from llama.cpp's GGUF control-vector format: tensors ``direction.{k}`` (F32, 1-D)
that llama.cpp adds to the output of block ``k`` (0-based) at every position, so only ``resid_post``
vectors at layers >= 1 can be exported.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ActlabError, InputError
from ..hooks.points import HookPoint, block_kind
from ..runs import atomic_path

if TYPE_CHECKING:
    from ..hooks.interventions import Edits
    from ..models.model import Model

SCHEMA_VERSION = 1


class VectorMismatchError(ActlabError):
    """A vector does not fit a model (width or layer count), or two vectors are not comparable."""


@dataclass
class SteeringVector:
    """Directions per layer at one hook-point kind (``resid_post`` by default)."""

    vectors: dict[int, torch.Tensor]
    point: str = "resid_post"
    meta: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # file + sha256 when loaded

    def __post_init__(self) -> None:
        try:
            block_kind(self.point)
        except ActlabError as e:
            raise InputError(str(e)) from None
        if not self.vectors:
            raise InputError("a steering vector needs at least one layer")
        widths = {int(v.shape[-1]) for v in self.vectors.values()}
        if len(widths) != 1 or any(v.dim() != 1 for v in self.vectors.values()):
            raise InputError(f"per-layer vectors must be 1-D and equally wide, got widths {sorted(widths)}")
        self.vectors = {int(k): v.detach().float().cpu() for k, v in sorted(self.vectors.items())}

    def __repr__(self) -> str:
        from ..hooks.interventions import point_names

        norms = [float(v.norm()) for v in self.vectors.values()]
        names = ",".join(n.split(".")[1] for n in point_names(HookPoint(i, self.point) for i in self.layers))
        return (f"actlab.SteeringVector({self.point}, layers={names}, d={self.d}, "
                f"method={self.meta.get('method', '?')}, model={self.meta.get('model', '?')!s}, "
                f"norm {min(norms):.3g}..{max(norms):.3g})")

    @property
    def kind(self) -> str:
        """The hook-point kind the vector lives at (the first wave called it ``point``)."""
        return self.point

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def d(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self.vectors:
            raise InputError(f"the vector has no layer {layer}; it has layers {self.layers}")
        return self.vectors[layer]

    def norms(self) -> dict[int, float]:
        return {k: float(v.norm()) for k, v in self.vectors.items()}

    def normalized(self) -> SteeringVector:
        """Unit-norm per layer (metadata records it)."""
        return SteeringVector({k: v / v.norm().clamp_min(1e-12) for k, v in self.vectors.items()}, self.point,
                              {**self.meta, "normalized": True})

    def select(self, layers: Iterable[int]) -> SteeringVector:
        return SteeringVector({k: self[k] for k in layers}, self.point, dict(self.meta), dict(self.origin))

    def provenance(self) -> dict[str, Any]:
        """Where the vector comes from, for run metadata: the file and its sha256 when it was loaded from one,
        and the extraction facts of its header (method, model, read positions, dataset fingerprint)."""
        keys = ("method", "model", "positions", "dataset_fingerprint", "purpose")
        out: dict[str, Any] = {k: self.meta[k] for k in keys if k in self.meta}
        if self.origin:
            out["source"] = dict(self.origin)
        return {"vector": out}

    def apply(self, model: Model, multiplier: float | Sequence[float] = 1.0, *,
              layers: str | int | Iterable[int] | None = None, positions: str = "auto") -> Edits:
        """Steer ``model`` with this vector while the returned context is open (or until ``.remove()``)::

            with vec.apply(model, 4.0, layers="12"):
                model.generate_text(...)

        The same as ``model.edit(Steer(vec, multiplier, layers=..., positions=...))`` - one steering path."""
        from .apply import Steer

        return model.edit(Steer(self, multiplier, layers=layers, positions=positions))

    def check_values(self, what: str = "the vector") -> SteeringVector:
        """Refuse NaN, infinite or all-zero layers (steering with one would give NaN text or do nothing, and
        every cosine or derivative computed from it would be NaN), naming the layer."""
        for k, v in self.vectors.items():
            if not bool(torch.isfinite(v).all()):
                raise InputError(f"{what} has NaN or infinite values at layer {k}")
            if not bool(v.any()):
                raise InputError(f"{what} is zero at layer {k}: it has no direction")
        return self

    def check_fits(self, model: Model) -> None:
        """Refuse a vector whose width or layers do not fit ``model``, naming both shapes."""
        width = HookPoint(0, self.point).width(model)
        if self.d != width:
            raise VectorMismatchError(
                f"vector width {self.d} does not fit {model.name!r}: its {self.point} is {width} wide "
                f"(vector: {len(self.vectors)} layers x {self.d}; model: {model.n_layers} layers x {width})")
        bad = [k for k in self.layers if not 0 <= k < model.n_layers]
        if bad:
            raise VectorMismatchError(
                f"vector layers {bad} do not exist in {model.name!r}, which has layers 0..{model.n_layers - 1} "
                f"(vector: layers {self.layers[0]}..{self.layers[-1]} x {self.d}; model: {model.n_layers} x "
                f"{width})")
        vec_layers = self.meta.get("n_layers")
        if vec_layers is not None and int(vec_layers) != model.n_layers:
            raise VectorMismatchError(
                f"the vector was extracted from a {vec_layers}-layer model ({self.meta.get('model')!r}) but "
                f"{model.name!r} has {model.n_layers} layers")

    # -- safetensors ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (safetensors + JSON header), atomically."""
        from safetensors.torch import save_file

        header = {**self.meta, "schema_version": SCHEMA_VERSION, "point": self.point, "layers": self.layers,
                  "d": self.d}
        header.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        tensors = {f"layer.{k}": v.contiguous() for k, v in self.vectors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"actlab": json.dumps(header, ensure_ascii=False)})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a vector written by :meth:`save` (a GGUF control vector is detected and imported)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"vector file {str(path)!r} does not exist")
        with path.open("rb") as f:
            if f.read(4) == b"GGUF":
                return cls.from_gguf(path)
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("actlab")
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as e:
            raise InputError(f"{path} is not a safetensors steering vector: {e}") from None
        if raw is None:
            raise InputError(f"{path} has no actlab metadata; it is not a steering vector saved by actlab")
        meta, point, vecs = _read_saved(path, raw, tensors)
        return cls(vecs, point, meta, file_origin(path))

    # -- llama.cpp control vectors --------------------------------------------------------------------
    def to_gguf(self, path: str | os.PathLike[str], *, model_hint: str | None = None,
                multiplier: float = 1.0) -> Path:
        """Export as a llama.cpp control vector (``--control-vector`` / ``--control-vector-scaled``)."""
        import numpy as np
        from gguf import GGUFWriter

        if self.point != "resid_post":
            raise InputError(f"llama.cpp control vectors are added to block outputs (resid_post); this vector is "
                             f"at {self.point!r}. Extract it at resid_post to export it")
        layers = [k for k in self.layers if k >= 1]
        if not layers:
            raise InputError("llama.cpp cannot steer block 0's output (direction.0 is invalid there); the vector "
                             f"only has layers {self.layers}")
        hint = model_hint or str(self.meta.get("model_family") or self.meta.get("model") or "unknown")
        with atomic_path(path) as tmp:
            w = GGUFWriter(str(tmp), "controlvector")
            w.add_string("controlvector.model_hint", hint)
            w.add_uint32("controlvector.layer_count", len(layers))
            for k in layers:
                w.add_tensor(f"direction.{k}", (self.vectors[k] * multiplier).numpy().astype(np.float32))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
        return Path(path)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Import a llama.cpp control vector (``direction.{k}`` -> resid_post of block k)."""
        from gguf import GGUFReader

        try:
            reader = GGUFReader(str(path))
        except Exception as e:  # gguf raises Value/struct errors on files that are not GGUF
            raise InputError(f"{path} is not a readable GGUF control vector ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        vecs: dict[int, torch.Tensor] = {}
        for t in reader.tensors:
            name = t.name
            if not name.startswith("direction."):
                continue
            try:
                k = int(name.split(".", 1)[1])
            except ValueError:
                raise InputError(f"{path}: tensor {name!r} has no layer index") from None
            if k <= 0:
                raise InputError(f"{path}: invalid layer index in {name!r} (llama.cpp control vectors start at 1)")
            arr = torch.from_numpy(t.data.copy()).float().reshape(-1)
            vecs[k] = vecs[k] + arr if k in vecs else arr  # llama.cpp sums duplicate layers
        if not vecs:
            raise InputError(f"{path}: no direction.* tensors; not a control vector")
        hint = None
        f = reader.fields.get("controlvector.model_hint")
        if f is not None:
            try:
                hint = f.contents()
            except Exception:  # metadata is cosmetic for llama.cpp too
                hint = None
        return cls(vecs, "resid_post", {"method": "gguf-import", "model_family": hint, "source": str(path)},
                   file_origin(path))


# fields of a vector's metadata other code reads, and the types they must have
_META_TYPES: dict[str, tuple[type, ...]] = {"model": (str,), "model_family": (str, type(None)), "method": (str,),
                                            "positions": (str,), "n_layers": (int,), "d_model": (int,),
                                            "dataset": (dict,), "purpose": (str,), "normalized": (bool,)}


def _read_saved(path: Path, raw: str, tensors: dict[str, torch.Tensor]
                ) -> tuple[dict[str, Any], str, dict[int, torch.Tensor]]:
    """The metadata, hook-point kind and per-layer tensors of a saved vector, every field checked: a file edited
    by hand or written by another tool is refused with one line naming what is wrong."""
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise InputError(f"{path}: the actlab metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: the actlab metadata must be a JSON object, not {type(meta).__name__}")
    version = meta.pop("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError(f"{path}: schema_version must be a whole number, got {version!r}")
    if version > SCHEMA_VERSION:
        raise InputError(f"{path} uses vector schema {version}; this actlab reads up to {SCHEMA_VERSION}")
    point = meta.pop("point", "resid_post")
    if not isinstance(point, str):
        raise InputError(f"{path}: point must be a hook-point kind such as 'resid_post', got {point!r}")
    for key, types in _META_TYPES.items():
        if key in meta and (not isinstance(meta[key], types) or (isinstance(meta[key], bool) and bool not in types)):
            raise InputError(f"{path}: metadata field {key!r} must be {' or '.join(t.__name__ for t in types)}, "
                             f"got {meta[key]!r}")
    vecs: dict[int, torch.Tensor] = {}
    for name, t in tensors.items():
        layer = name.split(".", 1)[1] if name.startswith("layer.") else ""
        if not (layer.lstrip("-").isdigit() and layer.isascii()):
            raise InputError(f"{path}: unexpected tensor {name!r}; a steering vector holds layer.<N> tensors only")
        if t.dim() != 1 or not t.is_floating_point():
            raise InputError(f"{path}: {name} must be a 1-D float tensor, got {tuple(t.shape)} {t.dtype}")
        vecs[int(layer)] = t
    listed = meta.pop("layers", None)
    if listed is not None and (not isinstance(listed, list) or sorted(listed) != sorted(vecs)):
        raise InputError(f"{path}: the metadata lists layers {listed!r} but the file holds tensors for layers "
                         f"{sorted(vecs)}")
    d = meta.pop("d", None)
    if d is not None and vecs and (not isinstance(d, int) or any(v.numel() != d for v in vecs.values())):
        raise InputError(f"{path}: the metadata says width {d!r} but the tensors are "
                         f"{sorted({v.numel() for v in vecs.values()})} wide")
    return meta, point, vecs


def file_origin(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"file", "sha256"}`` of a file an intervention was read from (recorded in run metadata)."""
    from ..runs import sha256_file

    return {"file": str(path), "sha256": sha256_file(path)}

