"""Checks of user input that can run before any model is loaded: counts, finite numbers, choices, input files,
output paths, devices, layer and point syntax. Each raises :class:`~actlab.errors.InputError` with one line
naming the bad value and what would be valid, so the CLI and the Python jobs fail in the first second rather
than after minutes of loading and computing."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError, choices_hint


def positive(value: Any, name: str) -> Any:
    """A count or size that must be at least 1 (or a number > 0)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return value


def non_negative(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
        raise InputError(f"{name} must be zero or more, got {value!r}")
    return value


def finite(value: Any, name: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return f


def fraction(value: Any, name: str, *, open_interval: bool = True) -> float:
    f = finite(value, name)
    if (open_interval and not 0 < f < 1) or (not open_interval and not 0 <= f <= 1):
        raise InputError(f"{name} must be between 0 and 1{' (exclusive)' if open_interval else ''}, got {value!r}")
    return f


def choice(value: str, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}." + choices_hint(str(value), choices))
    return value


def numbers(spec: str, name: str) -> list[float]:
    """Comma-separated finite numbers (``"-2,-1,0,1,2"``)."""
    parts = [x for x in spec.replace(" ", "").split(",") if x]
    if not parts:
        raise InputError(f"the {name} list {spec!r} is empty; give e.g. -2,-1,0,1,2")
    out = []
    for p in parts:
        try:
            out.append(float(p))
        except ValueError:
            raise InputError(f"cannot read {name} from {spec!r} (at {p!r}); use e.g. -2,-1,0,1,2") from None
        if not math.isfinite(out[-1]):
            raise InputError(f"{name} must be finite numbers, got {p!r} in {spec!r}")
    return out


def integers(spec: str, name: str) -> list[int]:
    """Comma-separated whole numbers (``"0,5,9"``)."""
    parts = [x for x in spec.replace(" ", "").split(",") if x]
    if not parts:
        raise InputError(f"the {name} list {spec!r} is empty; give e.g. 0,5,9")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise InputError(f"cannot read {name} from {spec!r}; give whole numbers, e.g. 0,5,9") from None


def input_file(path: str | os.PathLike[str] | None, what: str = "file") -> Path | None:
    """An existing, readable file."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {str(p)!r} is a folder, not a file")
    if not p.is_file():
        raise InputError(f"{what} {str(p)!r} does not exist")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {str(p)!r} is not readable (permission denied)")
    return p


def input_path(path: str | os.PathLike[str] | None, what: str = "input") -> Path | None:
    """An existing file or folder (datasets may be saved HF dataset folders)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {str(p)!r} does not exist")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {str(p)!r} is not readable (permission denied)")
    return p


def input_dir(path: str | os.PathLike[str] | None, what: str = "folder") -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        raise InputError(f"{what} {str(p)!r} is a file, not a folder")
    if not p.is_dir():
        raise InputError(f"{what} {str(p)!r} does not exist")
    return p


def _writable_dir(d: Path, what: str, shown: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".actlab-probe-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise InputError(f"cannot create {what} {str(shown)!r}: a file is in the way ({str(d)!r})") from None
    except NotADirectoryError:
        raise InputError(f"cannot create {what} {str(shown)!r}: part of the path is a file") from None
    except PermissionError:
        raise InputError(f"cannot write {what} {str(shown)!r}: permission denied in {str(d)!r}") from None
    except OSError as e:
        raise InputError(f"cannot write {what} {str(shown)!r}: {e.strerror}") from None


def output_file(path: str | os.PathLike[str] | None, what: str = "output file") -> Path | None:
    """A file path that can be written (its folder is created); an existing folder there is an error. An
    existing file is replaced atomically when the command finishes."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {str(p)!r} is an existing folder; give a file name")
    _writable_dir(p.parent if str(p.parent) else Path("."), what, p)
    return p


def output_dir(path: str | os.PathLike[str] | None, what: str = "output folder") -> Path | None:
    """A folder that exists or can be created, and can be written; an existing file there is an error."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{what} {str(p)!r} is an existing file; give a folder")
    _writable_dir(p, what, p)
    return p


DEVICE_KINDS = ("cpu", "cuda", "cuda:N", "mps", "auto")


def device(name: str | None) -> str | None:
    """A device that exists here: ``cpu``, ``cuda``/``cuda:N`` (with a GPU), ``mps`` (Apple), or None."""
    if name is None or name == "auto":
        return name
    import torch

    base, _, index = name.partition(":")
    if base not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (base == "cpu" and index):
        raise InputError(f"unknown device {name!r}; valid: {', '.join(DEVICE_KINDS)}")
    if base == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but no CUDA GPU is available here; valid here: cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"device {name!r} does not exist; this machine has cuda:0..cuda:"
                             f"{torch.cuda.device_count() - 1}")
    if base == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"device {name!r} asked for, but MPS is not available here; valid here: cpu")
    return name


def layer_syntax(spec: str | None) -> str | None:
    """The layer grammar's syntax, checked before the model (and its layer count) is known."""
    if spec is None:
        return None
    from .hooks.points import parse_layers

    parse_layers(spec, 1 << 20)  # ranges are checked again against the model
    return spec


def point_syntax(specs: Iterable[str] | str | None) -> None:
    """Hook-point spec syntax and kinds, before the model is known (layer ranges are checked later)."""
    if specs is None:
        return
    from .hooks.points import check_spec

    check_spec(specs)
