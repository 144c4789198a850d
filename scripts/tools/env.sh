# Source me (bash or sh): puts the tools built by scripts/tools/setup_tools.sh on PATH and keeps the
# Pulumi CLI offline. Changes nothing else; safe to source more than once.
#
#   . scripts/tools/env.sh
#   export PULUMI_BACKEND_URL=file:///some/dir PULUMI_CONFIG_PASSPHRASE=...   # per test / stack

CALLPLANE_TOOLS_BIN="${CALLPLANE_TOOLS:-$HOME/.cache/callplane/tools}/bin"
case ":$PATH:" in
  *":$CALLPLANE_TOOLS_BIN:"*) ;;
  *) PATH="$CALLPLANE_TOOLS_BIN:$PATH" ;;
esac
export PATH CALLPLANE_TOOLS_BIN

# No version check against the Pulumi service at each command (a DNS lookup that only times out here).
export PULUMI_SKIP_UPDATE_CHECK=true
# Never download resource/language plugins; the bin dir above holds everything a Python program with
# dynamic providers needs (pulumi-language-python, pulumi-resource-pulumi-python).
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
# Do not resolve package names through the Pulumi registry service.
export PULUMI_DISABLE_REGISTRY_RESOLVE=true
# No warning from the file:// (DIY) backend about legacy stack files next to project-scoped ones.
export PULUMI_DIY_BACKEND_NO_LEGACY_WARNING=true
