# The two commands of the README. Both set up .venv on first use (scripts/bootstrap.sh).
# `make test` lists its 30 slowest setups and calls: the suite has a time budget (~25 min on 2 cores).
.PHONY: studio test bench lint

studio:
	@scripts/bootstrap.sh
	@.venv/bin/prefstudio $(ARGS)

test:
	@scripts/bootstrap.sh test
	@.venv/bin/python -m pytest --durations=30 $(PYTEST_ARGS)

lint:
	@.venv/bin/ruff check studio trainers store tests bench
	@.venv/bin/lint-imports
