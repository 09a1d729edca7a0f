// Package domainstore holds the records of domaincerts: Domains and TLS
// Certificates. It validates every write, persists records in a
// certmagic.Storage (the source of truth, one key per record, written
// atomically), and keeps the in-memory SNI index that the handshake path
// reads.
//
// Storage layout, below the prefix "domaincerts/":
//
//	certificates/<id>.json  certificate record (public material only)
//	certificates/<id>.key   private key, PKCS#8 PEM, then the certificate
//	                        chain (so that serving reads one file); its name
//	                        ends in ".key" so that caddy.storage.sealed
//	                        seals it
//	domains/<id>.json       domain record
//
// Every door into domaincerts (the admin API, caddy subcommands) calls the
// Store; errors are *dcerr.Error values with stable codes.
package domainstore
