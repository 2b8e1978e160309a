"""SAE training hyper-parameters (a light module: pydantic only, so the CLI shows their defaults in --help
without importing torch)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ..configs import SEED_MAX, StrictConfig
from . import defaults


class TrainConfig(StrictConfig):
    """Training hyper-parameters (loadable from YAML)."""

    steps: int = Field(defaults.STEPS, gt=0)
    batch_size: int = Field(defaults.BATCH_SIZE, gt=0)
    lr: float = Field(defaults.LR, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)  # each in [0, 1)
    warmup_steps: int = Field(0, ge=0)
    decay_start: float = Field(0.8, ge=0, le=1)
    l1_warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)  # None: no clipping
    dead_steps: int = Field(200, gt=0)
    resample_every: int | None = Field(None, gt=0)
    checkpoint_every: int | None = Field(None, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, gt=0)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    normalize_activations: bool = True
    aux_k_coefficient: float = Field(1 / 32, ge=0)
    aux_k: int | None = Field(None, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"Adam's betas must each be in [0, 1), got {list(v)}")
        return v
