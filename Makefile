# The two commands of the README. Both set up .venv on first use (scripts/bootstrap.sh).
# `make test` runs the suite in two worker processes (pytest-xdist, one test file per worker at a time: a file's
# module fixtures are built once) and lists its 30 slowest setups and calls: the suite has a time budget
# (~25 min on 2 cores). One process used 0.89 of the 2 cores on average (most tests wait on the app's workers,
# llama.cpp or a trainer process), so two share them.
.PHONY: studio test bench lint

studio:
	@scripts/bootstrap.sh
	@.venv/bin/prefstudio $(ARGS)

test:
	@scripts/bootstrap.sh test
	@.venv/bin/python -m pytest -n 2 --dist loadfile --durations=30 $(PYTEST_ARGS)

lint:
	@.venv/bin/ruff check studio trainers store tests bench
	@.venv/bin/lint-imports
