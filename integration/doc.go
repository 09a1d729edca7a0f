// Package integration holds the end-to-end tests of domaincerts: they build a
// real Caddy with the plugin, run it as a subprocess on free loopback ports,
// drive it through the admin API and assert, with real TLS handshakes, which
// certificate it serves.
//
// Run them with
//
//	go test ./integration/...
//
// Set DOMAINCERTS_CADDY_BIN to a prebuilt binary (for example one built by
// xcaddy) to skip the build. The package has no skipped tests: a missing tool
// (openssl, curl) or a failed build fails the run.
package integration
