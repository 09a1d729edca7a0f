package caddymod

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
)

func init() {
	caddy.RegisterModule(Loader{})
}

// Loader loads uploaded certificates of the domaincerts app into Caddy's
// own certificate cache when the config loads. Each element selects
// certificates: a domain name (its attached uploaded certificate) or a
// certificate ID (cert_...). An empty list loads the uploaded certificate
// of every domain that has one.
//
// Caddy's cache is consulted before any tls.get_certificate manager, and
// loaders run only at config load: a certificate loaded this way is served
// until the next config reload even if it is detached, swapped or deleted
// through the API in the meantime. Use it only for certificates that rarely
// change; the manager (tls.get_certificate.domaincerts) serves API changes
// at once and needs no loader.
type Loader []string

// CaddyModule returns the Caddy module information.
func (Loader) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.certificates.domaincerts",
		New: func() caddy.Module { return new(Loader) },
	}
}

// loaderStore is the store of the config being loaded. A slice type has
// no room for state, and the Caddyfile adapter needs LoadCertificates on
// the value; the tls app calls it right after provisioning its loaders,
// and Caddy loads one config at a time.
var loaderStore atomic.Pointer[domainstore.Store]

// Provision finds the domaincerts app, loading it first if needed, so that
// its store is ready when the tls app asks for certificates.
func (l *Loader) Provision(ctx caddy.Context) error {
	appIface, err := ctx.App("domaincerts")
	if err != nil {
		return fmt.Errorf("getting domaincerts app: %w", err)
	}
	loaderStore.Store(appIface.(*App).Store())
	return nil
}

// LoadCertificates returns the selected certificates with their keys.
func (l Loader) LoadCertificates() ([]caddytls.Certificate, error) {
	store := loaderStore.Load()
	if store == nil {
		return nil, fmt.Errorf("loader not provisioned")
	}
	ids, err := l.selectIDs(store)
	if err != nil {
		return nil, err
	}
	ctx := context.Background() // the tls app gives LoadCertificates no context
	var certs []caddytls.Certificate
	for _, id := range ids {
		tc, err := store.LoadKeyPair(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("loading certificate %s: %w", id, err)
		}
		certs = append(certs, caddytls.Certificate{Certificate: *tc, Tags: []string{"domaincerts", id}})
	}
	caddy.Log().Named("tls.certificates.domaincerts").Info("loaded uploaded certificates into caddy's cache",
		zap.Int("count", len(certs)))
	return certs, nil
}

// selectIDs resolves the loader's selectors to certificate IDs.
func (l Loader) selectIDs(store *domainstore.Store) ([]string, error) {
	seen := make(map[string]bool)
	var ids []string
	add := func(id string) {
		if id != "" && !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	if len(l) == 0 {
		for _, e := range store.Entries() {
			if !e.Managed {
				add(e.CertificateID)
			}
		}
		return ids, nil
	}
	for _, sel := range l {
		if store.CertificateExists(sel) {
			add(sel)
			continue
		}
		d, ok := store.DomainByName(context.Background(), sel)
		if !ok {
			return nil, fmt.Errorf("%q is neither a certificate ID nor a registered domain", sel)
		}
		if d.CertificateID == "" {
			return nil, fmt.Errorf("domain %s has no certificate to load", d.Domain)
		}
		add(d.CertificateID)
	}
	return ids, nil
}

// UnmarshalCaddyfile sets up the loader from Caddyfile tokens. Syntax:
//
//	domaincerts [<domain or cert_id>...]
func (l *Loader) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume loader name
	*l = append(*l, d.RemainingArgs()...)
	if d.NextBlock(0) {
		return d.Errf("unrecognized subdirective '%s'", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddytls.CertificateLoader = (*Loader)(nil)
	_ caddy.Provisioner          = (*Loader)(nil)
	_ caddyfile.Unmarshaler      = (*Loader)(nil)
)
