"""Progress of long steps, reported by the library itself so the CLI, a notebook and a log file all see it.

``with progress.task("caching texts", total=n, unit="texts") as t: t.advance(k)`` reports through the active
renderer: by default plain ``logging`` lines on the ``actlab`` logger - nothing for a step that ends within
``ACTLAB_PROGRESS_DELAY`` seconds (default 2), otherwise a first line then, one every
``ACTLAB_PROGRESS_SECONDS`` (default 10) with the count, rate and ETA, and one when it ends - which read well
in a log file (nohup, SLURM). The CLI switches to rich bars when stderr is a terminal (:func:`use_renderer`).
``-q`` (logging level WARNING) silences both; a run folder also gets every line in its ``run.log``.

Third-party progress bars and deprecation chatter (transformers' "Loading weights", datasets' map bars, TRL's
FutureWarnings) are silenced by :func:`third_party_quiet` around the library's own calls, and at the CLI's
edge unless ``-v``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

log = logging.getLogger("actlab")
T = TypeVar("T")


def _ensure_handler() -> None:
    """Python API users who configured no logging still see actlab's INFO lines on stderr (like transformers'
    default handler); an application that configured logging keeps full control."""
    if log.level == logging.NOTSET:  # INFO unless the application chose a level for "actlab"
        log.setLevel(logging.INFO)
    if any(not isinstance(h, logging.FileHandler) for h in log.handlers) or logging.getLogger().handlers:
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(h)


def _seconds(var: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(var, str(default))))
    except ValueError:
        return default


def _interval() -> float:
    return _seconds("ACTLAB_PROGRESS_SECONDS", 10.0)


def _delay() -> float:
    return _seconds("ACTLAB_PROGRESS_DELAY", 2.0)


def _fmt_time(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Task:
    """One long step: ``advance(n, **info)`` adds done units and shows ``info`` (e.g. a loss) beside the count."""

    def __init__(self, description: str, total: int | None = None, *, unit: str = "items",
                 callback: Callable[..., Any] | None = None):
        self.description, self.total, self.unit, self.callback = description, total, unit, callback
        self.done = 0
        self.info: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.handle: Any = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def status(self) -> str:
        """``description: 30/100 texts (30%), 12.3 texts/s, ETA 6s, loss 0.12``."""
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        parts = [f"{self.done}/{self.total}" if self.total else f"{self.done}", self.unit]
        line = f"{self.description}: {' '.join(parts)}"
        if self.total:
            line += f" ({100 * self.done / self.total:.0f}%)"
        if self.done and rate > 0:
            line += f", {rate:.3g} {self.unit}/s"
            if self.total and self.done < self.total:
                line += f", ETA {_fmt_time((self.total - self.done) / rate)}"
        if self.info:
            line += ", " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in self.info.items())
        return line

    def advance(self, n: int = 1, **info: Any) -> None:
        self.done += n
        self.info.update(info)
        _renderer().update(self)
        if self.callback is not None:
            try:
                self.callback(n, **info)
            except TypeError:  # first-wave callbacks take only the count
                self.callback(n)

    def __enter__(self) -> Task:
        _renderer().start(self)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        _renderer().finish(self, failed=exc_type is not None)


class Renderer(Protocol):
    def start(self, task: Task) -> None: ...

    def update(self, task: Task) -> None: ...

    def finish(self, task: Task, failed: bool = False) -> None: ...


class LogRenderer:
    """Plain log lines for steps longer than ``ACTLAB_PROGRESS_DELAY``: after the delay, every
    ``ACTLAB_PROGRESS_SECONDS``, and at the end."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}

    def start(self, task: Task) -> None:
        _ensure_handler()

    def update(self, task: Task) -> None:
        now = time.perf_counter()
        last = self._last.get(id(task))
        due = task.elapsed >= _delay() if last is None else now - last >= _interval()
        if due:
            self._last[id(task)] = now
            log.info(task.status())

    def finish(self, task: Task, failed: bool = False) -> None:
        shown = self._last.pop(id(task), None) is not None
        if not shown and task.elapsed < _delay():
            return
        if failed:
            log.info(f"{task.description}: stopped after {task.done} {task.unit} ({_fmt_time(task.elapsed)})")
        else:
            extra = ", " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in task.info.items()) if task.info else ""
            count = f"{task.done} {task.unit} " if task.done else ""
            log.info(f"{task.description}: done, {count}in {_fmt_time(task.elapsed)}{extra}")


_RENDERER: Renderer | None = None


def _renderer() -> Renderer:
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = LogRenderer()
    return _RENDERER


def use_renderer(renderer: Renderer | None) -> None:
    """Report progress through ``renderer`` (None: back to log lines)."""
    global _RENDERER
    _RENDERER = renderer


def task(description: str, total: int | None = None, *, unit: str = "items",
         callback: Callable[..., Any] | None = None) -> Task:
    """A progress task for a long step (see module docstring); ``callback(n)`` also gets every advance."""
    return Task(description, total, unit=unit, callback=callback)


def track(items: Sequence[T], description: str, *, unit: str = "items") -> Iterator[T]:
    """``for x in track(items, "labelling features", unit="features")``: a task advanced once per item."""
    with task(description, total=len(items), unit=unit) as t:
        for x in items:
            yield x
            t.advance(1)


def info(message: str) -> None:
    """A log line on the ``actlab`` logger (shown at the default level, hidden by ``-q``)."""
    _ensure_handler()
    log.info(message)


@contextlib.contextmanager
def third_party_quiet() -> Iterator[None]:
    """Silence transformers' and datasets' progress bars and library deprecation warnings inside the block
    (actlab reports its own progress); a caller that raised their verbosity (``-v``) keeps them."""
    if log.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    restore = []
    try:
        from transformers.utils import logging as hf_logging

        was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        restore.append(lambda: hf_logging.enable_progress_bar() if was else None)
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:  # the GGUF reader draws its own plain tqdm bar ("Converting and de-quantizing GGUF tensors...")
        import functools

        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        bar = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(bar, disable=True)
        restore.append(lambda: setattr(gguf_utils, "tqdm", bar))
    except (ImportError, AttributeError):
        pass
    try:
        import datasets

        was_ds = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        restore.append(lambda: datasets.enable_progress_bars() if was_ds else None)
    except (ImportError, AttributeError):
        pass
    try:
        with warnings.catch_warnings():
            for cat in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=cat)
            yield
    finally:
        for r in restore:
            r()
