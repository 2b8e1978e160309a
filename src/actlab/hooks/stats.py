"""Streaming statistics over a dataset without storing activations.

Per hook point: count, mean (float64) and variance (Welford/Chan's parallel update in float64), over the
positions a policy selects. With ``positions='last'`` each row contributes one sample; with ``'tokens'``
every real token does; with a list of ``k`` indices the statistics are kept per index (``mean`` is
``[k, d]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import InputError
from ..progress import task as progress_task
from .points import parse_points
from .positions import PositionSpec


class TextReader(Protocol):
    """What streaming needs: a hook target that tokenizes text and runs captures (``actlab.Model``)."""

    n_layers: int
    device: torch.device

    def tokenize(self, texts: Sequence[str], *, padding_side: str = ..., add_special_tokens: bool = ...
                 ) -> dict[str, torch.Tensor]: ...

    def activations(self, inputs: Any, points: Any, positions: PositionSpec = ..., **kw: Any) -> dict: ...


@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (M2), merged batch by batch in float64."""

    count: int = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def __repr__(self) -> str:
        shape = tuple(self.mean.shape) if self.mean is not None else ()
        return f"actlab.RunningStats(count={self.count}, shape={shape})"

    def update(self, x: torch.Tensor) -> None:
        """Add samples ``x`` ``[n, ...]`` (the leading dimension is the sample dimension)."""
        n = int(x.shape[0])
        if n == 0:
            return
        x = x.double()
        b_mean = x.mean(0)
        b_m2 = ((x - b_mean) ** 2).sum(0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, b_mean, b_m2
            return
        total = self.count + n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + b_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def merge(self, other: RunningStats) -> RunningStats:
        """Combine two partial statistics (e.g. from two workers)."""
        out = RunningStats(self.count, self.mean, self.m2)
        if other.count == 0 or other.mean is None or other.m2 is None:
            return out
        if out.mean is None or out.m2 is None:
            return RunningStats(other.count, other.mean, other.m2)
        total = out.count + other.count
        delta = other.mean - out.mean
        out.mean = out.mean + delta * (other.count / total)
        out.m2 = out.m2 + other.m2 + delta**2 * (out.count * other.count / total)
        out.count = total
        return out

    @property
    def var(self) -> torch.Tensor:
        """Population variance (divide by n)."""
        if self.m2 is None or self.count == 0:
            raise ValueError("no samples")
        return self.m2 / self.count

    @property
    def sample_var(self) -> torch.Tensor:
        """Unbiased variance (divide by n - 1)."""
        if self.m2 is None or self.count < 2:
            raise ValueError("need at least two samples")
        return self.m2 / (self.count - 1)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()


@torch.no_grad()
def stream_stats(
    model: TextReader,
    texts: Iterable[str] | Sequence[str],
    points: str | Iterable[str],
    positions: PositionSpec = "tokens",
    *,
    batch_size: int = 16,
    padding_side: str = "right",
    progress: Any = None,
    add_special_tokens: bool = True,
) -> dict[str, RunningStats]:
    """Stream ``texts`` through the model in batches; return per-point running statistics.

    Each batch is captured on the model's device, folded into the statistics and dropped, so memory
    does not grow with the dataset. The forward stops after the last requested point.
    """
    if positions == "all":
        raise InputError("positions='all' pads rows with zeros, which would bias statistics; use 'tokens'")
    pts = parse_points(points, model.n_layers)
    stats = {p.name: RunningStats() for p in pts}
    buf: list[str] = []

    texts = list(texts)
    with progress_task("streaming statistics", total=len(texts), unit="texts", callback=progress) as task:
        def flush() -> None:
            batch = model.tokenize(buf, padding_side=padding_side, add_special_tokens=add_special_tokens)
            acts = model.activations(batch, pts, positions, dtype=None, device=model.device)
            for name, x in acts.items():
                stats[name].update(x)
            task.advance(len(buf))
            buf.clear()

        for t in texts:
            buf.append(t)
            if len(buf) == batch_size:
                flush()
        if buf:
            flush()
    if all(s.count == 0 for s in stats.values()):
        raise InputError("no text given: the dataset is empty")
    return stats
