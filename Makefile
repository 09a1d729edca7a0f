# The two set-up commands of the README:
#   make run    build Caddy with the plugin (xcaddy) and run the offline example
#   make test   every check CI runs: format, vet, unit tests with -race,
#               fuzz smoke runs, the real-Caddy integration tests against
#               an xcaddy-built binary, and the benchmark tool's smoke run
.PHONY: run build test bench fuzz

run:
	./xcaddy/run.sh

build:
	./xcaddy/build.sh

test:
	./scripts/test.sh

# the hot-path benchmarks whose numbers the README reports
bench:
	go test -run '^$$' -bench . -benchmem ./internal/sniindex/ ./certsource/ ./internal/seal/ ./internal/bundle/ ./sealedstorage/

# longer fuzzing of every parser: make fuzz FUZZTIME=5m
FUZZTIME ?= 1m
fuzz:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh
