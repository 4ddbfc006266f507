# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
.PHONY: demo test bootstrap lint bench bench-quick bench-backends clean

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

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
