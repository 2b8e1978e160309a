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


def _special(p: Path) -> str | None:
    """What a path that exists but is neither a file nor a folder is (a pipe, a device...), or None."""
    import stat

    try:
        mode = p.stat().st_mode
    except OSError:
        return None
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


def input_file(path: str | os.PathLike[str] | None, what: str = "file") -> Path | None:
    """An existing, readable, regular file (a pipe or a device is named as such: reading one may never end)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {str(p)!r} is a folder, not a file")
    kind = _special(p)
    if kind is not None:
        raise InputError(f"{what} {str(p)!r} is {kind}, not a regular file; give a file")
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
    kind = _special(p)
    if kind is not None:
        raise InputError(f"{what} {str(p)!r} is {kind}, not a file or folder")
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


def output_file(path: str | os.PathLike[str] | None, what: str = "output file", *,
                inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path | None:
    """A file path that can be written (its folder is created); an existing folder there is an error, and so is
    a path that is one of the command's ``inputs`` (writing it would destroy what is being read) or that lies in
    a folder another actlab process is writing. An existing file is replaced atomically when the command
    finishes."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {str(p)!r} is an existing folder; give a file name")
    kind = _special(p)
    if kind is not None:
        raise InputError(f"{what} {str(p)!r} is {kind}; give a file name")
    for inp in inputs:
        if inp is not None and Path(inp).exists() and p.exists() and Path(inp).resolve() == p.resolve():
            raise InputError(f"{what} {str(p)!r} is also an input of this command; writing it would replace what "
                             "is being read - give another file name")
    parent = p.parent if str(p.parent) else Path(".")
    _writable_dir(parent, what, p)
    _not_held(parent, what, p)
    return p


def _not_held(folder: Path, what: str, shown: Path) -> None:
    """Refuse to write into a folder whose actlab lock another process holds (a running sweep's folder)."""
    from .runs import folder_held

    if folder_held(folder):
        raise InputError(f"cannot write {what} {str(shown)!r}: another actlab process is writing {str(folder)!r} "
                         "(it holds its lock); wait for it or write elsewhere")


def seed(value: Any, name: str = "--seed") -> int:
    """A random seed torch, numpy and Python all accept: a whole number in 0..2**32-1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise InputError(f"{name} must be a whole number from 0 to {2**32 - 1}, got {value!r}")
    return value


def plain_name(value: str, what: str) -> str:
    """A name shown in pages and used as a folder name: printable, without control or bidirectional-override
    characters (U+202E would display it reversed)."""
    import unicodedata

    bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    if bad:
        raise InputError(f"{what} {value!r} contains control or formatting characters "
                         f"({', '.join(f'U+{ord(c):04X}' for c in bad[:3])}); use printable text")
    return value


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


def layer_syntax(spec: str | None, what: str = "layers") -> str | None:
    """The layer grammar's syntax, checked before the model (and its layer count) is known."""
    if spec is None:
        return None
    from .hooks.points import parse_layers

    parse_layers(spec, 1 << 20, what=what)  # ranges are checked again against the model
    return spec


def point_syntax(specs: Iterable[str] | str | None) -> None:
    """Hook-point spec syntax and kinds, before the model is known (layer ranges are checked later)."""
    if specs is None:
        return
    from .hooks.points import check_spec

    check_spec(specs)


def generation_length(model: Any, max_new_tokens: int, what: str = "--max-new-tokens") -> int:
    """New tokens a generation may ask for: no more than the model's context holds (a count beyond it would
    generate for hours or forever)."""
    ctx = getattr(model, "context_length", None)
    if ctx is not None and max_new_tokens >= ctx:
        raise InputError(f"{what} {max_new_tokens} is beyond {model.name!r}'s context of {ctx} tokens; ask for "
                         f"fewer than {ctx}")
    return max_new_tokens
