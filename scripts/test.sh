#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, types, unit, integration
# (real S3 API server, sshd, smbd) and cluster tests (a real control plane on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
source scripts/first_run.sh
first_run_notice test

bash scripts/bootstrap.sh
bash tests/servers/install.sh
bash e2e/cluster/build.sh >/dev/null
bash e2e/node/build.sh >/dev/null
bash e2e/node/image.sh >/dev/null

echo "== lint and types"
.venv/bin/ruff check ferry tests e2e benchmarks
.venv/bin/mypy

echo "== tests"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
echo "test.sh: finished in $(( $(date +%s) - start ))s with exit code $rc"
exit $rc
