"""The LFP stages' outputs as types: each is read and written by one function pair (``write(root)``,
``read(root)``), so the stages and the report (:mod:`actlab.lfp.report`) share one schema instead of string
keys. Files live under ``RUN_DIR/<stage>/``; reading never follows a symbolic link (a link in a run folder could
pull any file into a shared report)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from ..runs import no_link_below, write_json, write_text

T = TypeVar("T", bound="Output")


class StageFile:
    """A file a stage writes: ``RUN_DIR/<STAGE>/<FILE>``."""

    STAGE: ClassVar[str] = ""
    FILE: ClassVar[str] = ""

    @classmethod
    def path(cls, root: str | os.PathLike[str]) -> Path:
        return Path(root) / cls.STAGE / cls.FILE


@dataclass
class Output(StageFile):
    """A stage's JSON output; subclasses name their stage and file."""

    def write(self, root: str | os.PathLike[str]) -> Path:
        return write_json(self.path(root), dataclasses.asdict(self))

    @classmethod
    def read(cls: type[T], root: str | os.PathLike[str]) -> T | None:
        """The output when the stage wrote it (a regular file, no link on the way); None otherwise. Fields a
        newer version added are left at their defaults; unknown ones are dropped."""
        p = cls.path(root)
        if not p.is_file() or not no_link_below(root, p):
            return None
        raw = json.loads(p.read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class Finetuned(Output):
    """What the fine-tuning logged (written by :mod:`actlab.finetune`)."""

    STAGE: ClassVar[str] = "finetune"
    FILE: ClassVar[str] = "finetune.json"
    method: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    deviation: str | None = None
    reward: str | None = None  # which reward (RL): the lexicon's or a classifier's


@dataclass
class LayerChoice(Output):
    """The most divergent MLP layers, where the dictionaries are trained."""

    STAGE: ClassVar[str] = "divergence"
    FILE: ClassVar[str] = "layers.json"
    layers: list[int] = field(default_factory=list)
    rule: str = ""
    mlp_divergence: list[float] = field(default_factory=list)


@dataclass
class Dictionaries(Output):
    """Per layer, each trained dictionary's folder and its metrics."""

    STAGE: ClassVar[str] = "sae"
    FILE: ClassVar[str] = "dictionaries.json"
    layers: list[int] = field(default_factory=list)
    point: str = ""
    dictionaries: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class WordSplit(Output):
    """Lexicon words substituted into the triples (``train``) and held out for the agreement (``heldout``)."""

    STAGE: ClassVar[str] = "triples"
    FILE: ClassVar[str] = "word_split.json"
    seed: int = 0
    heldout_fraction: float = 0.0
    rule: str = ""
    train: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)


@dataclass
class Triples(StageFile):
    """Contrastive triples (positive / neutral / negative variants of one text), one JSON object per line."""

    rows: list[dict[str, Any]]
    STAGE: ClassVar[str] = "triples"
    FILE: ClassVar[str] = "triples.jsonl"

    def write(self, root: str | os.PathLike[str]) -> Path:
        return write_text(self.path(root), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows))

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> Triples | None:
        p = cls.path(root)
        if not p.is_file() or not no_link_below(root, p):
            return None
        return cls([json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()])

    def words(self) -> list[str]:
        """The lexicon words substituted into the triples (their positive and negative variants)."""
        return sorted({r[k]["word"] for r in self.rows for k in ("positive", "negative") if r[k].get("word")})


@dataclass
class DeltaSummary(Output):
    STAGE: ClassVar[str] = "deltas"
    FILE: ClassVar[str] = "deltas.json"
    n: int = 0
    n_features: int = 0
    position: str = ""
    mean_delta_pos: float = 0.0
    mean_delta_neg: float = 0.0
    scale: float = 0.0
    layers: list[int] = field(default_factory=list)
    reduce: str = "mean_then_norm"  # codes averaged over the word's tokens, then the norm; or per_token


class TensorFile(StageFile):
    """An output held as named tensors in one safetensors file."""

    def named(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def write(self, root: str | os.PathLike[str]) -> Path:
        from safetensors.torch import save_file

        from ..runs import atomic_path

        with atomic_path(self.path(root)) as tmp:
            save_file({k: v.contiguous() for k, v in self.named().items()}, str(tmp))
        return self.path(root)

    @classmethod
    def read_tensors(cls, root: str | os.PathLike[str]) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        p = cls.path(root)
        if not p.is_file() or not no_link_below(root, p):
            return None
        return load_file(str(p))


@dataclass
class Deltas(TensorFile):
    """SAE features of each triple's variants (``f_pos``, ``f_neu``, ``f_neg``: ``[n, features]``) and the
    feature deltas the probe is trained on."""

    tensors: dict[str, torch.Tensor]
    STAGE: ClassVar[str] = "deltas"
    FILE: ClassVar[str] = "deltas.safetensors"

    def named(self) -> dict[str, torch.Tensor]:
        return self.tensors

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> Deltas | None:
        t = cls.read_tensors(root)
        return None if t is None else cls(t)

    def features(self) -> torch.Tensor:
        """Every variant's features, positive then neutral then negative: ``[3n, features]``."""
        t = self.tensors
        return torch.cat([t["f_pos"], t["f_neu"], t["f_neg"]])


@dataclass
class ProbeSummary(Output):
    STAGE: ClassVar[str] = "probes"
    FILE: ClassVar[str] = "probes.json"
    kind: str = ""
    train: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    xavier_baseline_test: dict[str, float] = field(default_factory=dict)
    n_train_triples: int = 0
    n_test_triples: int = 0
    train_triples: list[int] = field(default_factory=list)  # which triples the probe was fitted on


@dataclass
class Probe(TensorFile):
    """The trained probe (a linear map of standardised features), read once and applied many times."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    STAGE: ClassVar[str] = "probes"
    FILE: ClassVar[str] = "probe.safetensors"

    def named(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias, "mean": self.mean, "scale": self.scale}

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> Probe | None:
        t = cls.read_tensors(root)
        return None if t is None else cls(t["weight"], t["bias"], t["mean"], t["scale"])

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.scale

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardise(x) @ self.weight + self.bias


@dataclass
class Agreement(Output):
    """The probe's agreement with the lexicon on held-out and training words (the study's Tables 4, 5, 10)."""

    STAGE: ClassVar[str] = "agreement"
    FILE: ClassVar[str] = "agreement.json"
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    n_heldout: int = 0
    n_train_words: int = 0
    split: dict[str, Any] = field(default_factory=dict)
    error_definition: str = ""
    frequency: dict[str, Any] = field(default_factory=dict)
    templates: list[str] = field(default_factory=list)
    contexts: dict[str, Any] = field(default_factory=dict)  # where each word was read: templates or IMDb passages
    words: list[dict[str, Any]] = field(default_factory=list)
    train_words: list[dict[str, Any]] = field(default_factory=list)
    kendall_tau: float = float("nan")
    p_value: float = float("nan")
    sign_accuracy: float = float("nan")
    sign_accuracy_positive: float = float("nan")
    sign_accuracy_negative: float = float("nan")
    kendall_tau_negative: float = float("nan")
    p_value_negative: float = float("nan")
    n_words: int = 0


@dataclass
class Features(Output):
    """Feature validation: labels, firing rates on strongly-predicted inputs, and ablation rewards."""

    STAGE: ClassVar[str] = "features"
    FILE: ClassVar[str] = "features.json"
    label_note: str = ""
    frequency: dict[str, Any] = field(default_factory=dict)
    ablation: dict[str, Any] = field(default_factory=dict)
    n_features: int = 0
    n_related: int = 0
    features: list[dict[str, Any]] = field(default_factory=list)
    source: str = "sae_overlap"  # or "crosscoder" (feature_source)
    crosscoder: dict[str, Any] = field(default_factory=dict)  # its summary, when it was the source
    base: dict[str, Any] = field(default_factory=dict)  # features_on_base: the base model's features, explained
