#!/usr/bin/env bash
# Set everything up, then run every check CI runs: lint, format, types, tests.
# The tests also need the real Pulumi CLI and livekit-server (built once per machine from the Go
# module proxy into ~/.cache/callplane/tools; the first build takes 15-30 minutes) and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/tools/setup_tools.sh
# shellcheck source=tools/env.sh
. scripts/tools/env.sh
export UV_PYTHON_DOWNLOADS=never
echo "== ruff check" >&2;   uv run --frozen ruff check .
echo "== ruff format" >&2;  uv run --frozen ruff format --check .
echo "== mypy" >&2;         uv run --frozen mypy
echo "== go vet, gofmt (bench/loadgen)" >&2
(cd bench/loadgen && go vet ./... && unformatted=$(gofmt -l .) && [ -z "$unformatted" ]) \
  || { echo "bench/loadgen: go vet failed or gofmt would change: ${unformatted:-}" >&2; exit 1; }
echo "== pytest" >&2;       uv run --frozen pytest "$@"
