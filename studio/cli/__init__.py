"""``prefstudio``: the TUI when called bare, and headless subcommands (one module per command group)."""

from studio.cli.app import app, main

__all__ = ["app", "main"]
