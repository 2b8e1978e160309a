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
