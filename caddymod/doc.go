// Package caddymod holds the Caddy modules of domaincerts: the app
// (domaincerts), the certificate manager (tls.get_certificate.domaincerts),
// the certificate loader (tls.certificates.domaincerts) and the admin API
// (admin.api.domaincerts). They are thin adapters: records and validation
// live in domainstore, certificate selection in certsource.
package caddymod
