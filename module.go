// Package domaincerts gives Caddy runtime-managed TLS certificates for many
// customer domains: Domains map to uploaded certificate bundles or to ACME
// certificates that CertMagic obtains and renews, private keys are sealed at
// rest with NaCl, and everything is driven through Caddy's admin API.
//
// Importing this package (as xcaddy does with --with) registers every module
// of the plugin:
//
//	domaincerts                      the app: domain store, index and issuance
//	tls.get_certificate.domaincerts  serves certificates by SNI at handshake time
//	tls.certificates.domaincerts     loads attached uploads into Caddy's cache
//	caddy.storage.sealed             seals private keys at rest (NaCl secretbox)
//	admin.api.domaincerts            the admin API under /domaincerts/
//	http.handlers.domaincerts_api    the same API on a site route (and ngrok's dialect)
//
// and the `caddy domaincerts` command.
package domaincerts

import (
	// the app, the manager, the loader and the admin API
	_ "github.com/domaincerts/caddy-domaincerts/caddymod"
	// caddy.storage.sealed and the seal-keygen and seal-reseal commands
	_ "github.com/domaincerts/caddy-domaincerts/sealedstorage"
	// the domaincerts global option and the domaincerts_load and
	// domaincerts_api directives
	_ "github.com/domaincerts/caddy-domaincerts/caddyfile"
	// the caddy domaincerts command
	_ "github.com/domaincerts/caddy-domaincerts/cli"
)
