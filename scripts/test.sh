#!/usr/bin/env bash
# Runs every check the project holds itself to. Called by `./run test` after setup.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "== test servers' packages"
bash scripts/test-deps.sh
echo "== ruff"
uv run --frozen ruff check src tests bench
uv run --frozen ruff format --check src tests bench
echo "== mypy"
uv run --frozen mypy
echo "== import contracts"
uv run --frozen lint-imports
echo "== pytest"
workers=$(python3 -c 'import os; print(max(2, min(4, os.cpu_count() or 2)))')
# Branch coverage of the code the tests run in their own processes (not the programs they
# start), printed at the end: the total and the least covered modules. No threshold yet.
uv run --frozen pytest -n "$workers" --dist loadgroup \
  --cov=safehold --cov-branch --cov-report= "$@"
echo "== coverage (branches included; the CLI's own processes not counted), least covered first"
report=$(uv run --frozen coverage report --skip-covered --sort=cover --precision=1)
printf '%s\n' "$report" | sed -n '1,22p'
echo "total: $(uv run --frozen coverage report --format=total --precision=1) %"
