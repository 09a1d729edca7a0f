#!/usr/bin/env bash
# Builds Caddy with the plugin (xcaddy/build.sh) and runs it on the offline
# example config: local file storage sealed with a generated development
# key, Caddy's internal issuer; HTTPS on :8443, HTTP on :8080 and the admin
# API on localhost:2019 (DOMAINCERTS_HTTPS_PORT, DOMAINCERTS_HTTP_PORT and
# DOMAINCERTS_ADMIN change them). Data goes to ./.caddy-data (not your home
# directory).
#
#   xcaddy/run.sh [config]      default config: examples/Caddyfile
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
config=${1:-"$here/examples/Caddyfile"}
"$here/xcaddy/build.sh" "$here/caddy"
export XDG_DATA_HOME=${XDG_DATA_HOME:-"$here/.caddy-data/data"}
export XDG_CONFIG_HOME=${XDG_CONFIG_HOME:-"$here/.caddy-data/config"}
exec "$here/caddy" run --config "$config" --adapter caddyfile
