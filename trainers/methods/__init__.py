"""Training methods, one module each; the run process looks a method up here by name."""
