"""llama.cpp and nothing else: the engine, adapters, GGUF checks and header reader, model files, scoring.

Nothing here imports Textual or typer (import-linter checks it).
"""
