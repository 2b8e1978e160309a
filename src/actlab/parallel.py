"""Data parallelism through torch.distributed (``torchrun`` / ``accelerate launch``), never a home-made engine.

Under ``torchrun --nproc_per_node N actlab ...`` every process runs the same command; :func:`init_from_env`
joins the process group the launcher describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...; nccl when the
command runs on CUDA, gloo otherwise). Jobs then split their data with :func:`block_range` (contiguous blocks
of whole batches, so every batch is the one a single process would run and results are identical, not merely
close), gather what ranks computed with :func:`gather`, and only rank 0 writes the files both would write.
Without a process group everything here is the single-process identity (rank 0 of 1).
"""

from __future__ import annotations

import os
from typing import Any

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str | None = None) -> tuple[int, int]:
    """Join the process group a launcher set up in the environment (``WORLD_SIZE`` > 1), once; returns
    (rank, world). On CUDA each process takes the GPU ``LOCAL_RANK`` and the backend is nccl."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return rank_and_world()
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return rank_and_world()


def block_range(n_items: int, block: int, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """This rank's contiguous share ``[start, stop)`` of ``n_items`` cut into blocks of ``block`` items (whole
    batches): ranks get consecutive runs of blocks, as even as possible, earlier ranks the larger ones."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    n_blocks = -(-n_items // block)
    per, extra = divmod(n_blocks, world)
    first = rank * per + min(rank, extra)
    count = per + (1 if rank < extra else 0)
    return min(first * block, n_items), min((first + count) * block, n_items)


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (a one-item list without a process group)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if rank_and_world()[1] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
