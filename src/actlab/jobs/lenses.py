"""The logit-lens job: decode hook points for a batch of prompts, optionally writing the JSON result and an
offline HTML page (target-probability heatmap + top-token tables)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..lens import LensResult, logit_lens
from ..report import Page
from ..report.lens import lens_tables, target_heatmap
from ..runs import write_json
from .common import ModelLike, as_model

if TYPE_CHECKING:
    from ..lens import Lens

DEFAULT_POINTS = "resid_post,attn_out,mlp_out"


def lens(model: ModelLike, prompts: Sequence[str], *, points: str | Sequence[str] = DEFAULT_POINTS,
         position: int = -1, top_k: int = 5, target: str | int | None = None, chat: bool = False,
         json_out: str | os.PathLike[str] | None = None, html_out: str | os.PathLike[str] | None = None,
         lens: Lens | str | None = None, edits: Sequence[Any] = ()) -> LensResult:
    """Logit lens on ``prompts`` (wrapped in the chat template with ``chat``); a target given as digits is a
    token id; ``lens`` (any :class:`~actlab.lens.Lens`, or ``logit`` / ``tuned:PATH``) decodes through it.
    ``edits`` (interventions: ``Steer``, ``ProjectOut``, ``Mix``...) are applied during the forward, so the lens
    reads the edited run; the JSON then records them under ``interventions``."""
    from ..tuned_lens import parse_lens

    m = as_model(model)
    texts = [m.chat_prompt(p) for p in prompts] if chat else list(prompts)
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    with m.edit(*edits) as applied:
        res = logit_lens(m, texts, points=points, position=position, top_k=top_k, target=target,
                         lens=parse_lens(lens, m) if lens is None or isinstance(lens, str) else lens)
    records = applied.records() if edits else []
    if json_out:
        write_json(json_out, {**res.to_dict(), **({"interventions": records} if records else {})})
    if html_out:
        page = Page(f"{res.lens.capitalize()} lens: {m.name}" + (" (edited run)" if records else ""))
        if records:
            page.text("Read while editing the run: " + "; ".join(_describe(r) for r in records), muted=True)
        if res.target_probs is not None:
            with tempfile.TemporaryDirectory() as tmp:
                png = target_heatmap(res, Path(tmp) / "lens.png")
                page.image(png.read_bytes(), "target probability per layer and point")
        lens_tables(page, res, top_k=top_k)
        page.write(html_out)
    return res


def _describe(record: dict[str, Any]) -> str:
    """One line for an intervention record (kind, layers, multiplier, source file)."""
    src = (record.get("vector") or {}).get("source") or record.get("source") or {}
    parts = [str(record.get("kind", "edit"))]
    if record.get("layers") is not None:
        parts.append(f"layers {record['layers']}")
    if record.get("multiplier") is not None:
        parts.append(f"x{record['multiplier']:g}")
    if isinstance(src, dict) and src.get("file"):
        parts.append(f"from {src['file']}")
    return " ".join(parts)


def tuned_lens(model: ModelLike, texts: Sequence[str], out: str | os.PathLike[str], *, held_out: int = 32,
               steps: int = 250, lr: float = 1e-3, optimizer: str = "adam", batch_size: int = 8,
               max_length: int = 128, seed: int = 0, progress: Callable[[int, float], None] | None = None,
               checkpoint_every: int = 25, overwrite: bool = False) -> dict[str, Any]:
    """Train a tuned lens on ``texts`` minus the last ``held_out``, then compare it with the logit lens on those:
    ``OUT/lens/`` (params.safetensors + config.json), ``tuned_lens.json`` and ``tuned_lens.png``. Training is
    checkpointed every ``checkpoint_every`` steps; a re-run in the folder continues from the latest checkpoint
    (``overwrite``: start again)."""
    from ..data import fingerprint
    from ..errors import InputError
    from ..report.figures import tuned_lens_plot
    from ..runs import Resume, Run
    from ..tuned_lens import evaluate_lens, train_tuned_lens
    from .common import name_of

    if not 0 < held_out < len(texts):
        raise InputError(f"held_out must leave texts to train on: {held_out} of {len(texts)} texts")
    m = as_model(model)
    train, test = list(texts[:-held_out]), list(texts[-held_out:])
    config = {"model": name_of(model), "n_train": len(train), "n_held_out": len(test), "steps": steps, "lr": lr,
              "optimizer": optimizer,
              "batch_size": batch_size, "max_length": max_length, "seed": seed}
    with Run(out, "tuned-lens", config, seed=seed) as run:
        resume = Resume(out, "tuned-lens", {**config, "model": m.name, "texts": fingerprint(train)},
                        overwrite=overwrite)
        lens_obj, history = train_tuned_lens(m, train, steps=steps, lr=lr, optimizer=optimizer, batch_size=batch_size,
                                             max_length=max_length, seed=seed, progress=progress, resume=resume,
                                             checkpoint_every=checkpoint_every)
        resume.mark("trained", {"steps": steps})
        lens_obj.save(Path(out) / "lens")
        logit = evaluate_lens(m, test, None, batch_size=batch_size, max_length=max_length)
        tuned = evaluate_lens(m, test, lens_obj, batch_size=batch_size, max_length=max_length)
        result = {"kind": "tuned_lens_eval", "model": m.name, "layers": list(range(m.n_layers)),
                  "reads": "blocks.{i}.resid_pre", "kl": {"logit": logit["kl"], "tuned": tuned["kl"]},
                  "cross_entropy": {"logit": logit["cross_entropy"], "tuned": tuned["cross_entropy"]},
                  "final_cross_entropy": logit["final_cross_entropy"], "held_out_tokens": logit["tokens"],
                  "history": history, "lens": str(Path(out) / "lens")}
        write_json(Path(out) / "tuned_lens.json", result)
        tuned_lens_plot(result, Path(out) / "tuned_lens.png", title=f"{m.name}: tuned vs logit lens, held-out text")
        run.results = {"mean_kl_logit": sum(logit["kl"]) / m.n_layers, "mean_kl_tuned": sum(tuned["kl"]) / m.n_layers}
    return result
