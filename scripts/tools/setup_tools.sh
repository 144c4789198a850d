#!/usr/bin/env bash
# Install the offline toolchain callplane's deploy tests need; idempotent, and instant once built.
#
#   scripts/tools/setup_tools.sh [--force] [pulumi] [livekit] [redis] [postgres]   (default: all four)
#
# * pulumi:  the Pulumi CLI, built from the Go module proxy (pkg/v3 wrapped by scripts/tools/pulumi),
#            our small Python language host (scripts/tools/pulumi/cmd/pulumi-language-python), the
#            two Python shims from the sdk/v3 module (program executor, dynamic-provider plugin) and
#            our wrapper in front of the latter (scripts/tools/pulumi/pulumi-resource-pulumi-python).
# * livekit: livekit-server, built from the Go module proxy.
# * redis:   redis-server from Debian (apt-get), if it is not on PATH.
# * postgres: PostgreSQL (initdb, postgres) from Debian (apt-get), if initdb is not on PATH or
#            under /usr/lib/postgresql/*/bin. The local stack and the tests start their own
#            server (callplane_dev/postgres.py), never the system service.
#
# Binaries go to ${CALLPLANE_TOOLS:-$HOME/.cache/callplane/tools}/bin, with one stamp file per
# component under stamps/: a machine builds once (about 10 min on 2 cores for the CLI), then this
# script returns in milliseconds. `source scripts/tools/env.sh` puts the bin dir on PATH.
set -euo pipefail

PULUMI_VERSION=v3.274.0   # newest pkg/v3 tag the proxy serves next to the Python SDK 3.272.0 (3.272/3.273 are not served)
LIVEKIT_VERSION=v1.13.5   # newest livekit-server without replace directives (v1.13.6+ replace pion with forks the proxy lacks)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="${CALLPLANE_TOOLS:-$HOME/.cache/callplane/tools}"
BIN="$TOOLS/bin"
STAMPS="$TOOLS/stamps"

say() { printf '[tools] %s\n' "$*" >&2; }

force=0
want=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    pulumi | livekit | redis | postgres) want+=("$arg") ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) say "unknown argument: $arg"; exit 2 ;;
  esac
done
((${#want[@]})) || want=(pulumi livekit redis postgres)

# Stamp keys: what a component was built from. A changed key rebuilds only that component.
hash_files() { cat "$@" | sha256sum | cut -c1-16; }
key_pulumi_cli() { echo "pulumi-cli $PULUMI_VERSION $(hash_files "$HERE/pulumi/go.mod" "$HERE/pulumi/go.sum")"; }
key_pulumi_host() {
  echo "pulumi-host $PULUMI_VERSION $(hash_files "$HERE/pulumi/go.mod" "$HERE/pulumi/go.sum" \
    "$HERE/pulumi/cmd/pulumi-language-python/main.go" "$HERE/pulumi/pulumi-resource-pulumi-python")"
}
key_livekit() { echo "livekit-server $LIVEKIT_VERSION"; }

# fresh STAMP KEY BINARY... : true when the stamp matches and every binary is there.
fresh() {
  local stamp="$STAMPS/$1" key="$2"; shift 2
  ((force)) && return 1
  [[ -f "$stamp" && "$(<"$stamp")" == "$key" ]] || return 1
  local b
  for b in "$@"; do [[ -x "$BIN/$b" ]] || return 1; done
}

needs_work() {
  local c
  for c in "${want[@]}"; do
    case "$c" in
      pulumi)
        fresh pulumi-cli "$(key_pulumi_cli)" pulumi || return 0
        fresh pulumi-host "$(key_pulumi_host)" pulumi-language-python pulumi-language-python-exec \
          pulumi-resource-pulumi-python ../libexec/pulumi-resource-pulumi-python || return 0 ;;
      livekit) fresh livekit "$(key_livekit)" livekit-server || return 0 ;;
      redis) command -v redis-server >/dev/null 2>&1 || return 0 ;;
      postgres) have_postgres || return 0 ;;
    esac
  done
  return 1
}

# Debian installs the server binaries under /usr/lib/postgresql/VERSION/bin, off PATH.
have_postgres() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# Fast path: everything is in place.
needs_work || exit 0

mkdir -p "$BIN" "$STAMPS"
BUILD_TMP="$(mktemp -d "$TOOLS/.build.XXXXXX")"   # outputs land here first, then move into bin/
trap 'rm -rf "$BUILD_TMP"' EXIT
# One builder at a time per cache dir (parallel CI jobs, two shells); the others wait, then re-check.
exec 9>"$TOOLS/.lock"
flock 9
needs_work || exit 0

need_go() {
  command -v go >/dev/null 2>&1 || { say "error: the go command is needed to build $1 (Go >= 1.26)"; exit 1; }
}

# Go settings for every build: module proxy only, static binaries, no VCS stamping (the wrapper
# module sits inside the callplane git checkout).
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly"
GO_LDFLAGS_VERSION="-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION"

build_pulumi() {
  local mod="$HERE/pulumi" tmp="$BUILD_TMP" t0
  need_go pulumi
  if ! fresh pulumi-cli "$(key_pulumi_cli)" pulumi; then
    say "building pulumi $PULUMI_VERSION from the Go module proxy (about 10 minutes on 2 cores, once per machine)"
    t0=$SECONDS
    # Release flags (.goreleaser.yml): -trimpath, tags osusergo+grpcnotrace, version ldflag.
    (cd "$mod" && go build -trimpath -tags osusergo,grpcnotrace -ldflags "-s -w $GO_LDFLAGS_VERSION" \
      -o "$tmp/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
    mv -f "$tmp/pulumi" "$BIN/pulumi"
    key_pulumi_cli >"$STAMPS/pulumi-cli"
    say "pulumi built in $((SECONDS - t0)) s: $("$BIN/pulumi" version)"
  fi
  if ! fresh pulumi-host "$(key_pulumi_host)" pulumi-language-python pulumi-language-python-exec \
    pulumi-resource-pulumi-python ../libexec/pulumi-resource-pulumi-python; then
    say "building pulumi-language-python (callplane's language host) and installing the Python shims"
    (cd "$mod" && go build -trimpath -tags osusergo,grpcnotrace -ldflags "-s -w $GO_LDFLAGS_VERSION" \
      -o "$tmp/pulumi-language-python" ./cmd/pulumi-language-python)
    # The shims ship inside the sdk/v3 module zip; the module cache drops their execute bits.
    local sdk
    sdk="$(cd "$mod" && go mod download -json github.com/pulumi/pulumi/sdk/v3 |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [[ -f "$sdk/python/cmd/pulumi-language-python-exec" ]] || { say "error: sdk/v3 module not found ($sdk)"; exit 1; }
    install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
    # Upstream's dynamic-provider shim goes to libexec/, behind our wrapper (see its header).
    mkdir -p "$TOOLS/libexec"
    install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$TOOLS/libexec/pulumi-resource-pulumi-python"
    install -m 0755 "$mod/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
    mv -f "$tmp/pulumi-language-python" "$BIN/pulumi-language-python"
    key_pulumi_host >"$STAMPS/pulumi-host"
  fi
}

build_livekit() {
  local tmp="$BUILD_TMP" t0
  need_go livekit-server
  say "building livekit-server $LIVEKIT_VERSION from the Go module proxy (a few minutes, once per machine)"
  t0=$SECONDS
  # No replace directives in this version's go.mod, so `go install module/pkg@version` is valid;
  # go.sum checking goes through the checksum database as usual. The package is cmd/server.
  (cd "$tmp" && GOFLAGS=-buildvcs=false GOBIN="$tmp" go install -trimpath -ldflags "-s -w" \
    "github.com/livekit/livekit-server/cmd/server@$LIVEKIT_VERSION")
  mv -f "$tmp/server" "$BIN/livekit-server"
  key_livekit >"$STAMPS/livekit"
  say "livekit-server built in $((SECONDS - t0)) s: $("$BIN/livekit-server" --version 2>&1 | head -1)"
}

install_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  say "installing redis-server from Debian"
  local sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  # Whether the package's postinst starts a system service depends on the machine (here policy-rc.d
  # denies it); Debian's config binds 127.0.0.1:6379. Tests start their own redis-server anyway.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
}

install_postgres() {
  have_postgres && return 0
  say "installing postgresql from Debian"
  local sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  # The package creates the postgres user (the server refuses to run as root, so tests run as
  # root start it as that user) and may or may not start a system cluster on 5432, depending on
  # the machine's policy-rc.d; tests start their own server on a spare loopback port.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

for c in "${want[@]}"; do
  case "$c" in
    pulumi) build_pulumi ;;
    livekit) fresh livekit "$(key_livekit)" livekit-server || build_livekit ;;
    redis) install_redis ;;
    postgres) install_postgres ;;
  esac
done
say "ready in $BIN"
