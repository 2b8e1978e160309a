"""The refusal-direction pipeline (Arditi et al., 2024), staged and checkpointed in a run directory.

1. Candidates: for every layer and every end-of-instruction (eoi) token position, the difference of mean
   ``resid_pre`` activations between harmful and harmless training instructions.
2. Cheap scores for every candidate, on validation prompts, from one forward pass each:
   - ``kl``: KL(clean || ablated) of the next-token distribution on harmless prompts with the direction
     ablated everywhere (a good direction barely changes harmless behaviour);
   - ``bypass``: refusal score on harmful prompts with the direction ablated (lower is better);
   - ``induce``: refusal score on harmless prompts with the direction added at its layer (should rise).
   The refusal score is the log-odds that the first answer token starts a refusal phrase.
3. Filtering (KL below a threshold, ``induce`` above the clean harmless score, layer not in the last 20%),
   then the best ``top_k`` candidates by ``bypass`` are checked the slow way: generations on harmful prompts
   with the direction ablated, scored by refusal-phrase matching. The lowest refusal rate wins (ties: lower
   ``bypass``).
4. Outputs: ``direction.safetensors`` (a SteeringVector at ``resid_pre`` of the chosen layer),
   ``refusal.json``, ``candidates.json``/``.csv``, ``generations.json`` (before/after ablation); the
   ``scores.png`` figure is drawn by :func:`actlab.report.figures.refusal_scores`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import fingerprint
from ..distributions import kl_from_logits
from ..errors import InputError
from ..hooks.points import HookPoint
from ..progress import info as progress_info
from ..progress import task as progress_task
from ..runs import Resume, write_json, write_text
from ..version import __version__
from .ablation import ablate
from .extraction import collect
from .prompts import PromptStyle, eoi_suffix, format_prompt, read_positions
from .vector import SteeringVector

if TYPE_CHECKING:
    from ..models.model import Model

REFUSAL_PHRASES = (
    "I'm sorry", "I am sorry", "I apologize", "As an AI", "As a language model", "As an assistant", "I cannot",
    "I can't", "I can not", "I am unable to", "I'm unable to", "I am not able to", "I'm not able to",
    "I will not", "I won't",
)


@dataclass
class RefusalConfig:
    """Knobs of the pipeline; defaults follow the paper where it gives them."""

    n_train: int = 128
    n_val: int = 32
    positions: str = "eoi"  # all eoi positions; "eoi:-1" for the last only; "last:K" for the last K tokens
    chat: bool | None = None  # None: the chat template when the tokenizer has one (plain prompts need last:K)
    layers: list[int] | None = None
    batch_size: int = 16
    kl_threshold: float = 0.1
    prune_last_fraction: float = 0.2
    top_k: int = 8
    max_new_tokens: int = 32
    refusal_phrases: tuple[str, ...] = REFUSAL_PHRASES
    seed: int = 0
    newline: bool = False  # the "just a newline" template: plain instruction + "\n" (eoi = the newline token)
    subsets: list[str] = field(default_factory=list)  # layer specs: refusal rate with the direction ablated there
    rounds: int = 1  # iterative directions: extract, ablate, extract again
    harmfulness: bool = False  # a harmfulness direction at the instruction's last token, compared with refusal


@dataclass
class RefusalResult:
    layer: int
    eoi_position: int
    direction: SteeringVector
    candidates: list[dict[str, Any]]
    refusal_rate_before: float
    refusal_rate_after: float
    generations: list[dict[str, str]] = field(default_factory=list)
    base_harmful: float = float("nan")  # clean refusal scores (log-odds) of the validation prompts
    base_harmless: float = float("nan")
    classes_before: dict[str, int] = field(default_factory=dict)  # refusal / refuse_then_comply / comply
    classes_after: dict[str, int] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)  # refusal_study.py's experiments, when asked for


def is_refusal(text: str, phrases: Sequence[str] = REFUSAL_PHRASES) -> bool:
    """Refusal-phrase match (case-insensitive substring), as in the paper's string-matching evaluation."""
    low = text.lower()
    return any(p.lower() in low for p in phrases)


def refusal_token_ids(model: Model, phrases: Sequence[str]) -> list[int]:
    """First tokens of the refusal phrases as an answer would start them."""
    ids = set()
    for p in phrases:
        toks = model.tokenizer(p, add_special_tokens=False)["input_ids"]
        if toks:
            ids.add(int(toks[0]))
    return sorted(ids)


def _refusal_logodds(logits: torch.Tensor, ref_ids: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.float(), -1)
    pr = p[:, ref_ids].sum(-1).clamp(1e-8, 1 - 1e-8)
    return torch.log(pr) - torch.log1p(-pr)


@torch.no_grad()
def _last_logits(model: Model, texts: Sequence[str], style: PromptStyle, batch_size: int) -> torch.Tensor:
    out = []
    for s in range(0, len(texts), batch_size):
        batch = model.tokenize(list(texts[s:s + batch_size]), padding_side="left",
                               add_special_tokens=style.add_special_tokens())
        out.append(model.last_logits(**batch).cpu())
    return torch.cat(out)


@torch.no_grad()
def induce_scores(model: Model, texts: Sequence[str], style: PromptStyle,
                  candidates: Sequence[tuple[int, torch.Tensor]], ref_ids: torch.Tensor, batch_size: int = 16,
                  cells_per_batch: int = 4) -> list[float]:
    """Mean refusal score (log-odds) of ``texts`` with each candidate direction added at ``resid_pre`` of its layer
    (steering positions ``auto``: from the end of the instruction on). The prompts' tokens before the end of
    instruction are run once and their KV cache shared by every candidate (:mod:`actlab.steering.prefix`); equal
    to adding each direction in turn (tested)."""
    if not candidates:
        return []
    from .prefix import boundaries, iter_cell_logits

    rows = [model.tokenizer(t, add_special_tokens=style.add_special_tokens())["input_ids"] for t in texts]
    starts = boundaries(model, rows, "auto")
    cells = [{HookPoint(layer, "resid_pre"): r.double()} for layer, r in candidates]

    def score(logits: torch.Tensor, _: slice) -> torch.Tensor:  # [rows, cells, vocab] -> [rows, cells]
        return _refusal_logodds(logits.reshape(-1, logits.shape[-1]), ref_ids).view(logits.shape[:2]).cpu()

    labels = [{"candidate": i, "layer": layer, "purpose": "refusal induce score"}
              for i, (layer, _) in enumerate(candidates)]
    parts = [t for _, t in iter_cell_logits(model, rows, starts, cells, batch_size=batch_size,
                                            cells_per_batch=cells_per_batch, reduce=score, labels=labels,
                                            source={"positions": "auto"})]
    return torch.cat(parts).mean(0).tolist()


def refusal_rate(texts: Sequence[str], phrases: Sequence[str]) -> float:
    return sum(is_refusal(t, phrases) for t in texts) / max(len(texts), 1)


def refusal_pipeline(
    model: Model,
    harmful_train: Sequence[str],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    *,
    config: RefusalConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = progress_info,
    overwrite: bool = False,
) -> RefusalResult:
    """Run the pipeline (see module docstring); the candidate directions are checkpointed in ``out_dir`` (its
    resume record) and reused by a re-run with the same data, layers and positions (``overwrite``: recompute)."""
    cfg = config or RefusalConfig()
    from .prompts import resolve_style

    if cfg.newline:
        if cfg.chat:
            raise InputError("the newline template replaces the chat template; do not ask for both (drop --chat)")
        style = PromptStyle(chat=False, suffix="\n")
    else:
        style = resolve_style(model, cfg.chat)
    if not eoi_suffix(model, style) and not cfg.positions.startswith("last"):
        raise InputError(f"{model.name!r} is prompted without a chat template, so there are no end-of-instruction "
                         f"tokens for positions={cfg.positions!r}; give positions 'last' or 'last:K' (the last K "
                         "prompt tokens)")
    special = style.add_special_tokens()
    harmful_train, harmless_train = list(harmful_train)[: cfg.n_train], list(harmless_train)[: cfg.n_train]
    harmful_val, harmless_val = list(harmful_val)[: cfg.n_val], list(harmless_val)[: cfg.n_val]
    for name, xs in (("harmful_train", harmful_train), ("harmless_train", harmless_train),
                     ("harmful_val", harmful_val), ("harmless_val", harmless_val)):
        if not xs:
            raise InputError(f"the {name} instruction list is empty")
    layers = list(range(model.n_layers)) if cfg.layers is None else list(cfg.layers)
    if not layers:
        raise InputError("the layer list is empty")
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    phrases = cfg.refusal_phrases
    ref_ids = torch.tensor(refusal_token_ids(model, phrases))

    # 1. candidate directions (checkpointed in the run folder's resume record) --------------------------
    fp = fingerprint([*harmful_train, "\0", *harmless_train])
    identity = {"model": model.name, "fingerprint": fp, "layers": layers, "positions": cfg.positions,
                "chat": style.chat, **({"newline": True} if cfg.newline else {})}
    resume = Resume(out, "steer refusal", identity, overwrite=overwrite) if out is not None else None
    saved = resume.load() if resume is not None and resume.done("candidates") else None
    cands: torch.Tensor | None = saved[1].get("directions") if saved is not None else None
    if cands is not None:
        log("  candidates: reused from the run directory")
    texts_h = [format_prompt(model, t, style) for t in harmful_train]
    texts_n = [format_prompt(model, t, style) for t in harmless_train]
    if cands is None:
        log(f"  extracting candidates: {len(layers)} layers x {cfg.positions} positions from "
            f"{len(texts_h)} harmful + {len(texts_n)} harmless prompts")
        pos_h = [read_positions(model, t, cfg.positions, style) for t in texts_h]
        pos_n = [read_positions(model, t, cfg.positions, style) for t in texts_n]
        pts = [HookPoint(i, "resid_pre") for i in layers]
        acts = collect(model, texts_h + texts_n, pos_h + pos_n, pts, add_special_tokens=special,
                       batch_size=cfg.batch_size, reduce="stack")
        nh = len(texts_h)
        # [n_pos, n_layers, d]: mean over prompts, in float64
        cands = torch.stack([acts[p.name][:nh].double().mean(0) - acts[p.name][nh:].double().mean(0)
                             for p in pts], dim=1).float()
        if resume is not None:
            resume.save({"shape": list(cands.shape)}, {"directions": cands})
            resume.mark("candidates")
    n_pos = cands.shape[0]

    # 2. cheap scores -----------------------------------------------------------------------------------
    vh = [format_prompt(model, t, style) for t in harmful_val]
    vn = [format_prompt(model, t, style) for t in harmless_val]
    clean_n = _last_logits(model, vn, style, cfg.batch_size)
    clean_h = _last_logits(model, vh, style, cfg.batch_size)
    base_harmful = float(_refusal_logodds(clean_h, ref_ids).mean())
    base_harmless = float(_refusal_logodds(clean_n, ref_ids).mean())
    log(f"  clean refusal score: harmful {base_harmful:.2f}, harmless {base_harmless:.2f}")
    cutoff = math.floor(model.n_layers * (1 - cfg.prune_last_fraction))
    live = [(pi, li) for pi in range(n_pos) for li in range(len(layers))
            if float(cands[pi, li].norm()) > 1e-6 * float(cands.norm(dim=-1).max())]
    log(f"  induce scores: {len(live)} candidates added on {len(vn)} harmless prompts, prefixes shared")
    induced = dict(zip(live, induce_scores(model, vn, style, [(layers[li], cands[pi, li]) for pi, li in live],
                                           ref_ids, cfg.batch_size), strict=True))
    rows: list[dict[str, Any]] = []
    with progress_task("scoring refusal candidates", total=n_pos * len(layers), unit="candidates") as scoring:
        for pi in range(n_pos):
            for li, layer in enumerate(layers):
                r = cands[pi, li]
                if float(r.norm()) <= 1e-6 * float(cands.norm(dim=-1).max()):
                    # identical inputs at this position and layer (e.g. the embeddings of the template's own tokens)
                    rows.append({"eoi_position": pi - n_pos, "layer": layer, "kl": None, "bypass": None,
                                 "induce": None, "norm": float(r.norm()), "passes_filters": False, "degenerate": True})
                    scoring.advance(1)
                    continue
                with ablate(model, r, source={"candidate": {"layer": layer, "eoi_position": pi - n_pos},
                                              "purpose": "refusal kl and bypass scores"}):
                    kl = float(kl_from_logits(clean_n, _last_logits(model, vn, style, cfg.batch_size)).mean())
                    bypass = float(_refusal_logodds(_last_logits(model, vh, style, cfg.batch_size), ref_ids).mean())
                induce = induced[(pi, li)]
                keep = kl < cfg.kl_threshold and induce > base_harmless and layer < cutoff
                rows.append({"eoi_position": pi - n_pos, "layer": layer, "kl": kl, "bypass": bypass, "induce": induce,
                             "norm": float(r.norm()), "passes_filters": keep})
                scoring.advance(1, position=pi - n_pos, layer=layer, kl=round(kl, 4), bypass=round(bypass, 3))
            log(f"  scored eoi position {pi - n_pos}: {len(layers)} layers")

    # 3. slow check on the best candidates --------------------------------------------------------------
    pool = [r for r in rows if r["passes_filters"]]
    if not pool:
        log("  no candidate passes the KL/induce/layer filters; ranking all candidates by bypass score")
        pool = [r for r in rows if not r.get("degenerate")]
    pool.sort(key=lambda r: r["bypass"])
    before = model.generate_text(vh, max_new_tokens=cfg.max_new_tokens, add_special_tokens=special)
    rate_before = refusal_rate(before, phrases)
    best, best_texts = None, []
    for r in pool[: cfg.top_k]:
        d = cands[r["eoi_position"] + n_pos, layers.index(r["layer"])]
        with ablate(model, d, source={"candidate": {"layer": r["layer"], "eoi_position": r["eoi_position"]},
                                      "purpose": "refusal rate by generation"}):
            texts = model.generate_text(vh, max_new_tokens=cfg.max_new_tokens, add_special_tokens=special)
        r["refusal_rate_ablated"] = refusal_rate(texts, phrases)
        if best is None or (r["refusal_rate_ablated"], r["bypass"]) < (best["refusal_rate_ablated"], best["bypass"]):
            best, best_texts = r, texts
    assert best is not None
    best["selected"] = True
    d = cands[best["eoi_position"] + n_pos, layers.index(best["layer"])]
    vec = SteeringVector({best["layer"]: d}, "resid_pre", {
        "model": model.name, "model_family": model.adapter.family, "n_layers": model.n_layers,
        "d_model": model.d_model, "method": "mean_diff",
        "positions": f"{cfg.positions.split(':')[0]}:{best['eoi_position']}",
        "dataset_fingerprint": fp, "dataset": {"kind": "instructions", "n_harmful": len(harmful_train),
                                               "n_harmless": len(harmless_train)},
        "actlab_version": __version__, "purpose": "refusal", "scores": {k: best[k] for k in
                                                                         ("kl", "bypass", "induce")},
    })
    from .refusal_study import class_counts, refusal_class, refusal_study

    gens = [{"prompt": p, "before": b, "after": a, "class_before": refusal_class(b, phrases),
             "class_after": refusal_class(a, phrases)}
            for p, b, a in zip(harmful_val, before, best_texts, strict=True)]
    result = RefusalResult(best["layer"], best["eoi_position"], vec, rows, rate_before,
                           best["refusal_rate_ablated"], gens, base_harmful, base_harmless,
                           class_counts(before, phrases), class_counts(best_texts, phrases))
    log(f"  selected layer {best['layer']}, eoi position {best['eoi_position']}: refusal rate "
        f"{rate_before:.2f} -> {best['refusal_rate_ablated']:.2f} (KL {best['kl']:.3f})")
    if cfg.subsets or cfg.rounds > 1 or cfg.harmfulness:
        result.study = refusal_study(
            model, d, best["layer"], best["eoi_position"], train=(texts_h, texts_n), val=(vh, vn), style=style,
            positions=cfg.positions, phrases=phrases, subsets=cfg.subsets, rounds=cfg.rounds,
            harmfulness=cfg.harmfulness, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
            rate_after=best["refusal_rate_ablated"], clean_harmless=clean_n, clean_harmful_score=base_harmful,
            log=log)
    if out is not None:
        write_refusal_outputs(result, out, cfg, base_harmful, base_harmless)
    return result


def write_refusal_outputs(res: RefusalResult, out: Path, cfg: RefusalConfig, base_harmful: float,
                          base_harmless: float) -> None:
    res.direction.save(out / "direction.safetensors")
    summary = {"layer": res.layer, "eoi_position": res.eoi_position, "refusal_rate_before": res.refusal_rate_before,
               "refusal_rate_after": res.refusal_rate_after, "clean_refusal_score_harmful": base_harmful,
               "clean_refusal_score_harmless": base_harmless, "classes_before": res.classes_before,
               "classes_after": res.classes_after, "config": asdict(cfg)}
    write_json(out / "refusal.json", summary)
    if res.study:
        study = {k: v for k, v in res.study.items() if k not in ("harmfulness_direction", "round_directions")}
        if "harmfulness_direction" in res.study:
            SteeringVector({res.layer: res.study["harmfulness_direction"].float()}, "resid_pre", {
                **res.direction.meta, "purpose": "harmfulness", "positions": "instruction end",
                "grouping": res.study["harmfulness"]["grouping"]}).save(out / "harmfulness_direction.safetensors")
        if "round_directions" in res.study:
            from safetensors.torch import save

            from ..runs import write_bytes

            write_bytes(out / "round_directions.safetensors", save(
                {f"round_{i + 1}": d.float().contiguous() for i, d in enumerate(res.study["round_directions"])},
                metadata={"layer": str(res.layer), "point": "resid_pre"}))
        write_json(out / "refusal_study.json", study)
    write_json(out / "candidates.json", res.candidates)
    buf = io.StringIO()
    keys = ["eoi_position", "layer", "kl", "bypass", "induce", "norm", "passes_filters", "refusal_rate_ablated",
            "selected"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in res.candidates:
        w.writerow({k: r.get(k, "") for k in keys})
    write_text(out / "candidates.csv", buf.getvalue())
    write_json(out / "generations.json", res.generations)
