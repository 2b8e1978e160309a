"""Training several dictionaries together from one activation stream.

Every batch feeds every dictionary (e.g. 1x and 2x the input width, several L1 coefficients). Each has its
own Adam optimiser; the learning rate warms up linearly and decays linearly to zero over the last
``1 - decay_start`` of training; the L1 coefficient warms up linearly; gradients are clipped; decoder rows
stay unit-norm. Dead features (no activation for ``dead_steps`` steps) are tracked and can be resampled;
TopK dictionaries also train their dead features through the auxiliary loss of Gao et al. (2024)
(``aux_k_coefficient``, default 1/32 as in the paper; 0 turns it off).

Checkpoints are folders of safetensors (parameters, Adam moments and step counts, RNG state, dead-feature
counters) plus JSON, written to a temp folder and renamed; resuming from one reproduces uninterrupted
training exactly, because the batch stream is deterministic and is replayed to the checkpoint's step.

Data parallelism: when ``torch.distributed`` is initialised (``torchrun`` / ``accelerate launch``), every
rank reads the same global batch, trains on its slice ``[rank::world]``, and gradients and statistics are
averaged with ``all_reduce`` (gloo on CPU, nccl on GPUs) - numerically the single-process update on the
global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ActlabError, InputError
from ..parallel import rank_and_world
from ..progress import task as progress_task
from ..runs import CHECKPOINTS, Resume, folder_lock, refuse_links, write_json, write_text
from .config import TrainConfig
from .dictionary import TRAINABLE, SparseAutoencoder


class TrainingDivergedError(ActlabError):
    """The loss became NaN/inf; names the step and the last good checkpoint."""


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, constant, linear decay to 0 at the end."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    start = int(cfg.decay_start * cfg.steps)
    decay = 1.0 if step < start or cfg.steps == start else max(0.0, (cfg.steps - step) / (cfg.steps - start))
    return cfg.lr * warm * decay


def l1_scale_at(cfg: TrainConfig, step: int) -> float:
    return min(1.0, (step + 1) / cfg.l1_warmup_steps) if cfg.l1_warmup_steps else 1.0


def _all_reduce_mean(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world
    return t


def _adam(sae: SparseAutoencoder, tcfg: TrainConfig) -> torch.optim.Adam:
    """Adam over one dictionary: the fused kernel (CPU and CUDA) - one pass per parameter instead of a chain of
    elementwise ops; the for-loop implementation where a device has no fused kernel."""
    try:
        return torch.optim.Adam(sae.parameters(), lr=tcfg.lr, betas=tcfg.betas, fused=True)
    except RuntimeError:
        return torch.optim.Adam(sae.parameters(), lr=tcfg.lr, betas=tcfg.betas, foreach=True)


class Trainer:
    """State of a multi-dictionary training run (see module docstring)."""

    def __init__(self, configs: Sequence[Any], tcfg: TrainConfig, *, device: str | torch.device = "cpu",
                 out_dir: str | os.PathLike[str] | None = None, job: str = "sae train", subfolder: str = "saes"):
        """``configs``: dictionary configs with ``make(generator)`` (:class:`SAEConfig`, or a crosscoder's or
        transcoder's config: the trainer drives any module with ``train_gradients``, ``before_step``,
        ``after_step``, ``set_input_scale`` and ``save``). Finished dictionaries go to ``out/subfolder/name``."""
        if not configs:
            raise InputError("no dictionary to train")
        self.job, self.subfolder = job, subfolder
        names = [c.name for c in configs]
        untrainable = [c.name for c in configs if not getattr(c, "trainable", True)]
        if untrainable:
            raise InputError(f"cannot train {untrainable}: actlab trains {', '.join(TRAINABLE)} dictionaries "
                             "(JumpReLU dictionaries load for inference only)")
        if len(set(names)) != len(names):
            raise InputError(f"dictionary names must differ: {names}")
        self.configs, self.tcfg = list(configs), tcfg
        self.device = torch.device(device)
        self.out = Path(out_dir) if out_dir else None
        self.resume: Resume | None = None  # opened by train_saes (or at the first checkpoint)
        self.rank, self.world = rank_and_world()
        if self.out is not None and self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(tcfg.seed)
        g = torch.Generator().manual_seed(tcfg.seed)
        self.saes = [c.make(g).to(self.device) for c in configs]
        self.opts = [_adam(s, tcfg) for s in self.saes]
        self.since_fired = [torch.zeros(c.d_sae, dtype=torch.long, device=self.device) for c in configs]
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self.resumed: dict[str, Any] | None = None  # set when continuing a checkpoint

    # -- one step ----------------------------------------------------------------------------------------
    def train_step(self, batch: torch.Tensor) -> dict[str, Any]:
        x = batch.to(self.device, torch.float32)
        if self.step == 0 and self.tcfg.normalize_activations:
            for sae in self.saes:  # from the whole global batch, so every rank picks the same scale
                sae.set_input_scale(x)
        if self.world > 1:
            x = x[self.rank::self.world]
        lr, l1s = lr_at(self.tcfg, self.step), l1_scale_at(self.tcfg, self.step)
        row: dict[str, Any] = {"step": self.step + 1, "lr": lr, "l1_scale": l1s}
        for i, (sae, opt) in enumerate(zip(self.saes, self.opts, strict=True)):
            for group in opt.param_groups:
                group["lr"] = lr
            dead = self.since_fired[i] >= self.tcfg.dead_steps
            parts = sae.train_gradients(x, l1s, dead=dead, aux_coefficient=self.tcfg.aux_k_coefficient,
                                        aux_k=self.tcfg.aux_k)  # sets p.grad
            for p in sae.parameters():
                if p.grad is not None:
                    _all_reduce_mean(p.grad, self.world)
            fired = parts["fired"].to(torch.long)
            stats = torch.stack([parts["loss"], parts["mse"], parts["l1"], parts["l0"], parts["aux"]])
            _all_reduce_mean(stats, self.world)
            if self.world > 1:
                import torch.distributed as dist

                dist.all_reduce(fired, op=dist.ReduceOp.MAX)
            since = (self.since_fired[i] + 1) * (fired == 0)
            dead_now = (since >= self.tcfg.dead_steps).to(stats.dtype).mean()
            vals = torch.cat([stats, dead_now[None]]).tolist()  # the one host sync of the step
            if not all(map(math.isfinite, vals[:5])):
                where = str(self.last_checkpoint) if self.last_checkpoint else "none (no checkpoint written yet)"
                raise TrainingDivergedError(f"loss of {sae.cfg.name} became {vals[0]} at step "
                                            f"{self.step + 1}; last good checkpoint: {where}")
            sae.before_step()
            if self.tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), self.tcfg.grad_clip, foreach=True)
            opt.step()
            sae.after_step()
            self.since_fired[i] = since
            row[sae.cfg.name] = {"loss": vals[0], "mse": vals[1], "l1": vals[2], "l0": vals[3], "aux": vals[4],
                                 "dead": vals[5]}
            if (self.tcfg.resample_every and (self.step + 1) % self.tcfg.resample_every == 0
                    and isinstance(sae, SparseAutoencoder)):
                row[sae.cfg.name]["resampled"] = self._resample(i, x, parts["x_hat"])
        self.step += 1
        return row

    @torch.no_grad()
    def _resample(self, i: int, x: torch.Tensor, x_hat: torch.Tensor) -> int:
        """Re-initialise dead features towards badly reconstructed inputs (Anthropic's recipe, simplified)."""
        sae, opt = self.saes[i], self.opts[i]
        dead = (self.since_fired[i] >= self.tcfg.dead_steps).nonzero()[:, 0]
        if len(dead) == 0:
            return 0
        err = ((x - x_hat) * sae.input_scale).pow(2).sum(-1)
        if self.world > 1:  # identical choices on every rank: pick from rank 0's slice, broadcast
            import torch.distributed as dist

            dist.broadcast(err, 0)
            dist.broadcast(x, 0)
        idx = torch.multinomial(err + 1e-12, len(dead), replacement=True)
        dirs = x[idx] * sae.input_scale - sae.b_dec
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        alive = self.since_fired[i] < self.tcfg.dead_steps
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
        if sae.cfg.tied:
            sae.W_enc[:, dead] = dirs.T
        else:
            sae.W_dec_param[dead] = dirs
            sae.W_enc[:, dead] = dirs.T * enc_norm * 0.2
        sae.b_enc[dead] = 0.0
        for p in sae.parameters():
            st = opt.state.get(p)
            if not st:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                t = st[key]
                if t.shape == sae.W_enc.shape:
                    t[:, dead] = 0
                elif t.dim() == 2 or t.shape[0] == sae.cfg.d_sae:
                    t[dead] = 0
        self.since_fired[i][dead] = 0
        return len(dead)

    # -- loop ------------------------------------------------------------------------------------------
    def fit(self, make_batches: Callable[[int], Iterator[torch.Tensor]],
            progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Train to ``tcfg.steps``; ``make_batches(start_step)`` yields global batches from that step on."""
        it = make_batches(self.step)
        first = self.configs[0].name
        desc = f"training {len(self.saes)} dictionar{'y' if len(self.saes) == 1 else 'ies'}"
        with contextlib.ExitStack() as stack:
            task = stack.enter_context(progress_task(desc, total=self.tcfg.steps - self.step, unit="steps")
                                       ) if self.rank == 0 else None
            while self.step < self.tcfg.steps:
                try:
                    batch = next(it)
                except StopIteration:
                    raise InputError(f"the activation stream ran out after {self.step} steps of "
                                     f"{self.tcfg.steps}; cache more tokens, use more epochs, or train fewer "
                                     "steps") from None
                row = self.train_step(batch)
                if self.step % self.tcfg.log_every == 0 or self.step == self.tcfg.steps:
                    self.history.append(row)
                    if self.out is not None and self.rank == 0:
                        with (self.out / "train_log.jsonl").open("a") as f:
                            f.write(json.dumps(row) + "\n")
                if progress is not None:
                    progress(row)
                if task is not None:
                    r = row[first]
                    task.advance(1, **{f"{first} loss": r["loss"], "L0": r["l0"], "dead": r["dead"]})
                if (self.tcfg.checkpoint_every and self.step % self.tcfg.checkpoint_every == 0
                        and self.out is not None):
                    self.save_checkpoint()
        if self.out is not None and self.rank == 0:
            for sae in self.saes:
                sae.save(self.out / self.subfolder / sae.cfg.name, extra={
                    "train": self.tcfg.model_dump(), "steps": self.step,
                    **({"resumed": self.resumed} if self.resumed else {})})
        return self.history

    # -- checkpoints (through the folder's resume record, :class:`actlab.runs.Resume`) ----------------------
    def save_checkpoint(self) -> Path | None:
        if self.out is None:
            raise InputError("saving a checkpoint needs an output folder")
        if self.rank != 0:
            return None
        if self.resume is None:
            self.resume = Resume(self.out, self.job, self.settings(), allow_changed=True)
        tensors: dict[str, torch.Tensor] = {"rng": torch.get_rng_state()}
        for i, (sae, opt) in enumerate(zip(self.saes, self.opts, strict=True)):
            for name, b in sae.named_buffers():
                tensors[f"{i}.buffer.{name}"] = b.detach().cpu().clone()
            for name, p in sae.named_parameters():
                tensors[f"{i}.param.{name}"] = p.detach().cpu().contiguous()
                st = opt.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    if key in st:
                        tensors[f"{i}.adam.{name}.{key}"] = torch.as_tensor(st[key]).detach().cpu().clone()
            tensors[f"{i}.since_fired"] = self.since_fired[i].cpu()
        final = self.resume.checkpoint(self.step, tensors, {
            "configs": [c.to_dict() for c in self.configs], "train": self.tcfg.model_dump(),
            "history": self.history}, keep=self.tcfg.keep_checkpoints)
        self.last_checkpoint = final
        return final

    def load_checkpoint(self, folder: str | os.PathLike[str]) -> None:
        folder = Path(folder)
        meta, t = Resume.load_checkpoint(folder)
        if [c.get("name") for c in meta["configs"]] != [c.name for c in self.configs]:
            raise InputError(f"checkpoint {folder} is for dictionaries {[c.get('name') for c in meta['configs']]}, "
                             f"not {[c.name for c in self.configs]}")
        with torch.no_grad():
            for i, (sae, opt) in enumerate(zip(self.saes, self.opts, strict=True)):
                for name, b in sae.named_buffers():
                    key = f"{i}.buffer.{name}" if f"{i}.buffer.{name}" in t else f"{i}.{name}"  # earlier layout
                    if key in t:
                        b.copy_(t[key])
                for name, p in sae.named_parameters():
                    p.copy_(t[f"{i}.param.{name}"])
                    if f"{i}.adam.{name}.exp_avg" in t:
                        opt.state[p] = {"step": t[f"{i}.adam.{name}.step"].clone(),
                                        "exp_avg": t[f"{i}.adam.{name}.exp_avg"].to(self.device).clone(),
                                        "exp_avg_sq": t[f"{i}.adam.{name}.exp_avg_sq"].to(self.device).clone()}
                self.since_fired[i] = t[f"{i}.since_fired"].to(self.device)
        torch.set_rng_state(t["rng"])
        self.step = int(meta["step"])
        self.history = meta["history"]
        self.last_checkpoint = folder

    def latest_checkpoint(self) -> Path | None:
        if self.out is None:
            return None
        return Resume.latest_in(self.out)

    def settings(self) -> dict[str, Any]:
        """What the dictionaries depend on (the resume record's settings)."""
        return {"dictionaries": [c.to_dict() for c in self.configs], "train": self.tcfg.model_dump(mode="json")}


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log rows up to ``step`` (a resumed run writes the later ones again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in keep))


def train_saes(configs: Sequence[Any], make_batches: Callable[[int], Iterator[torch.Tensor]],
               tcfg: TrainConfig, *, out_dir: str | os.PathLike[str] | None = None, device: str = "cpu",
               resume: bool = True, progress: Callable[[dict[str, Any]], None] | None = None,
               overwrite: bool = False, resume_anyway: bool = False, job: str = "sae train",
               subfolder: str = "saes") -> tuple[list[Any], list[dict[str, Any]]]:
    """Train dictionaries together (SAEs, crosscoders, transcoders: see :class:`Trainer`), resuming from the
    latest checkpoint in ``out_dir``. A checkpoint written with other settings is refused (naming them) unless
    ``resume_anyway`` (continue; the settings used before are recorded) or ``overwrite`` (start over)."""
    tr = Trainer(configs, tcfg, device=device, out_dir=out_dir, job=job, subfolder=subfolder)
    if out_dir is None:
        tr.fit(make_batches, progress)
        return tr.saes, tr.history
    out = Path(out_dir)
    settings = tr.settings()
    with contextlib.ExitStack() as stack:
        if tr.rank == 0:
            stack.enter_context(folder_lock(out, "SAE run folder"))
            for name in (subfolder, CHECKPOINTS, "train_log.jsonl", "train_config.json"):
                refuse_links(out, out / name, "SAE output")
            if overwrite:
                shutil.rmtree(out / subfolder, ignore_errors=True)
                shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            try:
                tr.resume = Resume(out, job, settings, overwrite=overwrite or not resume,
                                   allow_changed=resume_anyway)
            except InputError as e:
                raise InputError(f"{e} - or resume_anyway (--resume-anyway) to continue with the new "
                                 "settings") from None
        last = tr.latest_checkpoint() if resume and not overwrite else None
        record: dict[str, Any] = dict(settings)
        if last is not None:
            changed = tr.resume is not None and bool(tr.resume.changed)
            before = tr.resume.record["settings_before"][-1] if changed and tr.resume is not None else "the same"
            tr.load_checkpoint(last)
            record["resumed"] = tr.resumed = {"from_step": tr.step, "checkpoint": last.name,
                                              "settings_before": before}
            if tr.rank == 0:
                _truncate_log(out / "train_log.jsonl", tr.step)
        elif (out / "train_log.jsonl").exists() and tr.rank == 0:
            (out / "train_log.jsonl").unlink()
        if tr.rank == 0:
            write_json(out / "train_config.json", record)
        tr.fit(make_batches, progress)
        if tr.resume is not None:
            tr.resume.mark("trained", {"steps": tr.step})
    return tr.saes, tr.history


def skip(it: Iterator[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    """Drop the first ``n`` batches (to replay a deterministic stream up to a checkpoint)."""
    for _ in range(n):
        next(it)
    return it


