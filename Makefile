# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
.PHONY: demo test bootstrap lint bench bench-quick bench-backends mutate clean

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bootstrap:
	bash scripts/bootstrap.sh

lint: bootstrap
	.venv/bin/ruff check ferry tests e2e benchmarks
	.venv/bin/ruff format --check ferry tests e2e benchmarks
	.venv/bin/mypy

bench: bootstrap
	.venv/bin/python -m benchmarks.local

bench-quick: bootstrap
	.venv/bin/python -m benchmarks.local --quick

bench-backends: bootstrap
	bash tests/servers/install.sh
	.venv/bin/python -m benchmarks.backends

# Mutation testing of the engine's core (minutes to hours; not part of `make test`).
# Restrict it with mutant globs: make mutate MUTANTS='ferry.mover.backends.resume.journal.*'
mutate: bootstrap
	.venv/bin/python -m pip install -q -e '.[mutate]' --config-settings editable_mode=compat
	.venv/bin/mutmut run --max-children 2 $(MUTANTS)
	.venv/bin/mutmut results

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache mutants
