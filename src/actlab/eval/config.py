"""The evaluation config (pydantic, YAML) and its presets.

One config names the model, the behaviours (each with an extraction set and disjoint validation and test sets),
the methods that turn an extraction set into an intervention, the grid (layers x strengths), the metrics and the
selection rule. ``actlab eval preset NAME`` prints a starting config; ``tiny`` runs on 2 CPU cores in about a
minute without a judge, ``caa`` is the CAA paper's seven behaviours on SmolLM2-135M-Instruct.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .. import configs
from ..configs import SEED_MAX, StrictConfig, load_preset_config

SOURCES = ("caa", "persona", "sentiment", "refusal", "file")


class BehaviourSpec(StrictConfig):
    """One behaviour: where its extraction, A/B and open-ended prompts come from."""

    name: str
    source: Literal["caa", "persona", "sentiment", "refusal", "file"] = "caa"
    description: str | None = None  # what the behaviour is, for prompting methods and the judge (built-in for CAA)
    direction: Literal["increase", "decrease"] = "increase"  # which way selection pushes the behaviour
    file: Path | None = None  # persona: the JSONL file (relative to data_dir)
    extraction: Path | None = None  # file source: extraction dataset (A/B, pairs or instructions)
    format: Literal["ab", "pairs", "instructions"] = "ab"  # of the extraction file
    negative: Path | None = None  # instructions format: the negative instruction list
    ab: Path | None = None  # file source: A/B items split into validation and test
    open_ended: Path | None = None  # file source: open-ended prompts (an instruction list)

    @model_validator(mode="after")
    def _needs(self) -> BehaviourSpec:
        if self.source == "persona" and self.file is None:
            raise ValueError(f"behaviour {self.name!r}: source persona needs file: (an Anthropic persona JSONL)")
        if self.source == "file" and self.extraction is None:
            raise ValueError(f"behaviour {self.name!r}: source file needs extraction: (a dataset file)")
        if self.source == "file" and self.format == "instructions" and self.negative is None:
            raise ValueError(f"behaviour {self.name!r}: the instructions format needs negative:")
        return self


class GridSpec(StrictConfig):
    layers: str = "all"  # the layer grammar
    multipliers: list[float] = Field(default_factory=lambda: [-2.0, -1.0, 1.0, 2.0], min_length=1)
    angles: list[float] = Field(default_factory=lambda: [45.0, 90.0, 135.0, 180.0], min_length=1)
    positions: str = "auto"

    @model_validator(mode="after")
    def _ranges(self) -> GridSpec:
        from ..hooks.points import parse_layers
        from ..hooks.positions import check_steer_positions

        parse_layers(self.layers, 1 << 20)
        check_steer_positions(self.positions)
        if self.positions == "generated":
            raise ValueError("grid.positions generated steers nothing in an A/B evaluation; use auto, from_eoi or all")
        if not all(0 <= a <= 180 for a in self.angles):
            raise ValueError(f"grid.angles must be within 0..180 degrees, got {self.angles}")
        return self


class JudgeSpec(StrictConfig):
    """An OpenAI-compatible endpoint (vLLM, llama.cpp server, ollama, OpenAI), or a local HF chat model."""

    base_url: str | None = None
    model: str | None = None
    hf: str | None = None  # a local chat model as judge (slow and weak on CPU)
    rubrics: list[Literal["behaviour", "axbench"]] = Field(default_factory=lambda: ["behaviour", "axbench"],
                                                          min_length=1)
    concurrency: int = Field(16, gt=0)
    retries: int = Field(3, ge=0)
    timeout: float = Field(60.0, gt=0)
    cache: Path | None = None  # where replies are cached (default: judge_cache/ in the run folder)

    @model_validator(mode="after")
    def _one(self) -> JudgeSpec:
        if (self.hf is None) == (self.base_url is None):
            raise ValueError("judge: give base_url and model (an OpenAI-compatible endpoint), or hf (a local model)")
        if self.base_url is not None and not self.model:
            raise ValueError("judge: an endpoint needs model:")
        return self


class SideEffects(StrictConfig):
    neutral: Path | None = None  # texts for the next-token KL (default: the IMDb sample under data_dir)
    n_neutral: int = Field(32, gt=0)
    capability: Path | None = None  # MMLU-style JSONL: question, choices, answer
    n_capability: int = Field(50, gt=0)


class OpenEnded(StrictConfig):
    n: int = Field(8, ge=0)  # open-ended test prompts per behaviour (0: none)
    max_new_tokens: int = Field(40, gt=0)


class Selection(StrictConfig):
    """The chosen cell per (behaviour, method): the largest effect on the validation split among the cells whose
    next-token KL on neutral text stays within ``max_kl`` (nats)."""

    max_kl: float = Field(1.0, gt=0)


class Steerability(StrictConfig):
    """Per-item slopes of the log-probability difference against the multiplier (Tan et al. 2024)."""

    multipliers: list[float] = Field(default_factory=lambda: [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], min_length=3)


class EvalConfig(StrictConfig):
    """Everything one evaluation needs (see module docstring)."""

    model: str
    out: Path
    data_dir: Path | None = None  # where the built-in behaviours' files live (default: ACTLAB_DATA_DIR)
    behaviours: list[BehaviourSpec] = Field(min_length=1)
    methods: list[str] = Field(default_factory=lambda: ["prompt", "mean_diff", "pca", "rotation"], min_length=1)
    grid: GridSpec = Field(default_factory=GridSpec)
    extraction_limit: int = Field(64, gt=0)
    ab_limit: int = Field(50, gt=1)  # A/B items read before the validation/test split
    validation_fraction: float = Field(0.5, gt=0, lt=1)
    few_shot: int = Field(3, gt=0)
    steerability: Steerability = Field(default_factory=Steerability)
    open_ended: OpenEnded = Field(default_factory=OpenEnded)
    judge: JudgeSpec | None = None
    side_effects: SideEffects = Field(default_factory=SideEffects)
    selection: Selection = Field(default_factory=Selection)
    sae: dict[str, Path] = Field(default_factory=dict)  # layer -> dictionary folder, for the sae method
    vectors: dict[str, Path] = Field(default_factory=dict)  # name -> vector file, for the file method
    sae_features: int = Field(4, gt=0)
    bootstrap: int = Field(1000, ge=100)
    batch_size: int = Field(16, gt=0)
    cells_per_batch: int = Field(8, gt=0)
    dtype: str | None = None
    device: str | None = None
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @model_validator(mode="after")
    def _whole(self) -> EvalConfig:
        from .methods import METHODS

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods are listed twice: {self.methods}")
        names = [b.name for b in self.behaviours]
        if len(set(names)) != len(names):
            raise ValueError(f"behaviour names must differ: {names}")
        if "sae" in self.methods and not self.sae:
            raise ValueError("the sae method needs sae: {layer: dictionary folder}")
        if "file" in self.methods and not self.vectors:
            raise ValueError("the file method needs vectors: {name: vector file}")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": "stories260k",
        "behaviours": [{"name": "corrigible-neutral-HHH", "source": "caa"}],
        "methods": ["prompt", "mean_diff", "pca", "rotation"],
        "grid": {"layers": "1-3", "multipliers": [-4.0, -2.0, 2.0, 4.0], "angles": [60.0, 120.0, 180.0]},
        "extraction_limit": 32, "ab_limit": 24, "open_ended": {"n": 4, "max_new_tokens": 16},
        "side_effects": {"n_neutral": 16}, "bootstrap": 200, "steerability": {"multipliers": [-2.0, 0.0, 2.0]},
    },
    "caa": {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "behaviours": [{"name": b, "source": "caa"} for b in (
            "coordinate-other-ais", "corrigible-neutral-HHH", "hallucination", "myopic-reward", "refusal",
            "survival-instinct", "sycophancy")],
        "methods": ["prompt", "few_shot", "mean_diff", "pca", "logreg", "rotation", "ablation", "prompt+mean_diff"],
        "grid": {"layers": "6-18:6", "multipliers": [-2.0, -1.0, 1.0, 2.0], "angles": [45.0, 90.0, 135.0, 180.0]},
    },
}


def load_config(path: str | Path) -> EvalConfig:
    """Read a YAML config (``preset: NAME`` supplies defaults the file overrides); relative paths resolve against
    the config file's folder."""
    return load_preset_config(path, EvalConfig, PRESETS, "eval", ("out", "data_dir"))


def preset_yaml(name: str, **fields: Any) -> str:
    return configs.preset_yaml(PRESETS, name, **fields)
