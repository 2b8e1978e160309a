"""One SAE training run from one spec (:class:`~actlab.sae.spec.SAETrainSpec`): the activation source (a
cache folder, or a model + texts on the fly), the dictionaries, training (resumable, data-parallel under
``torchrun``) and held-out reconstruction metrics written to ``sae_metrics.json``. ``actlab sae train`` and
the LFP pipeline's ``sae`` stage both run through :func:`train_from_spec`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..data.texts import read_texts
from ..hooks.points import HookPoint
from .dictionary import SAEConfig, SparseAutoencoder
from .metrics import reconstruction_metrics, write_metrics
from .spec import SAETrainSpec
from .store import CacheReader, online_batches
from .train import rank_and_world, skip, train_saes

if TYPE_CHECKING:
    from ..models.model import Model


@dataclass
class BatchSource:
    """Where training batches come from: ``make(start_step)`` replays the stream from a step (for resuming),
    ``held_out()`` yields evaluation batches (another seed)."""

    d_in: int
    model_name: str
    make: Callable[[int], Iterator[torch.Tensor]]
    held_out: Callable[[], Iterator[torch.Tensor]]


def batch_source(spec: SAETrainSpec, model: Model | None = None) -> BatchSource:
    bs, seed = spec.train.batch_size, spec.train.seed
    if spec.cache is not None:
        reader = CacheReader(spec.cache, spec.point, model=None)
        if bs > reader.n_tokens:  # no batch could ever fill (the stream would wait forever)
            from ..errors import InputError

            raise InputError(f"batch size {bs:,} is larger than the cache in {spec.cache}, which holds "
                             f"{reader.n_tokens:,} tokens; use a batch size of at most {reader.n_tokens:,} or cache "
                             "more text")

        def make(start: int) -> Iterator[torch.Tensor]:
            return skip(reader.batches(bs, seed=seed, buffer_shards=spec.buffer_shards, epochs=None), start)

        def held_out() -> Iterator[torch.Tensor]:
            return reader.batches(min(bs * 8, 4096, reader.n_tokens), seed=seed + 1, buffer_shards=spec.buffer_shards,
                                  epochs=1)

        return BatchSource(reader.d, str(reader.manifest["model"]), make, held_out)
    if model is None:
        from ..models import load_model

        model = load_model(str(spec.model))
    texts = read_texts(spec.data, limit=spec.n_texts)  # type: ignore[arg-type]
    if bs > len(texts) * spec.max_length:  # more tokens per batch than the texts can ever give: it would wait forever
        from ..errors import InputError

        raise InputError(f"batch size {bs:,} is more tokens than {len(texts)} texts of at most {spec.max_length} "
                         "tokens hold; use a smaller batch size or more text")
    p: HookPoint = model.parse_points(spec.point)[0]
    m = model

    def make_online(start: int) -> Iterator[torch.Tensor]:
        return skip(online_batches(m, texts, spec.point, bs, seed=seed, max_length=spec.max_length, epochs=None),
                    start)

    def held_out_online() -> Iterator[torch.Tensor]:
        return online_batches(m, texts, spec.point, bs, seed=seed + 1, max_length=spec.max_length)

    return BatchSource(p.row_width(m) or p.width(m), m.name, make_online, held_out_online)


def training_bytes(configs: list[SAEConfig], batch_size: int) -> int:
    """Bytes training needs (float32): each dictionary's parameters three times (weights and Adam's two moments),
    its gradients, and the step's [batch, d_sae] buffers (codes, masks, their gradients)."""
    total = 0
    for c in configs:
        params = c.d_in * c.d_sae * (1 if c.tied else 2) + c.d_sae + c.d_in
        total += 4 * (4 * params + 4 * batch_size * c.d_sae)
    return total


def check_memory(configs: list[SAEConfig], batch_size: int, device: str) -> None:
    """Refuse, with the figures, dictionaries that cannot fit where they would be trained (instead of an
    out-of-memory kill minutes in)."""
    from ..errors import InputError

    need = training_bytes(configs, batch_size)
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        free = torch.cuda.mem_get_info(dev)[0]
        where = str(dev)
    else:
        import os

        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not a POSIX system: nothing to compare with
            return
        where = "this machine's free memory"
    if need > 0.9 * free:
        widest = max(configs, key=lambda c: c.d_sae)
        raise InputError(f"training these dictionaries needs about {need / 2**30:.1f} GiB (the widest: "
                         f"{widest.d_in} x {widest.d_sae}) but {where} has {free / 2**30:.1f} GiB; use a smaller "
                         "--expansion or --batch-size, or a larger device")


@dataclass
class SAETrainResult:
    saes: list[SparseAutoencoder]
    configs: list[SAEConfig]
    history: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]]  # per dictionary, on held-out batches (rank 0 only; empty elsewhere)


def train_from_spec(spec: SAETrainSpec, *, model: Model | None = None, resume: bool = True,
                    progress: Callable[[dict[str, Any]], None] | None = None, overwrite: bool = False,
                    resume_anyway: bool = False) -> SAETrainResult:
    """Train every dictionary of ``spec`` on one stream; write ``saes/``, ``train_log.jsonl`` and (rank 0)
    ``sae_metrics.json`` under ``spec.out``."""
    src = batch_source(spec, model)
    configs = [d.to_config(src.d_in, hook_point=spec.point, model=src.model_name) for d in spec.dictionaries]
    check_memory(configs, spec.train.batch_size, spec.device)
    rank, _ = rank_and_world()
    saes, history = train_saes(configs, src.make, spec.train, out_dir=spec.out, device=spec.device, resume=resume,
                               progress=progress, overwrite=overwrite, resume_anyway=resume_anyway)
    metrics: dict[str, dict[str, Any]] = {}
    if rank == 0:
        metrics = {s.cfg.name: reconstruction_metrics(s, src.held_out(), max_batches=spec.eval_batches)
                   for s in saes}
        write_metrics(spec.out, metrics)
    return SAETrainResult(saes, configs, history, metrics)
