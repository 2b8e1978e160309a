"""Train dictionaries in two gloo processes (torch.distributed on the CPU) and return rank 0's weights, for the
tests that hold them equal to one process's training (SAEs, crosscoders: the same trainer)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def _worker(rank: int, world: int, port: int, out: str, configs: list[Any], train: Any,
            stream: Callable[..., Any], stream_args: tuple[Any, ...]) -> None:
    import torch.distributed as dist

    from actlab.sae.train import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        tr = Trainer(configs, train)
        tr.fit(stream(*stream_args))
        if rank == 0:
            torch.save([{k: v.detach().clone() for k, v in s.state_dict().items()} for s in tr.saes], out)
        dist.barrier()  # no rank tears its group down while another still talks
    finally:
        dist.destroy_process_group()


def train_in_two_processes(configs: list[Any], train: Any, stream: Callable[..., Any],
                           *stream_args: Any) -> list[dict[str, torch.Tensor]]:
    """Rank 0's state dicts after ``Trainer(configs, train).fit(stream(*stream_args))`` in two processes
    (``stream`` a module-level function, so the spawned processes can import it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.pt"
        mp.start_processes(_worker, args=(2, port, str(out), configs, train, stream, stream_args), nprocs=2,
                           join=True, start_method="spawn")
        return torch.load(out, weights_only=True)
