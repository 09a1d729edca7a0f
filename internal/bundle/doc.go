// Package bundle validates uploaded TLS certificate bundles: a PEM certificate
// chain (leaf first, then each issuer) and the PEM private key of its leaf.
//
// It is pure Go with no Caddy imports so that it can be unit-tested, fuzzed
// and benchmarked alone. Every rejection is a *dcerr.Error whose code follows
// the admin API contract's "Order of upload checks": the first failing check
// decides the code. Messages say what was wrong and what to do; they never
// carry PEM text or key material.
package bundle
