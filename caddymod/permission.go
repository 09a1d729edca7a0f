package caddymod

import (
	"context"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

func init() {
	caddy.RegisterModule(Permission{})
}

// Permission is an on-demand TLS permission module that allows no name:
// in a Caddy whose on-demand certificates all come from the domaincerts
// manager, it states that Caddy's own issuers must never be asked for a
// certificate during a handshake.
//
// The manager fails closed without it (it never lets a handshake fall
// through to issuance), but then CertMagic logs every handshake for an
// unknown name at ERROR. With this permission the manager answers "no
// certificate" for such names, CertMagic asks the permission, which
// refuses at DEBUG level, and the handshake fails as fast, unlogged. It
// also quiets the warning Caddy logs at every config load for a catch-all
// policy with a certificate manager and no permission module. Caddy has
// one on-demand permission for the whole tls app: do not use this one if
// other sites get certificates on demand.
//
// Caddyfile: `on_demand_tls { permission domaincerts }`. JSON:
// "tls": {"automation": {"on_demand": {"permission": {"module": "domaincerts"}}}}.
type Permission struct{}

// CaddyModule returns the Caddy module information.
func (Permission) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.permission.domaincerts",
		New: func() caddy.Module { return new(Permission) },
	}
}

// Provision tells the domaincerts app of this config that the tls app's
// on-demand permission refuses every name.
func (Permission) Provision(ctx caddy.Context) error {
	app, err := ctx.App("domaincerts")
	if err != nil {
		return fmt.Errorf("getting domaincerts app: %w", err)
	}
	app.(*App).denyOnDemand.Store(true)
	return nil
}

// CertificateAllowed refuses every name.
func (Permission) CertificateAllowed(_ context.Context, name string) error {
	return fmt.Errorf("%w: certificates for %s come only from the domaincerts manager", caddytls.ErrPermissionDenied, name)
}

// UnmarshalCaddyfile sets up the module from `permission domaincerts`,
// which takes no arguments.
func (p *Permission) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("permission domaincerts takes no options")
	}
	return nil
}

// Interface guards
var (
	_ caddytls.OnDemandPermission = Permission{}
	_ caddy.Provisioner           = Permission{}
	_ caddyfile.Unmarshaler       = (*Permission)(nil)
)
