#!/usr/bin/env bash
# Build the browser playground (web/) into web/dist/: index.html, playground.js, playground.css.
# Idempotent and quick when nothing changed: dependencies are installed (`npm ci`, exactly the
# versions in web/package-lock.json) only when web/node_modules is missing or older than the lock,
# and the bundle is rebuilt only when a source file, the build script or the lock is newer than it.
#
#   scripts/build_web.sh           # as needed
#   scripts/build_web.sh --force   # rebuild even if dist/ looks up to date
set -euo pipefail
cd "$(dirname "$0")/../web"

say() { printf '\033[1;34m[web]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[web]\033[0m %s\n' "$*" >&2; exit 1; }

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) die "unknown argument: $1 (usage: scripts/build_web.sh [--force])" ;;
esac

command -v node >/dev/null 2>&1 ||
  die "node is not installed: install Node.js >= 18 (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 ||
  die "npm is not installed: install it (Debian: apt-get install npm)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] ||
  die "node $(node --version) is too old: the playground build needs Node.js >= 18"

# npm writes node_modules/.package-lock.json on every install; it is the install's timestamp.
installed=node_modules/.package-lock.json
if [ ! -f "$installed" ] || [ package-lock.json -nt "$installed" ]; then
  say "installing the playground's npm dependencies (npm ci)"
  # No install scripts: esbuild's only one (a postinstall check) is not needed, since the
  # platform binary comes as an optional dependency, and the lock pins every package.
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  touch "$installed"
fi

stamp=dist/playground.js
stale=$force
for out in dist/index.html dist/playground.js dist/playground.css; do
  [ -f "$out" ] || stale=1
done
sources=(src build.mjs package.json package-lock.json tsconfig.json)
if [ "$stale" -eq 0 ] && [ -n "$(find "${sources[@]}" -newer "$stamp" -print -quit)" ]; then
  stale=1
fi
if [ "$stale" -eq 1 ]; then
  say "building web/dist"
  node build.mjs
else
  say "web/dist is up to date"
fi
