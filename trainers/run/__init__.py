"""A training run: its process, lifecycle (prepare, start, cancel, resume, finalize), outputs, callbacks,
device and dtype, errors. The method that trains (trainers.methods) is looked up by name."""
