"""Preference Studio: the Textual app, the CLI and the llama.cpp engine glue."""

__version__ = "0.1.0"
