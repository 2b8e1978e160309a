"""Run specifications for ``actlab sae train`` (pydantic, loadable from YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from ..configs import StrictConfig, build_config, read_yaml_mapping
from .config import TrainConfig
from .dictionary import SAEConfig


class DictionarySpec(StrictConfig):
    """One dictionary: its width as a multiple of the input (``expansion``) or absolute (``d_sae``)."""

    expansion: float | None = Field(1.0, gt=0)
    d_sae: int | None = Field(None, gt=0)
    architecture: str = "relu"
    l1_coefficient: float = Field(1e-3, ge=0)
    k: int | None = Field(None, gt=0)
    tied: bool = False
    name: str = ""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        """The name becomes a folder under the run folder's saes/: it may not leave it."""
        import unicodedata

        if v and (v in (".", "..") or "/" in v or "\\" in v or v.startswith("~") or ":" in v):
            raise ValueError(f"dictionary name {v!r} must be a plain folder name (no '/', '..', '~' or ':')")
        bad = [c for c in v if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
        if bad:  # NUL breaks the file system; U+202E displays the name reversed in every page and terminal
            raise ValueError(f"dictionary name {v!r} contains control or formatting characters "
                             f"({', '.join(f'U+{ord(c):04X}' for c in bad[:3])})")
        return v

    def to_config(self, d_in: int, *, hook_point: str, model: str) -> SAEConfig:
        d_sae = self.d_sae or round((self.expansion or 1.0) * d_in)
        return SAEConfig(d_in=d_in, d_sae=d_sae, architecture=self.architecture, l1_coefficient=self.l1_coefficient,
                         k=self.k, tied=self.tied, hook_point=hook_point, model=model, name=self.name)


class SAETrainSpec(StrictConfig):
    """Everything ``sae train`` needs: the activation source, the dictionaries, the training settings."""

    point: str
    out: Path
    cache: Path | None = None
    model: str | None = None
    data: Path | None = None
    n_texts: int | None = Field(None, gt=0)
    dictionaries: list[DictionarySpec] = Field(default_factory=lambda: [DictionarySpec()])
    train: TrainConfig = Field(default_factory=TrainConfig)
    device: str = "cpu"
    buffer_shards: int = Field(4, gt=0)
    eval_batches: int = Field(8, ge=0)
    max_length: int = Field(256, gt=1)

    @model_validator(mode="after")
    def _source(self) -> SAETrainSpec:
        if self.cache is None and (self.model is None or self.data is None):
            raise ValueError("give an activation cache (cache: ...) or a model and a text dataset for on-the-fly "
                             "activations (model: ..., data: ...)")
        if not self.dictionaries:
            raise ValueError("dictionaries: give at least one dictionary")
        return self


def load_spec(path: str | Path | None, overrides: dict[str, Any]) -> SAETrainSpec:
    """Read a YAML spec (optional) and apply command-line overrides (None values are ignored)."""
    raw: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    train = dict(raw.get("train") or {})
    for k in list(overrides):
        if k.startswith("train.") and overrides[k] is not None:
            train[k[6:]] = overrides.pop(k)
        elif k.startswith("train."):
            overrides.pop(k)
    raw["train"] = train
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(SAETrainSpec, raw, "SAE training")
