# The two commands of the README. Both set up .venv on first use (scripts/bootstrap.sh).
.PHONY: studio test bench lint

studio:
	@scripts/bootstrap.sh
	@.venv/bin/prefstudio $(ARGS)

test:
	@scripts/bootstrap.sh test
	@.venv/bin/python -m pytest $(PYTEST_ARGS)

lint:
	@.venv/bin/ruff check studio trainers store tests bench
	@.venv/bin/lint-imports
