#!/usr/bin/env bash
# Runs every native fuzz target of the module for FUZZTIME each (default
# 20000 inputs: a count, not a duration, because a duration shorter than the
# baseline coverage run on a busy machine fails with "context deadline
# exceeded").
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-20000x}
n=0
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "fuzz: $pkg $target ($fuzztime)"
		if ! out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1); then
			grep -v '^fuzz: elapsed' <<<"$out" >&2
			exit 1
		fi
		n=$((n + 1))
	done
done
if [ "$n" -lt 12 ]; then
	echo "fuzz: only $n targets found; expected at least 12" >&2
	exit 1
fi
echo "fuzz: $n targets ran for $fuzztime each"
