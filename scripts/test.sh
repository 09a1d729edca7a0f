#!/usr/bin/env bash
# Runs every test of domaincerts, as CI does. Needs Go, gcc (for -race),
# openssl, curl and redis-server; fetches modules through the Go module
# proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=${GOFLAGS:--buildvcs=false}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "tools"
for tool in go gcc openssl curl redis-server; do
	command -v "$tool" >/dev/null || { echo "missing $tool: install it (see README)" >&2; exit 1; }
done
go version

step "go.mod"
# every `xcaddy build --with` this plugin inherits its go directive: it must
# not ask for more than Caddy itself does
ours=$(go list -m -f '{{.GoVersion}}')
caddys=$(go list -m -f '{{.GoVersion}}' github.com/caddyserver/caddy/v2)
if [ "$ours" != "$caddys" ]; then
	echo "go.mod says go $ours; Caddy needs go $caddys: use that (go mod edit -go=$caddys)" >&2
	exit 1
fi
# no test-only package (Pebble, the DNS test server) may be compiled into
# the plugin or its own tests; the integration tests are a module of their own
deps=$(go list -deps -test ./...)
if grep -q 'letsencrypt/pebble' <<<"$deps"; then
	echo "the plugin's packages import Pebble; keep test-only modules in integration/go.mod" >&2
	exit 1
fi

step "gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
# the integration tests are a module of their own (their test-only
# dependencies stay out of what the plugin's users build)
(cd integration && go vet ./...)

step "unit tests (race detector)"
go test -race -count=1 ./...

step "fuzz smoke runs"
./scripts/fuzz.sh

step "xcaddy build"
./xcaddy/build.sh "$work/caddy"
modules=$("$work/caddy" list-modules)
for id in domaincerts tls.get_certificate.domaincerts tls.certificates.domaincerts tls.permission.domaincerts caddy.storage.sealed admin.api.domaincerts http.handlers.domaincerts_api; do
	grep -qx "$id" <<<"$modules" || { echo "module $id missing from the xcaddy build" >&2; exit 1; }
done
"$work/caddy" build-info | grep -q 'github.com/domaincerts/caddy-domaincerts' || { echo "plugin missing from build-info" >&2; exit 1; }
"$work/caddy" domaincerts --help >/dev/null || { echo "the caddy domaincerts command is missing from the xcaddy build" >&2; exit 1; }

step "integration tests (real Caddy built by xcaddy, Pebble, DNS, TLS clients, Redis)"
# -v so that every test's verdict is visible; the check below fails the run
# if any integration test was skipped or too few ran
(cd integration && DOMAINCERTS_CADDY_BIN="$work/caddy" go test -count=1 -v -timeout 20m ./...) | tee "$work/integration.log"
if grep -q -- '--- SKIP' "$work/integration.log"; then
	echo "integration tests were skipped; that counts as a failure" >&2
	exit 1
fi
passed=$(grep -c -- '^--- PASS: Test' "$work/integration.log" || true)
# every top-level test function must have passed, so none can silently
# stop running
min=$(grep -h '^func Test[A-Z0-9_]' integration/*_test.go | grep -vc '^func TestMain(')
if [ "$passed" -lt "$min" ]; then
	echo "only $passed integration tests passed; expected at least $min" >&2
	exit 1
fi
echo "integration: $passed tests passed"

step "done"
echo "all tests passed"
