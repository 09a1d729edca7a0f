// Package integration holds the end-to-end tests of domaincerts: they build a
// real Caddy with the plugin, run it as a subprocess on free loopback ports,
// drive it through the admin API and assert, with real TLS handshakes, which
// certificate it serves.
//
// They are a Go module of their own, so that their dependencies (Pebble,
// a Redis client) stay out of what the plugin's users build. Run them with
//
//	cd integration && go test ./...
//
// Set DOMAINCERTS_CADDY_BIN to a prebuilt binary (for example one built by
// xcaddy) to skip the build. The tests that need modules the plugin does
// not have (a Redis storage, in ./redisstorage) run ./testcaddy, built on
// first use. The package has no skipped tests: a missing tool (openssl,
// curl, redis-server) or a failed build fails the run.
package integration
