package caddymod

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/certsource"
)

func init() {
	caddy.RegisterModule(Manager{})
}

// Manager serves the certificates of the domaincerts app during TLS
// handshakes: the domain that best matches the SNI (exact name, then the
// wildcard one label up) and its attached or managed certificate. It reads
// memory only on a hit.
//
// It fails closed: a handshake whose SNI matches no domain, or whose domain
// has no usable certificate, fails at once (or gets the app's fallback
// certificate), so Caddy never asks an ACME issuer for a name that
// domaincerts does not own, even when the manager sits in a catch-all
// automation policy. A name without a domain (or no name) fails quietly,
// without a log line above DEBUG, so scanners cannot flood the log: the
// manager answers with an empty certificate, which CertMagic refuses (at
// DEBUG, through the HTTP server's error log) instead of asking its
// issuers. When the tls app's on-demand permission is
// tls.permission.domaincerts, which refuses every name, the manager answers
// "no certificate" instead, and the permission refuses it. A domain whose
// certificate is not there yet fails with an error, which CertMagic logs at
// ERROR. The manager is the last one Caddy asks for a name it does not
// know: list it after any other get_certificate manager of its policy.
type Manager struct {
	source *certsource.Source
	deny   *atomic.Bool // the app's denyOnDemand
}

// CaddyModule returns the Caddy module information.
func (Manager) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.get_certificate.domaincerts",
		New: func() caddy.Module { return new(Manager) },
	}
}

// Provision finds the domaincerts app, loading it if the config does not
// name it.
func (m *Manager) Provision(ctx caddy.Context) error {
	appIface, err := ctx.App("domaincerts")
	if err != nil {
		return fmt.Errorf("getting domaincerts app: %w", err)
	}
	app := appIface.(*App)
	if app.inst == nil {
		return errors.New("the domaincerts app failed to provision")
	}
	m.source = app.Source()
	m.deny = app.denyOnDemand
	return nil
}

// GetCertificate returns the certificate for a handshake.
func (m *Manager) GetCertificate(ctx context.Context, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	c, err := m.source.GetCertificate(ctx, hello)
	if errors.Is(err, certsource.ErrNoDomain) || errors.Is(err, certsource.ErrNoServerName) {
		if m.deny.Load() {
			// The permission refuses every name: CertMagic's next step
			// fails the handshake without an order and without an ERROR
			// line.
			return nil, nil
		}
		// CertMagic logs a manager's error at ERROR, and asks its issuers
		// after "no certificate" (Caddy allows them when a policy has
		// managers and no permission). It refuses an empty certificate
		// instead: the handshake fails, logged at DEBUG, and no one else
		// is asked. This relies on certmagic's fillCertFromLeaf, so
		// TestUnknownNamesQuiet (no WARN line, no ACME order) guards it.
		return new(tls.Certificate), nil
	}
	return c, err
}

// UnmarshalCaddyfile sets up the manager from Caddyfile tokens. Syntax:
//
//	get_certificate domaincerts
func (m *Manager) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume manager name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("unrecognized subdirective '%s'; get_certificate domaincerts takes no options", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ certmagic.Manager     = (*Manager)(nil)
	_ caddy.Provisioner     = (*Manager)(nil)
	_ caddyfile.Unmarshaler = (*Manager)(nil)
)
