#!/usr/bin/env bash
# Install everything callplane needs on a fresh Debian machine; idempotent, and quick when all
# is already there. Debian packages: espeak-ng (the offline voice), sox, chromium (the browser
# tests drive it headless), Node.js and npm (the web playground's build, and Pyodide for the edge
# worker's tests); uv from PyPI; the project's Python environment from uv.lock (frozen, so CI and
# laptops resolve identically).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

need_apt=()
for pkg_bin in espeak-ng:espeak-ng sox:sox chromium:chromium nodejs:node npm:npm; do
  bin=${pkg_bin#*:}; pkg=${pkg_bin%%:*}
  command -v "$bin" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  say "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v uv >/dev/null 2>&1; then
  say "installing uv from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check uv || python3 -m pip install --quiet --user uv
  export PATH="$HOME/.local/bin:$PATH"
fi

# Use the machine's Python (>= 3.11); nothing is downloaded but packages.
export UV_PYTHON_DOWNLOADS=never
say "syncing the Python environment (uv sync --frozen --all-extras)"
uv sync --frozen --all-extras --quiet
# The browser playground (web/, livekit-client): npm ci and an esbuild bundle, only when changed.
bash scripts/build_web.sh
# Pyodide, the interpreter of Cloudflare's Python Workers, for the edge worker's tests
# (tests/edge_worker/test_pyodide.py): npm ci of its lock, only when it changed.
pyodide_dir=tests/edge_worker/pyodide
pyodide_installed=$pyodide_dir/node_modules/.package-lock.json
if [ ! -f "$pyodide_installed" ] || [ "$pyodide_dir/package-lock.json" -nt "$pyodide_installed" ]; then
  say "installing Pyodide for the edge worker's tests (npm ci in $pyodide_dir)"
  (cd "$pyodide_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  touch "$pyodide_installed"
fi
say "ready: $(uv run --frozen python --version), $(espeak-ng --version | head -c 40)"
