"""The LFP run configuration (pydantic, YAML) and its presets.

``tiny`` runs on a CPU in minutes with the models and data in ``../shared`` (TinyStories-656K, IMDb);
``paper`` follows the study's settings for a GPU (dictionaries at 1x and 2x the MLP width, L1 1e-3, learning
rate 1e-3, batch 32, tied decoders, top-5 divergent MLP layers, RL with batch 64, KL 0.5, lr 1e-6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, model_validator

from .. import configs
from ..configs import SEED_MAX, StrictConfig, load_preset_config
from ..finetune.dpo import DPOSettings
from ..finetune.rl import RLConfig
from ..sae.config import TrainConfig
from ..sae.spec import DictionarySpec, SAETrainSpec
from .completions import CompletionSpec


class FinetuneSpec(StrictConfig):
    method: Literal["rl", "dpo"] = "rl"
    data: Path | None = None  # IMDb CSV for rl; preference JSONL(.gz) for dpo
    swap: bool = False
    rl: RLConfig = Field(default_factory=RLConfig)
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    n_pairs: int | None = Field(None, gt=0)


class SAESpec(StrictConfig):
    """The LFP shorthand for one SAE training run per divergent layer: dictionaries named ``{expansion}x``
    with a common L1 coefficient and tying (turned into the shared :class:`SAETrainSpec`)."""

    expansions: list[PositiveFloat] = Field(default_factory=lambda: [1.0, 2.0], min_length=1)
    l1_coefficient: float = Field(1e-3, ge=0)
    tied: bool = True
    point: str = "mlp_out"
    n_texts: int = Field(2000, gt=0)
    max_length: int = Field(128, gt=1)
    eval_batches: int = Field(4, ge=0)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=5000, batch_size=32, lr=1e-3,
                                                                   normalize_activations=False))

    def train_spec(self, *, cache: Path, point: str, out: Path) -> SAETrainSpec:
        return SAETrainSpec(point=point, out=out, cache=cache, train=self.train, eval_batches=self.eval_batches,
                            dictionaries=[DictionarySpec(expansion=e, l1_coefficient=self.l1_coefficient,
                                                         tied=self.tied, name=f"{e:g}x") for e in self.expansions])


class TriplesSpec(StrictConfig):
    source: Literal["lexicon", "file", "llm"] = "lexicon"  # llm: an OpenAI-compatible rewriter
    file: Path | None = None
    n: int = Field(1000, gt=0)
    window_words: int = Field(40, gt=0)
    min_valence: float = Field(1.5, ge=0)
    heldout_fraction: float = Field(0.3, gt=0, lt=1)  # lexicon words kept out of the triples, scored for agreement
    rewriter_base_url: str | None = None
    rewriter_model: str | None = None
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @model_validator(mode="after")
    def _source_needs(self) -> TriplesSpec:
        if self.source == "file" and self.file is None:
            raise ValueError("triples.source 'file' needs triples.file")
        if self.source == "llm" and not (self.rewriter_base_url and self.rewriter_model):
            raise ValueError("triples.source 'llm' needs triples.rewriter_base_url and triples.rewriter_model")
        return self


class ExplainerSpec(StrictConfig):
    kind: Literal["openai", "hf", "none"] = "none"  # offline by default: labels by self-consistency (said so)
    base_url: str | None = None
    model: str | None = None
    n_features: int = Field(20, gt=0)
    contexts: int = Field(8, gt=0)
    n_texts: int = Field(200, gt=0)
    score: bool = False  # score each label by detection and fuzzing through the same endpoint (actlab.explain)
    per_request: int = Field(5, gt=0)  # contexts per scoring request
    logprobs: int = Field(0, ge=0, le=20)  # ask the scorer for top-K log-probabilities: AUCs, expected simulation
    simulate: bool = False  # also score by simulation (Bills et al. 2023)

    @model_validator(mode="after")
    def _kind_needs(self) -> ExplainerSpec:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("explainer.kind 'openai' needs explainer.base_url and explainer.model (or kind: none)")
        if self.score and self.kind != "openai":
            raise ValueError("explainer.score needs explainer.kind 'openai' (the scorer is the same endpoint)")
        if (self.logprobs or self.simulate) and not self.score:
            raise ValueError("explainer.logprobs and explainer.simulate refine the scores: set explainer.score: true")
        if self.kind == "hf" and not self.model:
            raise ValueError("explainer.kind 'hf' needs explainer.model (a local chat model)")
        return self


class CrosscoderSpec(StrictConfig):
    """The features stage's crosscoder (``feature_source: crosscoder``): one dictionary over the base and the
    tuned model's activations at one layer (:mod:`actlab.crosscoder`), whose tuned-only latents and shared
    latents whose decoder direction moved are the candidates, instead of per-model SAEs matched by cosine.
    Defaults as ``actlab diff crosscoder`` (docs/diffing.md)."""

    layer: int | None = Field(None, ge=0)  # default: the most divergent of the selected layers
    point: str | None = None  # default: sae.point (the dictionaries' point kind)
    expansion: int = Field(8, gt=0)
    k: int = Field(32, gt=0)
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(1024, gt=0)
    lr: float = Field(1e-3, gt=0)
    n_texts: int = Field(400, gt=0)
    max_length: int = Field(128, gt=1)
    shifted_cosine: float = Field(0.5, ge=-1, le=1)  # shared latents below this decoder cosine: "shifted"
    min_frequency: float = Field(1e-3, ge=0, le=1)  # candidates fire on at least this fraction of held-out tokens


class LFPConfig(StrictConfig):
    """Everything one LFP run needs; every stage reads it and the run directory."""

    run_dir: Path
    base_model: str
    tuned_model: str | None = None
    task: Literal["sentiment", "dialogue"] = "sentiment"
    task_description: str = "sentiment: positive or negative feelings, praise or criticism"
    data: Path | None = None  # texts (IMDb CSV) for dictionaries, triples, contexts and ablation prompts
    top_k_layers: int = Field(5, gt=0)
    layers: list[int] | None = None  # override the most divergent layers (the study's Table 12: e.g. the lowest)
    strong_inputs: Literal["top_fraction", "paper"] = "top_fraction"  # top 20% |prediction|, or the study's > 3
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    sae: SAESpec = Field(default_factory=SAESpec)
    dictionary: str = "1x"  # which width feeds the probes (the smaller one by default)
    triples: TriplesSpec = Field(default_factory=TriplesSpec)
    delta_position: Literal["word", "input"] = "word"  # the substituted word's tokens, or all tokens
    delta_reduce: Literal["mean_then_norm", "per_token"] = "mean_then_norm"  # the study: per-token deltas averaged
    probe_test_fraction: float = Field(0.2, gt=0, lt=1)
    probe_alpha: float = Field(1.0, gt=0)
    n_agreement_words: int = Field(300, gt=0)  # per group: held-out words and (up to as many) training words
    agreement_contexts: Literal["templates", "imdb"] = "templates"  # 3 neutral templates, or real IMDb passages
    agreement_n_contexts: int = Field(3, gt=0)  # with imdb: passages per word (fewer when the data has fewer)
    agreement_texts: int = Field(5000, gt=0)  # with imdb: reviews searched (those the triples came from excluded)
    frequency_prompts: int = Field(64, ge=0)  # generations of the tuned model counted for Fig. 4
    completions: CompletionSpec = Field(default_factory=CompletionSpec)  # how Fig. 4's and the ablations' are made
    explainer: ExplainerSpec = Field(default_factory=ExplainerSpec)
    feature_source: Literal["sae_overlap", "crosscoder"] = "sae_overlap"  # the features stage's candidates
    crosscoder: CrosscoderSpec = Field(default_factory=CrosscoderSpec)
    ablation_prompts: int = Field(64, ge=0)
    features_on_base: bool = False  # the study's Appendix B: dictionaries on the base model too, explained alike
    ablation_new_tokens: int = Field(48, gt=0)
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None  # "auto": spread a model too large for one GPU (accelerate), see docs/scale.md
    max_memory: dict[str, str] | None = None  # with device_map: {"0": "20GiB", "cpu": "64GiB"}
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @model_validator(mode="after")
    def _whole(self) -> LFPConfig:
        """Checks across fields, at load, so a run cannot fail minutes in on a value it could have refused."""
        names = [f"{e:g}x" for e in self.sae.expansions]
        if self.dictionary not in names:
            raise ValueError(f"dictionary {self.dictionary!r} is not one of the trained widths {names} "
                             "(sae.expansions)")
        if self.tuned_model is None and self.finetune.method == "dpo" and self.finetune.data is None:
            raise ValueError("finetune.method dpo needs finetune.data (HH-RLHF or prompt/chosen/rejected JSONL)")
        if self.tuned_model is None and self.finetune.method == "rl" and self.finetune.data is None \
                and self.data is None:
            raise ValueError("finetune.method rl needs finetune.data or data (IMDb CSV for review prefixes)")
        if self.delta_reduce == "per_token" and self.delta_position != "word":
            raise ValueError("delta_reduce 'per_token' pairs the substituted words' tokens; it needs delta_position "
                             "'word' (the variants' other tokens do not line up)")
        if self.triples.source != "file" and self.data is None:
            raise ValueError("the config needs data: (a text dataset such as the IMDb CSV) for the triples")
        from ..models.placement import placement

        try:
            placement(self.device_map, self.max_memory)
        except Exception as e:  # a one-line reason, reported at the field
            raise ValueError(str(e)) from None
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # the study's Table 6: 1000 sampled completions of 30-token IMDb prefixes, for Fig. 4 and the ablations
    "paper": {"completions": {"prefix_tokens": 30, "sample": True}, "frequency_prompts": 1000,
              "ablation_prompts": 1000, "delta_reduce": "per_token", "agreement_contexts": "imdb",
              "strong_inputs": "paper"},
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
        # feature_source: crosscoder reads these (a 656K-parameter model: 512 latents, k 8, 800 steps)
        "crosscoder": {"expansion": 4, "k": 8, "steps": 800, "batch_size": 256, "n_texts": 400, "max_length": 64},
        "ablation_prompts": 24,
        "ablation_new_tokens": 24,
    },
}


def load_config(path: str | Path) -> LFPConfig:
    """Read a YAML config (``preset: NAME`` supplies defaults the file overrides); relative paths resolve against
    the config file's folder."""
    return load_preset_config(path, LFPConfig, PRESETS, "LFP", ("run_dir", "data"))


def preset_yaml(name: str, **fields: Any) -> str:
    return configs.preset_yaml(PRESETS, name, **fields)
