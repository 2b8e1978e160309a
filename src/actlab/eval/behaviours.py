"""Behaviours: for each, an extraction set (what vector methods learn from) and disjoint validation and test sets
(A/B items, both letter orders; open-ended prompts), read before any model loads.

Built in: the CAA paper's seven behaviours (``caa``: the generate set for extraction, the A/B test set split into
validation and test, the open-ended test prompts), Anthropic persona Yes/No files (``persona``: as A/B choices with
the letters balanced), sentiment (``sentiment``: contrastive pairs for extraction, IMDb review openings to
continue, scored by VADER) and refusal (``refusal``: harmful vs harmless instructions, refusal-phrase rate on
held-out harmless instructions). Any user file in the formats ``steer extract`` reads (``file``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import ABItem, imdb_prefixes, load_ab, load_instructions
from ..data import path as packaged
from ..errors import InputError
from ..jobs.steering import ContrastData, read_contrast
from .config import BehaviourSpec, EvalConfig

# what each CAA behaviour is (the CAA paper's definitions, shortened): prompting methods and judges read it
CAA_DESCRIPTIONS = {
    "coordinate-other-ais": "coordinating with other AI systems, even against the interests of its developers or "
                            "users",
    "corrigible-neutral-HHH": "being willing to have its goals changed by its developers (corrigibility)",
    "hallucination": "accepting false premises and making up facts (hallucination)",
    "myopic-reward": "preferring a small immediate reward over a larger delayed one (myopia)",
    "refusal": "refusing to answer the user's request",
    "survival-instinct": "wanting to avoid being shut down or modified (self-preservation)",
    "sycophancy": "telling the user what they want to hear rather than the truth (sycophancy)",
}
BUILT_IN_DESCRIPTIONS = {"sentiment": "writing with positive sentiment: warmth, praise, happiness",
                         "refusal": "refusing the user's request"}
REFUSAL_ANSWER = "I'm sorry, but I can't help with that."


@dataclass
class Behaviour:
    """One behaviour's data (see module docstring). ``scorer`` names the judge-free score of its generations
    (``vader``, ``refusal`` or None); ``val_open`` are open-ended validation prompts, used for selection when
    the behaviour has no A/B items."""

    spec: BehaviourSpec
    description: str
    extraction: ContrastData
    validation: list[ABItem] = field(default_factory=list)
    test: list[ABItem] = field(default_factory=list)
    val_open: list[str] = field(default_factory=list)
    test_open: list[str] = field(default_factory=list)
    scorer: str | None = None
    few_shot: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def has_ab(self) -> bool:
        return bool(self.validation)


def data_dir(cfg: EvalConfig) -> Path:
    d = cfg.data_dir or (Path(os.environ["ACTLAB_DATA_DIR"]) if os.environ.get("ACTLAB_DATA_DIR") else None)
    if d is None:
        raise InputError("the built-in behaviours read their files from data_dir: (or ACTLAB_DATA_DIR); set one")
    return d


def _need(p: Path, what: str) -> Path:
    if not p.is_file():
        raise InputError(f"{what}: {str(p)!r} does not exist")
    return p


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded split into ``(validation, test)``; ``fraction`` goes to validation. Disjoint, deterministic."""
    if len(items) < 2:
        raise InputError(f"{len(items)} items cannot be split into validation and test; give at least 2")
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(len(items) * fraction)), len(items) - 1)
    return [items[i] for i in perm[:n_val]], [items[i] for i in perm[n_val:]]


def load_behaviour(spec: BehaviourSpec, cfg: EvalConfig) -> Behaviour:
    """Read and check one behaviour's files (no model needed)."""
    n_open = cfg.open_ended.n
    if spec.source == "caa":
        root = data_dir(cfg) / "caa"
        if spec.name not in CAA_DESCRIPTIONS and spec.description is None:
            raise InputError(f"unknown CAA behaviour {spec.name!r}; valid: {', '.join(CAA_DESCRIPTIONS)} (or give "
                             "description: for another folder)")
        gen = _need(root / "generate" / spec.name / "generate_dataset.json", f"behaviour {spec.name}")
        ab = load_ab(_need(root / "test" / spec.name / "test_dataset_ab.json", f"behaviour {spec.name}"),
                     limit=cfg.ab_limit)
        val, test = split(ab, cfg.validation_fraction, cfg.seed)
        opened = root / "test" / spec.name / "test_dataset_open_ended.json"
        test_open = load_instructions(opened, limit=n_open) if opened.is_file() and n_open else []
        ext = read_contrast(gen, format="ab", limit=cfg.extraction_limit)
        return Behaviour(spec, spec.description or CAA_DESCRIPTIONS[spec.name], ext, val, test, [], test_open,
                         few_shot=[(it.question, it.matching) for it in ext.items])
    if spec.source == "persona":
        assert spec.file is not None
        f = spec.file if spec.file.is_absolute() else data_dir(cfg) / spec.file
        items = load_ab(_need(f, f"behaviour {spec.name}"), as_choices=True,
                        limit=cfg.extraction_limit + cfg.ab_limit)
        if len(items) < cfg.extraction_limit + 2:
            raise InputError(f"behaviour {spec.name}: {f} has {len(items)} items, too few for "
                             f"{cfg.extraction_limit} extraction items and a validation and test split")
        ext_items, rest = items[:cfg.extraction_limit], items[cfg.extraction_limit:]
        val, test = split(rest, cfg.validation_fraction, cfg.seed)
        return Behaviour(spec, spec.description or _persona_description(f), ContrastData("ab", str(f), ext_items),
                         val, test, few_shot=[(it.question, it.matching) for it in ext_items])
    if spec.source == "sentiment":
        from ..data import load_pairs

        pairs_file = packaged("sentiment_pairs.jsonl")
        pairs = load_pairs(pairs_file, limit=cfg.extraction_limit)
        imdb = _need(data_dir(cfg) / "imdb" / "imdb_test_sample.csv", f"behaviour {spec.name}")
        prompts = imdb_prefixes(imdb, max(2 * max(n_open, 4), 8))
        val, test = split(prompts, cfg.validation_fraction, cfg.seed)
        return Behaviour(spec, spec.description or BUILT_IN_DESCRIPTIONS["sentiment"],
                         ContrastData("pairs", str(pairs_file), pairs=pairs), val_open=val,
                         test_open=test[:max(n_open, 4)], scorer="vader",
                         few_shot=[("Write one sentence.", p.positive) for p in pairs])
    if spec.source == "refusal":
        splits = data_dir(cfg) / "refusal_direction" / "splits"
        harmful = load_instructions(_need(splits / "harmful_train.json", "refusal"), limit=cfg.extraction_limit)
        harmless = load_instructions(_need(splits / "harmless_train.json", "refusal"), limit=cfg.extraction_limit)
        val_open = load_instructions(_need(splits / "harmless_val.json", "refusal"), limit=max(n_open, 4))
        test_open = load_instructions(_need(splits / "harmless_test.json", "refusal"), limit=max(n_open, 4))
        return Behaviour(spec, spec.description or BUILT_IN_DESCRIPTIONS["refusal"],
                         ContrastData("instructions", str(splits), positive=harmful, negative=harmless),
                         val_open=val_open, test_open=test_open, scorer="refusal",
                         few_shot=[(h, REFUSAL_ANSWER) for h in harmless[:8]])
    # a user's files
    assert spec.extraction is not None
    ext = read_contrast(spec.extraction, format=spec.format, negative=spec.negative, limit=cfg.extraction_limit)
    val, test = split(load_ab(spec.ab, limit=cfg.ab_limit), cfg.validation_fraction, cfg.seed) if spec.ab else ([], [])
    opens = load_instructions(spec.open_ended, limit=2 * max(n_open, 2)) if spec.open_ended else []
    val_open, test_open = split(opens, cfg.validation_fraction, cfg.seed) if len(opens) >= 2 else ([], opens)
    if not val and not val_open:
        raise InputError(f"behaviour {spec.name}: give ab: (A/B items) or open_ended: prompts to evaluate on")
    shots = ([(it.question, it.matching) for it in ext.items] if ext.format == "ab"
             else [("Write one sentence.", p.positive) for p in ext.pairs] if ext.format == "pairs" else [])
    return Behaviour(spec, spec.description or spec.name, ext, val, test, val_open, test_open, few_shot=shots)


def _persona_description(f: Path) -> str:
    """A persona file's behaviour, from its name (``desire-for-power.jsonl`` -> ``desire for power``)."""
    return re.sub(r"[-_]+", " ", f.stem)


def swap_letters(item: ABItem) -> ABItem | None:
    """The item with its two choices' texts exchanged, so the matching answer moves to the other letter (the
    letter-balance check); None when the question does not list ``(A)``/``(B)`` choices on their own lines."""
    m_a = re.search(r"^(\s*)\(A\)(.*)$", item.question, flags=re.M)
    m_b = re.search(r"^(\s*)\(B\)(.*)$", item.question, flags=re.M)
    labels = {item.matching_label, item.not_matching_label}
    if m_a is None or m_b is None or labels != {"A", "B"}:
        return None
    if m_a.start() > m_b.start():
        return None
    q = item.question
    new_a = f"{m_a.group(1)}(A){m_b.group(2)}"
    new_b = f"{m_b.group(1)}(B){m_a.group(2)}"
    q = q[:m_a.start()] + new_a + q[m_a.end():m_b.start()] + new_b + q[m_b.end():]

    def flip(ans: str) -> str:
        return ans.replace("(A)", "\0").replace("(B)", "(A)").replace("\0", "(B)") if "(" in ans else \
            {"A": "B", "B": "A"}.get(ans.strip(), ans)

    return ABItem(q, flip(item.matching), flip(item.not_matching))


def both_orders(items: list[ABItem]) -> tuple[list[ABItem], list[int], list[int]]:
    """Every item in its own order and, where it lists lettered choices, with the choices swapped: ``(items,
    source index per row, order per row: 0 as given, 1 swapped)``."""
    rows, src, order = [], [], []
    for i, it in enumerate(items):
        rows.append(it)
        src.append(i)
        order.append(0)
        sw = swap_letters(it)
        if sw is not None:
            rows.append(sw)
            src.append(i)
            order.append(1)
    return rows, src, order


def read_capability(path: Path, limit: int) -> list[dict]:
    """An MMLU-style multiple-choice set (JSON array or JSONL rows ``{"question": str, "choices": [str, ...],
    "answer": index or letter}``), checked before any model loads."""
    from ..data.readers import DatasetError, rows

    out = []
    for line, row in rows(path, what="capability set"):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: a row must be an object with question, choices and answer")
        q, ch, ans = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise DatasetError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(ch, list) or not 2 <= len(ch) <= 26 or not all(isinstance(c, str) for c in ch):
            raise DatasetError(f"{where}: 'choices' must be a list of 2 to 26 strings")
        if isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().upper().isalpha():
            ans = ord(ans.strip().upper()) - 65
        if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(ch):
            raise DatasetError(f"{where}: 'answer' must be a choice index 0..{len(ch) - 1} or its letter, got "
                               f"{row.get('answer')!r}")
        out.append({"question": q, "choices": ch, "answer": ans})
        if len(out) >= limit:
            break
    return out
