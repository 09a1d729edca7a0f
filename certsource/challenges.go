package certsource

import (
	"context"
	"errors"
	"path"
	"strings"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/storagewrap"
)

// HTTP-01 and TLS-ALPN-01 across instances.
//
// CertMagic's distributed solvers store each challenge of an order under
// the ordering issuer's key, acme/<issuer key>/challenge_tokens/<name>.json,
// so that any instance on the storage can answer it. But Caddy's tls app
// answers a validation request with the challenges it finds under the
// issuer keys of its own automation policies only, and the app's
// authorities are not among them (unless a policy happens to name the same
// CA). So the storage of the app's CertMagic configs writes each challenge
// also under the issuer keys that Caddy's policies use: whichever instance
// the CA reaches then answers it, from storage.

// ChallengeMirror returns storage as the app's CertMagic configs should
// use it: challenge data stored under one ACME issuer's key is also stored
// (and deleted) under each of issuerKeys, the keys of the ACME issuers of
// Caddy's own automation policies. Everything else passes through.
func ChallengeMirror(storage certmagic.Storage, issuerKeys []string) certmagic.Storage {
	if len(issuerKeys) == 0 {
		return storage
	}
	m := &challengeMirror{Storage: storage}
	for _, k := range issuerKeys {
		m.prefixes = append(m.prefixes, path.Join("acme", certmagic.StorageKeys.Safe(k)))
	}
	return storagewrap.Match(m, storage)
}

type challengeMirror struct {
	certmagic.Storage
	prefixes []string // "acme/<safe issuer key>"
}

// mirrors returns the other keys of a challenge token key, or nil for any
// other key.
func (m *challengeMirror) mirrors(key string) []string {
	parts := strings.SplitN(key, "/", 4)
	if len(parts) != 4 || parts[0] != "acme" || parts[2] != "challenge_tokens" {
		return nil
	}
	own := parts[0] + "/" + parts[1]
	var out []string
	for _, p := range m.prefixes {
		if p != own {
			out = append(out, p+"/challenge_tokens/"+parts[3])
		}
	}
	return out
}

// Store stores value, and a challenge under the mirror keys too.
func (m *challengeMirror) Store(ctx context.Context, key string, value []byte) error {
	if err := m.Storage.Store(ctx, key, value); err != nil {
		return err
	}
	for _, k := range m.mirrors(key) {
		if err := m.Storage.Store(ctx, k, value); err != nil {
			return err
		}
	}
	return nil
}

// Delete deletes key, and a challenge's mirrors too.
func (m *challengeMirror) Delete(ctx context.Context, key string) error {
	var errs []error
	for _, k := range append(m.mirrors(key), key) {
		errs = append(errs, m.Storage.Delete(ctx, k))
	}
	return errors.Join(errs...)
}

// String names the storage it wraps.
func (m *challengeMirror) String() string {
	if s, ok := m.Storage.(interface{ String() string }); ok {
		return s.String()
	}
	return "challenge mirror"
}
