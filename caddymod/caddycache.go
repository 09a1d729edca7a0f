package caddymod

import (
	"sync"
	_ "unsafe" // for go:linkname

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/certsource"
)

// The tls app keeps the certificate cache that every handshake of Caddy
// consults before it asks a certificate manager in unexported package
// variables, and exports no handle to it (nor a way to remove a
// certificate from it). Hot certificates (certsource.Hot) are served from
// that cache, so that a handshake for them costs what one for a
// certificate Caddy loaded itself costs. If a Caddy release renames these
// variables, the linker binds these names to variables of their own, which
// stay nil: hot certificates then turn off (logged at start) and every
// handshake is answered by the manager. A release that changed their types
// would not be caught by the linker: TestCaddyCertCache, which finds a
// certificate the tls app loaded through caddyCertCache, fails on either,
// and go.mod pins the Caddy release it passes with.
var (
	//go:linkname caddytlsCertCache github.com/caddyserver/caddy/v2/modules/caddytls.certCache
	caddytlsCertCache *certmagic.Cache
	//go:linkname caddytlsCertCacheMu github.com/caddyserver/caddy/v2/modules/caddytls.certCacheMu
	caddytlsCertCacheMu sync.RWMutex
)

// caddyCertCache returns the tls app's certificate cache, or nil if the
// tls app has not made one.
func caddyCertCache() *certmagic.Cache {
	caddytlsCertCacheMu.RLock()
	defer caddytlsCertCacheMu.RUnlock()
	return caddytlsCertCache
}

// defaultCaddyCacheCapacity is the tls app's certificate cache capacity
// when its config sets none.
const defaultCaddyCacheCapacity = 10_000

// caddyCacheCapacity returns the capacity of the tls app's certificate
// cache in the running config.
func caddyCacheCapacity(ctx caddy.Context) int {
	appIface, err := ctx.AppIfConfigured("tls")
	if err != nil {
		return defaultCaddyCacheCapacity
	}
	if t, ok := appIface.(*caddytls.TLS); ok && t.Cache != nil && t.Cache.Capacity > 0 {
		return t.Cache.Capacity
	}
	return defaultCaddyCacheCapacity
}

// startHot sizes the instance's hot certificates for this config, and
// starts them on the first start that has them on.
func (a *App) startHot() {
	n := a.hotCapacity()
	cache := caddyCertCache()
	if h := a.inst.source.Hot(); h != nil {
		if h.Cache() == cache {
			h.SetCapacity(n)
			return
		}
		h.Close() // the tls app made a new cache: start over in that one
	}
	if n == 0 {
		return
	}
	if cache == nil {
		a.log.Warn("hot certificates are off: Caddy's certificate cache is not reachable; every handshake is answered by the manager")
		return
	}
	certsource.NewHot(a.inst.source, cache, n, a.log.Named("hot"))
}

// hotCapacity is how many certificates hot_certificates allows.
func (a *App) hotCapacity() int {
	switch {
	case a.HotCertificates < 0:
		return 0
	case a.HotCertificates > 0:
		return min(a.HotCertificates, a.CacheCapacity)
	}
	return min(caddyCacheCapacity(a.ctx)/2, a.CacheCapacity)
}
