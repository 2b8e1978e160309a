"""The ``actlab`` command line (Typer). Bad input exits with code 2 and a one-line error, no traceback."""

from __future__ import annotations

import sys

from .app import app


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app, turning actlab's input errors into clean exits (code 2)."""
    from ..errors import ActlabError

    try:
        app(args=argv, prog_name="actlab")
    except ActlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


__all__ = ["app", "main"]
