package caddymod

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/domaincerts/caddy-domaincerts/domainstore"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the domaincerts app. It keeps the Domains and TLS Certificates
// that operators manage through the admin API (under /domaincerts/) in
// Caddy's configured storage, and indexes them in memory for the
// tls.get_certificate.domaincerts manager, which serves them by SNI.
//
// `"apps": {"domaincerts": {}}` is a complete configuration: uploads,
// domains and serving work with the defaults.
type App struct {
	// How many parsed certificates (with their unsealed private keys) are
	// kept in memory. A certificate is loaded from storage on its first
	// handshake and evicted, least recently used first, past this bound.
	// Default: 10000.
	CacheCapacity int `json:"cache_capacity,omitempty"`

	// The ID of an uploaded certificate (cert_...) to serve to handshakes
	// that match no domain, or whose domain has no usable certificate.
	// Default: none; such handshakes fail.
	FallbackCertificateID string `json:"fallback_certificate_id,omitempty"`

	// The authority of the default certificate management policy, which
	// domains created without a certificate get. Default: "letsencrypt".
	DefaultAuthority string `json:"default_authority,omitempty"`

	key  string
	inst *instance
	log  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "domaincerts",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision loads the domain store from Caddy's storage, or reuses the one
// already loaded by the running config.
func (a *App) Provision(ctx caddy.Context) error {
	a.log = ctx.Logger()
	if a.CacheCapacity == 0 {
		a.CacheCapacity = certsource.DefaultCacheCapacity
	}
	if a.DefaultAuthority == "" {
		a.DefaultAuthority = "letsencrypt"
	}
	st := ctx.Storage()
	if st == nil {
		return errors.New("no storage configured")
	}
	opts := domainstore.Options{
		Logger:           a.log.Named("store"),
		DefaultAuthority: a.DefaultAuthority,
	}
	key, inst, err := acquireInstance(ctx, st, opts, a.CacheCapacity, a.log.Named("source"))
	if err != nil {
		return fmt.Errorf("loading domain store: %w", err)
	}
	a.key, a.inst = key, inst
	a.inst.source.SetFallback(a.FallbackCertificateID)
	return nil
}

// Validate checks the configuration.
func (a *App) Validate() error {
	if a.CacheCapacity < 0 {
		return fmt.Errorf("cache_capacity must be positive, got %d", a.CacheCapacity)
	}
	if id := a.FallbackCertificateID; id != "" && !a.inst.store.CertificateExists(id) {
		return fmt.Errorf("fallback_certificate_id %q names no certificate; upload it first or remove the option", id)
	}
	return nil
}

// Start starts the app.
func (a *App) Start() error { return nil }

// Stop stops the app.
func (a *App) Stop() error { return nil }

// Store returns the domain store.
func (a *App) Store() *domainstore.Store { return a.inst.store }

// Source returns the certificate source.
func (a *App) Source() *certsource.Source { return a.inst.source }

// Cleanup releases the app's hold on the process-wide store. It is safe to
// call after a failed Provision.
func (a *App) Cleanup() error {
	if a.key == "" {
		return nil
	}
	_, err := instances.Delete(a.key)
	a.key = ""
	return err
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
