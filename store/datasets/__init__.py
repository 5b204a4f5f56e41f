"""Imported datasets: file detection and streaming parsers, all-or-nothing staged import, Arrow pair
batches, export to jsonl / parquet / hf, and the `Datasets` mixin of `Store` (store_mixin.py)."""
