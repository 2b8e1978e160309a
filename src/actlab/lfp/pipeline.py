"""The Learned-Feedback-Patterns pipeline as resumable stages over one run directory: the orchestration.

Stages (each also a CLI command, ``actlab lfp <stage> CONFIG``): finetune (only when no ``tuned_model`` is
given), divergence, sae, triples, deltas, probes, agreement, features, report. A stage writes its outputs
under ``RUN_DIR/<stage>/`` (typed: :mod:`actlab.lfp.outputs`) and is recorded done in the folder's resume
record (:class:`actlab.runs.Resume`, one per stage, with the settings it depends on:
:func:`actlab.lfp.stages.stage_settings`). ``lfp run`` skips a stage recorded done under the same settings,
refuses one recorded under other settings (``force`` re-runs every stage; the report, which only draws the
others, is redrawn), and runs the rest; ``lfp <stage>``
always runs that stage. A stage whose inputs are missing names the stage that makes them; a stage that fails
(an unreachable explainer endpoint, say) leaves everything before it in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data import read_texts
from ..errors import InputError, ResumeRefused
from ..models import load_model
from ..models.placement import placement
from ..progress import info as progress_info
from ..runs import Resume, Run, refuse_links, settings_differences
from .config import LFPConfig
from .stages import STAGES, stage_settings

Log = Callable[[str], None]
VIEWS = ("report",)  # stages that only draw other stages' results: redrawn, never refused, when those changed


class Context:
    """Shared state of one pipeline invocation: the config, the run folder, lazily loaded models."""

    def __init__(self, cfg: LFPConfig, log: Log):
        self.cfg, self.log = cfg, log
        self.root = Path(cfg.run_dir)
        self.config = cfg.model_dump(mode="json")
        self._models: dict[str, Any] = {}

    def dir(self, stage: str) -> Path:
        d = refuse_links(self.root, self.root / stage, "LFP stage folder")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def settings(self, stage: str) -> dict[str, Any]:
        return stage_settings(self.config, stage)

    def done(self, stage: str) -> bool:
        """Recorded done in the run folder (under whatever settings)."""
        return Resume.recorded_settings(self.root, job(stage)) is not None

    def need(self, stage: str, path: Path) -> Path:
        """``path``, an output of ``stage``, or a clear error naming the stage that makes it."""
        if not path.exists() or not self.done(stage):
            raise InputError(f"missing {path}: run the '{stage}' stage first (actlab lfp {stage} CONFIG)")
        return path

    def read(self, output: Any, stage: str) -> Any:
        """A typed output of an earlier ``stage`` (:mod:`actlab.lfp.outputs`), or a clear error naming it."""
        value = output.read(self.root) if self.need(stage, output.path(self.root)) else None
        if value is None:
            raise InputError(f"{output.path(self.root)} cannot be read (a symbolic link, or not a file); run the "
                             f"'{stage}' stage again (actlab lfp {stage} CONFIG)")
        return value

    def tuned_name(self) -> str:
        if self.cfg.tuned_model:
            return self.cfg.tuned_model
        return str(self.need("finetune", self.root / "finetune" / "model"))

    def label(self, which: str) -> str:
        """How logs and outputs call the ``base`` or ``tuned`` model (this run's own fine-tune by its folder:
        loaded from ``finetune/model``, its name alone would be "model")."""
        if which == "base":
            return self.cfg.base_model
        return self.cfg.tuned_model or "fine-tuned (finetune/model)"

    def model(self, which: str) -> Any:
        name = self.cfg.base_model if which == "base" else self.tuned_name()
        if name not in self._models:
            self._models[name] = load_model(name, dtype=self.cfg.dtype, device=self.cfg.device,
                                            **placement(self.cfg.device_map, self.cfg.max_memory))
        return self._models[name]

    def texts(self, n: int) -> list[str]:
        if self.cfg.data is None:
            raise InputError("the config needs `data:` (a text dataset such as the IMDb CSV)")
        return [t.replace("<br />", " ") for t in read_texts(self.cfg.data, limit=n)]


def job(stage: str) -> str:
    """The resume record's name for a stage."""
    return f"lfp {stage}"


def _stage_funcs() -> dict[str, Callable[[Context], dict[str, Any]]]:
    from .stages.agreement import stage_agreement
    from .stages.features import stage_features
    from .stages.models import stage_divergence, stage_finetune, stage_sae
    from .stages.probing import stage_deltas, stage_probes, stage_triples

    return {"finetune": stage_finetune, "divergence": stage_divergence, "sae": stage_sae, "triples": stage_triples,
            "deltas": stage_deltas, "probes": stage_probes, "agreement": stage_agreement,
            "features": stage_features, "report": stage_report}


def stage_report(ctx: Context) -> dict[str, Any]:
    from .report import build_lfp_report

    path = build_lfp_report(ctx.root, ctx.cfg)
    ctx.log(f"  report: {path}")
    return {"report": str(path)}


def metrics_line(d: dict[str, Any]) -> str:
    """``{'step': 20, 'kl': 0.0234...}`` as ``step 20, kl 0.0234`` for a log line."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def run_stage(cfg: LFPConfig, stage: str, *, log: Log = progress_info, ctx: Context | None = None
              ) -> dict[str, Any]:
    """Run one stage, whatever its record says (its run record says ``lfp <stage>``); inside
    :func:`run_pipeline` the pipeline's record covers it."""
    if stage not in STAGES:
        raise InputError(f"unknown LFP stage {stage!r}; valid: {', '.join(STAGES)}")
    if ctx is None:
        ctx = Context(cfg, log)
        with Run(ctx.root, f"lfp {stage}", ctx.config, seed=cfg.seed) as run:
            summary = _stage(ctx, stage)
            run.results = {stage: summary}
        return summary
    return _stage(ctx, stage)


def _stage(ctx: Context, stage: str) -> dict[str, Any]:
    ctx.log(f"[{stage}]")
    torch.manual_seed(ctx.cfg.seed)
    t0 = time.perf_counter()
    summary = _stage_funcs()[stage](ctx)
    # recorded only once the stage succeeded: a failed re-run keeps the earlier record (and outputs) in place
    Resume(ctx.root, job(stage), ctx.settings(stage), overwrite=True).mark(
        "done", {**summary, "seconds": round(time.perf_counter() - t0, 2)})
    return summary


def run_pipeline(cfg: LFPConfig, *, force: bool = False, log: Log = progress_info, until: str | None = None
                 ) -> dict[str, Any]:
    """Run every stage in order, skipping those recorded done under the same settings (``force``: run all)."""
    ctx = Context(cfg, log)
    results = {}
    with Run(ctx.root, "lfp run", ctx.config, seed=cfg.seed) as run:
        for stage in STAGES:
            recorded = Resume.recorded_settings(ctx.root, job(stage))
            if recorded is not None and not force:
                changed = settings_differences(recorded, ctx.settings(stage))
                if changed and stage in VIEWS:
                    log(f"[{stage}] made from other results before: drawn again")
                    results[stage] = run_stage(cfg, stage, log=log, ctx=ctx)
                    continue
                if changed:  # the folder's results stay theirs: its run record is not turned into a failure
                    raise ResumeRefused(f"the '{stage}' stage in {ctx.root} was run with other settings: "
                                     f"{'; '.join(changed[:3])}; run it again (actlab lfp {stage} CONFIG), pass "
                                     "--force to re-run every stage, or choose another run_dir")
                log(f"[{stage}] done earlier, skipped")
                continue
            results[stage] = run_stage(cfg, stage, log=log, ctx=ctx)
            run.results = {"stages_run": list(results)}
            if stage == until:
                break
    return results
