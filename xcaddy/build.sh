#!/usr/bin/env bash
# Builds Caddy with the domaincerts plugin from this checkout, with xcaddy,
# as an operator would (`xcaddy build <caddy version> --with <module>`).
#
#   xcaddy/build.sh [output path]      default output: ./caddy
#
# Environment: CADDY_VERSION (default v2.11.9), XCADDY_VERSION (default
# v0.4.5). Needs only Go and the Go module proxy.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$here/caddy"}
caddy_version=${CADDY_VERSION:-v2.11.9}
xcaddy_version=${XCADDY_VERSION:-v0.4.5}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cd "$here"
echo "building Caddy $caddy_version with github.com/domaincerts/caddy-domaincerts (xcaddy $xcaddy_version) -> $out" >&2
go run "github.com/caddyserver/xcaddy/cmd/xcaddy@$xcaddy_version" build "$caddy_version" \
	--with "github.com/domaincerts/caddy-domaincerts@v0.0.0=$here" \
	--output "$out"
