"""``python -m actlab`` runs the CLI."""

from .cli import main

main()
