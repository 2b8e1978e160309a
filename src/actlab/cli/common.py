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
    """``"all"``/None -> None (every layer); ``"4,8,12"``, ``"4-12"``, ``"4-12:2"``, negatives count from the end."""
    from ..errors import InputError

    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
        try:
            if "-" in part[1:]:
                lo_s, hi_s = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                lo, hi = int(lo_s), int(hi_s)
                out += list(range(lo, hi + 1, step))
            else:
                out.append(int(part))
        except ValueError:
            raise InputError(f"cannot read layers from {spec!r}; use e.g. 4,8,12 or 4-12 or 4-12:2 or all") from None
    out = [i + n_layers if i < 0 else i for i in out]
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise InputError(f"layers {bad} are out of range; the model has layers 0..{n_layers - 1}")
    if not out:
        raise InputError(f"the layer list {spec!r} is empty")
    return sorted(set(out))


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
