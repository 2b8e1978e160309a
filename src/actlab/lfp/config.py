"""The LFP run configuration (pydantic, YAML) and its presets.

``tiny`` runs on a CPU in minutes with the models and data in ``../shared`` (TinyStories-656K, IMDb);
``paper`` follows the study's settings for a GPU (dictionaries at 1x and 2x the MLP width, L1 1e-3, learning
rate 1e-3, batch 32, tied decoders, top-5 divergent MLP layers, RL with batch 64, KL 0.5, lr 1e-6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from ..configs import StrictConfig, build_config, read_yaml_mapping
from ..errors import InputError
from ..finetune.dpo import DPOSettings
from ..finetune.rl import RLConfig
from ..sae.config import TrainConfig
from ..sae.spec import DictionarySpec, SAETrainSpec


class FinetuneSpec(StrictConfig):
    method: str = "rl"  # rl or dpo
    data: Path | None = None  # IMDb CSV for rl; preference JSONL(.gz) for dpo
    swap: bool = False
    rl: RLConfig = Field(default_factory=RLConfig)
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    n_pairs: int | None = None


class SAESpec(StrictConfig):
    """The LFP shorthand for one SAE training run per divergent layer: dictionaries named ``{expansion}x``
    with a common L1 coefficient and tying (turned into the shared :class:`SAETrainSpec`)."""

    expansions: list[float] = Field(default_factory=lambda: [1.0, 2.0])
    l1_coefficient: float = 1e-3
    tied: bool = True
    point: str = "mlp_out"
    n_texts: int = 2000
    max_length: int = 128
    eval_batches: int = 4
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=5000, batch_size=32, lr=1e-3,
                                                                   normalize_activations=False))

    def train_spec(self, *, cache: Path, point: str, out: Path) -> SAETrainSpec:
        return SAETrainSpec(point=point, out=out, cache=cache, train=self.train, eval_batches=self.eval_batches,
                            dictionaries=[DictionarySpec(expansion=e, l1_coefficient=self.l1_coefficient,
                                                         tied=self.tied, name=f"{e:g}x") for e in self.expansions])


class TriplesSpec(StrictConfig):
    source: str = "lexicon"  # lexicon (sentiment task), file, or llm (OpenAI-compatible rewriter)
    file: Path | None = None
    n: int = 1000
    window_words: int = 40
    min_valence: float = 1.5
    heldout_fraction: float = Field(0.3, gt=0, lt=1)  # lexicon words kept out of the triples, scored for agreement
    rewriter_base_url: str | None = None
    rewriter_model: str | None = None
    seed: int = 0


class ExplainerSpec(StrictConfig):
    kind: str = "openai"  # openai, hf, or none
    base_url: str | None = None
    model: str | None = None
    n_features: int = 20
    contexts: int = 8
    n_texts: int = 200


class LFPConfig(StrictConfig):
    """Everything one LFP run needs; every stage reads it and the run directory."""

    run_dir: Path
    base_model: str
    tuned_model: str | None = None
    task: str = "sentiment"  # sentiment or dialogue
    task_description: str = "sentiment: positive or negative feelings, praise or criticism"
    data: Path | None = None  # texts (IMDb CSV) for dictionaries, triples, contexts and ablation prompts
    top_k_layers: int = 5
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    sae: SAESpec = Field(default_factory=SAESpec)
    dictionary: str = "1x"  # which width feeds the probes (the smaller one by default)
    triples: TriplesSpec = Field(default_factory=TriplesSpec)
    delta_position: str = "word"  # word (the substituted word's tokens) or input (all tokens)
    probe_test_fraction: float = 0.2
    probe_alpha: float = 1.0
    n_agreement_words: int = 300  # per group: held-out words and (up to as many) training words
    frequency_prompts: int = 64  # generations of the tuned model counted for the word-frequency figure (Fig. 4)
    explainer: ExplainerSpec = Field(default_factory=ExplainerSpec)
    ablation_prompts: int = 64
    ablation_new_tokens: int = 48
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None  # "auto": spread a model too large for one GPU (accelerate), see docs/scale.md
    max_memory: dict[str, str] | None = None  # with device_map: {"0": "20GiB", "cpu": "64GiB"}
    seed: int = 0


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        "base_model": "tinystories-656k",
        "finetune": {"method": "rl", "rl": {"batch_size": 16, "num_generations": 4, "beta": 0.1, "lr": 1e-3,
                                             "max_steps": 20, "max_completion_length": 24, "n_prompts": 160}},
        # L1 2 on normalised activations: L0 ~10 of 128 features (EV ~0.64); L1 0.5 gave L0 ~45 (dense)
        "sae": {"expansions": [1.0, 2.0], "l1_coefficient": 2.0, "tied": True, "n_texts": 400, "max_length": 64,
                "train": {"steps": 1200, "batch_size": 256, "lr": 1e-3, "warmup_steps": 20, "l1_warmup_steps": 50,
                          "normalize_activations": True, "log_every": 50}},
        "triples": {"n": 240, "window_words": 24},
        # 256 standardised features from 192 training triples: strong ridge regularisation has the lowest
        # held-out error (alpha 1: R^2 -0.71, 100: -0.24, 1000: -0.05 on the shared IMDb sample)
        "probe_alpha": 1000.0,
        "n_agreement_words": 200,
        "frequency_prompts": 24,
        "explainer": {"kind": "none", "n_features": 8, "contexts": 5, "n_texts": 80},
        "ablation_prompts": 24,
        "ablation_new_tokens": 24,
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path) -> LFPConfig:
    """Read a YAML config; ``preset: tiny|paper`` supplies defaults the file overrides; relative paths are
    resolved against the config file's folder."""
    p = Path(path)
    raw = read_yaml_mapping(p)
    preset = raw.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
        raw = _merge(PRESETS[preset], raw)
    for key in ("run_dir", "data"):
        if raw.get(key) and not Path(raw[key]).is_absolute():
            raw[key] = str((p.parent / raw[key]).resolve())
    return build_config(LFPConfig, raw, "LFP")


def preset_yaml(name: str, **fields: Any) -> str:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return yaml.safe_dump({"preset": name, **fields}, sort_keys=False, width=1 << 30)  # never folded
