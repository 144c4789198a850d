#!/usr/bin/env bash
# Set everything up, then run the main job offline: a simulated conversation through the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
UV_PYTHON_DOWNLOADS=never exec uv run --frozen callplane demo "$@"
