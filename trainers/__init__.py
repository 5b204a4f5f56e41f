"""Preference trainers (headless: never imports Textual or studio)."""

from trainers import offline as _offline  # noqa: F401  (sets HF offline env before any HF import)
