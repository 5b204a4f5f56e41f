# The two commands of the README. Both set up .venv on first use (scripts/bootstrap.sh).
# `make test` runs the suite in one process and lists its 30 slowest setups and calls: the suite has a time
# budget. Two pytest-xdist workers (`PYTEST_ARGS="-n 2 --dist loadfile"`) were faster on a development machine
# but slower in CI, where the whole run, bootstrap included, must finish in 90 minutes.
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
