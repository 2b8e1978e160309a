"""The ``actlab`` command line (Typer). Bad input exits with code 2 and a one-line error, no traceback."""

from __future__ import annotations

import sys

from .app import app


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app, turning actlab's input errors into clean exits."""
    from ..errors import ActlabError

    try:
        app(args=argv, standalone_mode=False)
    except ActlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click's usage errors arrive here with standalone_mode=False
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            sys.exit(1)
        raise


__all__ = ["app", "main"]
