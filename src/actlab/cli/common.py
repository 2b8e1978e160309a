"""Options, checks and helpers shared by the CLI commands. The CLI is the edge: it parses flags, checks them
before any model loads (:mod:`actlab.checks`), calls one job and prints; nothing here computes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .. import checks
from .output import console, err_console, raw

__all__ = ["checks", "console", "err_console", "raw"]

LAYER_HELP = "Layers: all, 4, 4,8,12, 4-12 or 4-12:2 (inclusive; negative counts from the end)."

ModelArg = Annotated[str, typer.Argument(help="Hub id, local folder, GGUF file, or a short name found in "
                                              "ACTLAB_MODELS_DIR.", metavar="MODEL", show_default=False)]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", metavar="DTYPE", help="float32, bfloat16, float16 or "
                                              "auto (default: float32 on CPU, the checkpoint's on a GPU).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", metavar="DEVICE", help="cpu, cuda, cuda:N or mps "
                                               "(default: cuda when available, else cpu).")]
GgufOpt = Annotated[str | None, typer.Option("--gguf-file", metavar="NAME", help="GGUF file name inside a model "
                                             "folder.")]
DeviceMapOpt = Annotated[str | None, typer.Option("--device-map", metavar="MAP", help="'auto' spreads a model too "
                                                  "large for one GPU over the GPUs (accelerate).")]
MaxMemOpt = Annotated[str | None, typer.Option("--max-memory", metavar="SPEC", help="With --device-map auto: memory "
                                               "per device, e.g. 0:20GiB,1:20GiB,cpu:64GiB.")]
LayersOpt = Annotated[str | None, typer.Option("--layers", metavar="LAYERS", help=LAYER_HELP)]
ChatOpt = Annotated[bool | None, typer.Option("--chat/--no-chat", help="Use the chat template (default: when the "
                                              "tokenizer has one).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", metavar="N", help="Use at most this many items.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", metavar="N", help="Prompts per forward pass.")]


def opt(*names: str, help: str, metavar: str | None = None, hidden: bool = False, **kw: Any) -> Any:
    """``typer.Option`` with a conventional metavar."""
    return typer.Option(*names, help=help, metavar=metavar, hidden=hidden, **kw)


PARALLEL_COMMANDS = ("acts cache", "steer extract", "steer sweep", "sae train", "sae transcoder", "eval run",
                     "diff crosscoder")


def distributed(device: str | None) -> tuple[int, int]:
    """For a command that splits its work across torchrun processes: join the process group the launcher
    describes (a no-op without one); returns (rank, world)."""
    from ..parallel import init_from_env

    checks.device(device)
    return init_from_env(device)


def load(model: str, dtype: str | None, device: str | None, gguf_file: str | None = None, *,
         device_map: str | None = None, max_memory: str | None = None, **kw: Any):
    """Load a model (checked device and dtype first; loading reports its own progress). Under torchrun only
    the data-parallel commands (which call :func:`distributed` first) may load one: the others would run N
    copies of the same job into the same files."""
    import os

    from ..errors import InputError
    from ..models import load_model
    from ..models.loading import parse_dtype
    from ..parallel import rank_and_world

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank_and_world()[1] == 1:
        raise InputError(f"this command does not split its work across processes, so it does not run under "
                         f"torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); data-parallel commands: "
                         f"{', '.join(PARALLEL_COMMANDS)}. For a model larger than one GPU use --device-map auto "
                         "in a single process")
    kw.update(placement(device_map, max_memory))
    if rank_and_world()[1] > 1:
        if "device_map" in kw:
            raise InputError("--device-map/--max-memory spread one model over the GPUs of one process; under "
                             "torchrun each process holds a whole copy (see docs/scale.md)")
        import torch

        if torch.cuda.is_available() and device in (None, "cuda"):
            device = f"cuda:{torch.cuda.current_device()}"  # the GPU init_from_env gave this rank
    checks.device(device)
    parse_dtype(dtype)
    return load_model(model, dtype=dtype, device=device, gguf_file=gguf_file, **kw)


def placement(device_map: str | None, max_memory: str | None) -> dict[str, Any]:
    """``--device-map`` / ``--max-memory`` as ``load_model`` keywords (:func:`actlab.models.placement.placement`)."""
    from ..models.placement import placement as place

    return place(device_map, max_memory)


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
    """``"-2,-1,0,1,2"`` -> finite floats (an empty list, NaN or infinity is an error)."""
    return checks.numbers(spec, what)


def wrote(*paths: Path | str) -> None:
    console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False, soft_wrap=True)
