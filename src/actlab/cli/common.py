"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)

ModelArg = Annotated[str, typer.Argument(help="Hub id, local folder, GGUF file, or a short name found in "
                                              "ACTLAB_MODELS_DIR.")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="float32, bfloat16, float16 or auto "
                                                              "(default: float32 on CPU, auto on GPU).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cuda if "
                                                                "available).")]
GgufOpt = Annotated[str | None, typer.Option("--gguf-file", help="GGUF file name inside a model folder.")]


def load(model: str, dtype: str | None, device: str | None, gguf_file: str | None = None, **kw: Any):
    """Load a model with a status spinner."""
    from transformers.utils import logging as hf_logging

    from ..models import load_model

    hf_logging.disable_progress_bar()  # the spinner below says what is happening
    with err_console.status(f"loading {model} ..."):
        return load_model(model, dtype=dtype, device=device, gguf_file=gguf_file, **kw)


def split_list(values: list[str] | None) -> list[str]:
    """Accept repeated options and comma-separated values alike."""
    out: list[str] = []
    for v in values or []:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def parse_layers(spec: str | None, n_layers: int) -> list[int] | None:
    """The one layer grammar (:func:`actlab.hooks.points.parse_layers`): ``all``/None -> None (every layer)."""
    from ..hooks.points import parse_layers as parse

    return parse(spec, n_layers)


def parse_floats(spec: str, what: str = "multipliers") -> list[float]:
    """``"-2,-1,0,1,2"`` -> floats; empty is an error."""
    from ..errors import InputError

    try:
        vals = [float(x) for x in spec.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"cannot read {what} from {spec!r}; use e.g. -2,-1,0,1,2") from None
    if not vals:
        raise InputError(f"the {what} grid {spec!r} is empty")
    return vals


class progress_bar:
    """A rich progress bar on stderr; ``with progress_bar("extracting", total) as advance: advance(n)``."""

    def __init__(self, description: str, total: int | None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err_console, transient=False)
        self.description, self.total = description, total

    def __enter__(self):
        self.progress.start()
        task = self.progress.add_task(self.description, total=self.total)

        def advance(n: int = 1, description: str | None = None) -> None:
            self.progress.update(task, advance=n, **({"description": description} if description else {}))

        return advance

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
