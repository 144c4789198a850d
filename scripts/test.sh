#!/usr/bin/env bash
# Set everything up, then run every check CI runs: lint, format, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export UV_PYTHON_DOWNLOADS=never
echo "== ruff check" >&2;   uv run --frozen ruff check .
echo "== ruff format" >&2;  uv run --frozen ruff format --check .
echo "== mypy" >&2;         uv run --frozen mypy
echo "== pytest" >&2;       uv run --frozen pytest "$@"
