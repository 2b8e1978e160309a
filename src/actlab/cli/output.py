"""What the CLI prints: logging set up once per invocation (``-v``/``-q``), progress as rich bars on a terminal
or plain timestamped lines otherwise, third-party noise silenced unless ``-v``, and raw output for anything a
machine reads (YAML, JSON, paths), never wrapped by a console."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from rich.console import Console

console = Console(stderr=False, soft_wrap=True)  # tables and summaries on stdout
err_console = Console(stderr=True, soft_wrap=True)  # status lines on stderr

LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def raw(text: str) -> None:
    """Write machine-readable text to stdout exactly as given (no console wrapping or markup)."""
    sys.stdout.write(text)
    sys.stdout.flush()


class _ConsoleHandler(logging.Handler):
    """actlab's log lines on stderr: through the rich console on a terminal (so bars and lines do not
    collide), plain ``HH:MM:SS message`` lines otherwise."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.tty:
                msg = record.getMessage()
                if record.levelno >= logging.WARNING:
                    msg = f"[yellow]{record.levelname.lower()}:[/yellow] {msg}"
                err_console.print(msg, highlight=False, markup=record.levelno >= logging.WARNING)
            else:
                sys.stderr.write(self.format(record) + "\n")
                sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)


class RichRenderer:
    """Progress bars on a terminal (one rich Progress shared by nested tasks)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err_console,
                                 transient=True)
        self.active = 0

    def start(self, task: Any) -> None:
        if self.active == 0:
            self.progress.start()
        self.active += 1
        task.handle = self.progress.add_task(task.description, total=task.total, info="")

    def update(self, task: Any) -> None:
        info = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in task.info.items())
        self.progress.update(task.handle, completed=task.done, info=info)

    def finish(self, task: Any, failed: bool = False) -> None:
        self.progress.remove_task(task.handle)
        self.active -= 1
        if self.active == 0:
            self.progress.stop()
        if not failed:
            logging.getLogger("actlab").info(f"{task.description}: done ({task.done} {task.unit}, "
                                             f"{task.elapsed:.1f} s)")


def setup(verbosity: int = 0) -> None:
    """Configure logging, progress and warnings for one CLI invocation (``verbosity``: -1 quiet, 0, 1 verbose)."""
    from .. import progress

    log = logging.getLogger("actlab")
    for h in list(log.handlers):
        if isinstance(h, _ConsoleHandler):
            log.removeHandler(h)
    tty = err_console.is_terminal
    handler = _ConsoleHandler(tty)
    handler.setLevel(LEVELS.get(verbosity, logging.INFO))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)  # run.log files get INFO even with -q
    log.propagate = False
    progress.use_renderer(RichRenderer() if tty and verbosity >= 0 else None)
    if verbosity <= 0:  # third-party chatter, kept with -v (environment variables: nothing heavy is imported here)
        for var, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DATASETS_VERBOSITY", "error"),
                           ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                           ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
            os.environ.setdefault(var, value)
        for name in ("transformers", "datasets", "trl", "accelerate", "huggingface_hub", "torch"):
            logging.getLogger(name).setLevel(logging.ERROR)
        for cat in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=cat)
    else:
        warnings.simplefilter("default")
    warnings.filterwarnings("default", category=DeprecationWarning, module=r"actlab(\.|$)")  # ours: always shown

    def one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, *a: Any) -> None:
        if verbosity > 0 or filename.replace("\\", "/").find("/actlab/") >= 0:
            log.warning(f"{category.__name__}: {message}")

    warnings.showwarning = one_line
