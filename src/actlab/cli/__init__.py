"""The ``actlab`` command line (Typer), with one error boundary.

Every failure a user can cause - a bad value, a missing or unreadable file, an output path that cannot be
written, a full disk, a corrupt weights file, a missing GPU, an out-of-memory - ends as one line on stderr,
``error: ...`` naming the bad value and what would be valid, and exit code 2. Anything else is a bug in
actlab: its traceback is printed with a request to report it, and the exit code is 1. ``--debug`` (or
``ACTLAB_DEBUG=1``) shows the traceback for everything. ``-v``/``--verbose`` and ``-q``/``--quiet`` may
appear anywhere on the command line.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

GLOBAL_FLAGS = {"-v": 1, "--verbose": 1, "-q": -1, "--quiet": -1}
USER_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOSPC,
               errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.EMFILE}
REPORT = "this is a bug in actlab: please report it with the command line and this traceback"


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def classify(e: BaseException) -> tuple[int, str]:
    """(exit code, message): 2 for failures the user can cause or fix, 1 for bugs."""
    from ..errors import ActlabError

    if isinstance(e, ActlabError):
        return 2, _one_line(str(e))
    if isinstance(e, OSError) and (e.errno in USER_ERRNOS or isinstance(e, (PermissionError, FileNotFoundError))):
        where = f" {e.filename!s}" if getattr(e, "filename", None) else ""
        extra = f" -> {e.filename2!s}" if getattr(e, "filename2", None) else ""
        what = {errno.ENOSPC: "no space left on the device writing", errno.EDQUOT: "disk quota exceeded writing"}
        label = what.get(e.errno or 0, e.strerror or type(e).__name__)
        return 2, _one_line(f"{label}:{where}{extra}".rstrip(":"))
    name = type(e).__name__
    if name == "SafetensorError":
        return 2, _one_line(f"a safetensors file is corrupt or truncated ({e})")
    if name == "OutOfMemoryError":
        return 2, _one_line(f"out of memory ({str(e).splitlines()[0] if str(e) else name}); lower --batch-size or "
                            "--max-length, or use a smaller dtype or another device")
    return 1, _one_line(f"{name}: {e}")


def _other_rank() -> bool:
    """A torchrun process other than rank 0 (it stays quiet about an error every rank meets)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


def _given(e: Any, args: list[str]) -> str:
    """The value the user typed for a parameter Typer rejected (its message does not always show it)."""
    opts = getattr(getattr(e, "param", None), "opts", None) or []
    for i, a in enumerate(args):
        for o in opts:
            if a == o and i + 1 < len(args):
                return f" (got {args[i + 1]!r})"
            if o.startswith("--") and a.startswith(o + "="):
                return f" (got {a.split('=', 1)[1]!r})"
    return ""


def _global_flags(argv: list[str]) -> tuple[list[str], int, bool]:
    rest, verbosity, debug = [], 0, bool(os.environ.get("ACTLAB_DEBUG"))
    for a in argv:
        if a in GLOBAL_FLAGS:
            verbosity = GLOBAL_FLAGS[a]
        elif a == "--debug":
            debug = True
        else:
            rest.append(a)
    return rest, verbosity, debug


def _version() -> int:
    """``actlab --version``: actlab's version and those of the libraries results depend on (without importing
    them: read from the installed distributions)."""
    from importlib.metadata import PackageNotFoundError, version

    from ..version import __version__

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    print(f"actlab {__version__} (torch {of('torch')}, transformers {of('transformers')}, python "
          f"{sys.version.split()[0]})")
    return 0


def main(argv: list[str] | None = None) -> Any:
    """Entry point (see module docstring)."""
    args, verbosity, debug = _global_flags(list(sys.argv[1:] if argv is None else argv))
    if args == ["--version"]:
        return _version()
    from . import output

    output.setup(verbosity)
    from typer import exceptions as typer_exc
    from typer._click import exceptions as click_exc

    from .app import app

    try:
        code = app(args=args, prog_name="actlab", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as e:  # `actlab steer`: its help, and 2 as for any incomplete command
        print(e.ctx.get_help() if e.ctx is not None else str(e))
        sys.exit(2)
    except click_exc.UsageError as e:
        hint = f" (see actlab {e.ctx.command_path.split(' ', 1)[1]} --help)" if e.ctx and " " in e.ctx.command_path \
            else " (see actlab --help)"
        print(f"error: {_one_line(e.format_message())}{_given(e, args)}{hint}", file=sys.stderr)
        sys.exit(2)
    except typer_exc.Exit as e:
        sys.exit(e.exit_code)
    except (typer_exc.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if debug:
            raise
        code, msg = classify(e)
        if code == 2:
            if not _other_rank():  # under torchrun one line from rank 0, not one per process
                print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)
        import traceback

        traceback.print_exc()
        print(f"error: {msg}\n{REPORT}", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
    return None


def __getattr__(name: str) -> Any:
    if name == "app":  # kept as a name; importing it is deferred so `actlab --help` stays fast
        from .app import app

        return app
    raise AttributeError(name)


__all__ = ["app", "classify", "main"]
