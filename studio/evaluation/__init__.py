"""Before/after evaluation of a run: comparison prompts and banks, side-by-side answers and the blind tally,
preference and stance metrics, the report, and a run's GGUF adapter. Reads the store and studio.inference."""
