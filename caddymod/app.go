package caddymod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/domaincerts/caddy-domaincerts/domainstore"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the domaincerts app. It keeps the Domains and TLS Certificates
// that operators manage through the admin API (under /domaincerts/) in
// Caddy's configured storage, indexes them in memory for the
// tls.get_certificate.domaincerts manager, which serves them by SNI, and
// obtains and renews certificates for managed domains with CertMagic.
//
// `"apps": {"domaincerts": {}}` is a complete configuration: uploads,
// domains and serving work with the defaults, and managed domains get
// certificates from Let's Encrypt.
type App struct {
	// How many parsed uploaded certificates (with their unsealed private
	// keys) are kept in memory. A certificate is loaded from storage on its
	// first handshake and evicted, least recently used first, past this
	// bound. Default: 10000.
	CacheCapacity int `json:"cache_capacity,omitempty"`

	// The most memory, in bytes, that cached uploaded certificates may
	// take, as estimated from each one's key type and size and its leaf's
	// size: an RSA-2048 certificate takes about 7 KB, an ECDSA P-256 one
	// about 3 KB, intermediates shared between them not counted. Past it,
	// certificates are evicted as past cache_capacity; whichever bound is
	// reached first applies. Use it to size the cache by memory when the
	// fleet mixes key types. Default: 0, no bound but cache_capacity.
	CacheMemory int64 `json:"cache_memory,omitempty"`

	// How many uploaded certificates are served straight from Caddy's own
	// certificate cache, which every handshake consults before it asks
	// a certificate manager: a handshake for one of them costs what a
	// handshake for a certificate Caddy loaded itself costs. A certificate
	// enters on a handshake that finds it in this plugin's cache (its
	// first after its upload, its second after it was read from storage)
	// when each name it holds is a domain (not a wildcard) that serves it,
	// and leaves on any change of those
	// domains or of the certificate, or when it leaves this plugin's cache
	// (so it never takes memory beyond cache_capacity and cache_memory).
	// They count toward the capacity of Caddy's cache (the tls app's
	// "cache": {"capacity"}, default 10000), where certificates that Caddy
	// manages itself must keep room. Default: 0, half of that capacity and
	// at most cache_capacity; -1 turns it off.
	HotCertificates int `json:"hot_certificates,omitempty"`

	// The ID of an uploaded certificate (cert_...) to serve to handshakes
	// that match no domain, or whose domain has no usable certificate.
	// Default: none; such handshakes fail.
	FallbackCertificateID string `json:"fallback_certificate_id,omitempty"`

	// The issuers that management policies name in their "authority",
	// keyed by that name. Each is a tls.issuance module, e.g.
	// {"module": "acme", "ca": "https://...", "email": "...",
	// "trusted_roots_pem_files": [...], "external_account": {...}} or
	// {"module": "internal"}. ACME issuers answer HTTP-01 and TLS-ALPN-01
	// challenges on Caddy's own HTTP and HTTPS ports unless they name
	// others. Default: {"letsencrypt": {"module": "acme"}}.
	Issuers map[string]json.RawMessage `json:"issuers,omitempty" caddy:"namespace=tls.issuance inline_key=module"`

	// The authority of the default management policy, which domains
	// created without a certificate get. It must name one of Issuers.
	// Default: "letsencrypt", or the only issuer when there is one.
	DefaultAuthority string `json:"default_authority,omitempty"`

	// The operator's own DNS zones. Domains at or below them need no
	// CNAME (their cname_target is null); all others must CNAME to their
	// cname_target before a certificate is ordered.
	Zones []string `json:"zones,omitempty"`

	// Which domains outside zones get an acme_challenge_cname_target:
	// "wildcards" (the default; a wildcard can be issued only through
	// DNS-01) or "all". With "all", a customer can point
	// _acme-challenge.<domain> at its target and get the certificate
	// through DNS-01 (challenge_zone, served by dns_server or written by
	// dns_provider) before moving any traffic to the edge; the traffic
	// CNAME (or edge_addresses) still works on its own.
	DelegateDNS01 string `json:"delegate_dns01,omitempty"`

	// The edge's public IP addresses. A domain outside zones whose CNAME
	// to its cname_target is not in place also passes the DNS check when
	// it has A/AAAA records and all of them are among these: a zone apex
	// (example.com) cannot be a CNAME. Default: none (only the CNAME
	// passes).
	EdgeAddresses []string `json:"edge_addresses,omitempty"`

	// The host that customer domains must CNAME to, the same for all.
	// Default: none (see cname_zone).
	CNAMETarget string `json:"cname_target,omitempty"`

	// A zone under which each customer domain gets its own CNAME target,
	// "<unique label>.<cname_zone>". Ignored when cname_target is set.
	// With neither, customer domains need no CNAME.
	CNAMEZone string `json:"cname_zone,omitempty"`

	// The zone under which wildcard customer domains get their
	// acme_challenge_cname_target: "_acme-challenge.<base>" must CNAME to
	// "<unique label>.<challenge_zone>", where the DNS-01 TXT record is
	// written (by the built-in DNS server, or the dns_provider). Required
	// to manage wildcards outside the operator's zones.
	ChallengeZone string `json:"challenge_zone,omitempty"`

	// The built-in authoritative DNS server for challenge_zone, which
	// answers DNS-01 TXT queries from records kept in Caddy's storage, so
	// every instance on that storage answers alike. Default: off.
	DNSServer *DNSServerConfig `json:"dns_server,omitempty"`

	// A DNS provider module (dns.providers.*) that writes DNS-01 TXT
	// records, in challenge_zone (customer domains) and in zones (the
	// operator's wildcards), instead of the built-in server. CertMagic's
	// DNS-01 solver writes each record at its name, then waits until the
	// record resolves (through resolvers, if set; else at the zone's
	// authoritative servers). Default: none; then, without
	// dns_server, the tls app's global "dns" provider, if configured.
	DNSProviderRaw json.RawMessage `json:"dns_provider,omitempty" caddy:"namespace=dns.providers inline_key=name"`

	// The TTL of DNS-01 TXT records written through a DNS provider.
	// Default: the provider's.
	DNSTTL caddy.Duration `json:"dns_ttl,omitempty"`

	// How long to wait after a DNS provider wrote a TXT record before
	// checking that it propagated. Default: 0.
	PropagationDelay caddy.Duration `json:"propagation_delay,omitempty"`

	// How long to wait for a TXT record written through a DNS provider to
	// resolve (see dns_provider); -1 (any negative
	// value) skips the check. Default: CertMagic's (2m).
	PropagationTimeout caddy.Duration `json:"propagation_timeout,omitempty"`

	// DNS resolvers ("host:port") that check customer CNAMEs. Default:
	// the system's resolvers.
	Resolvers []string `json:"resolvers,omitempty"`

	// The first wait between attempts of a provisioning job that failed;
	// it doubles up to retry_max_interval. Default: 30s.
	RetryMinInterval caddy.Duration `json:"retry_min_interval,omitempty"`

	// The longest wait between attempts. Default: 1h.
	RetryMaxInterval caddy.Duration `json:"retry_max_interval,omitempty"`

	// How long a domain's first certificate may keep failing to be issued
	// before its job stops retrying: the status keeps the error, with
	// retries_at null, until POST /domaincerts/domains/{id}/provision or a
	// policy change asks again. A domain whose certificate is still valid
	// (a renewal, a policy change) keeps retrying until it expires.
	// Default: 168h (7 days).
	ProvisioningTimeout caddy.Duration `json:"provisioning_timeout,omitempty"`

	// How long before a certificate ends that it counts as expiring: an
	// upload that ends sooner is logged at WARN, and certificate_expiring
	// announces it (and a managed certificate whose renewal is overdue)
	// once a day until it is replaced or deleted; certificate_expired
	// follows once it has ended. Default: 720h (30 days).
	ExpiryWarning caddy.Duration `json:"expiry_warning,omitempty"`

	// How often this instance looks for certificates to announce as
	// expiring or expired. Each certificate is announced at most once a
	// UTC day by all the instances on the storage together, so this only
	// bounds how soon after entering expiry_warning a certificate is
	// announced. The first look comes at most a minute after start.
	// Default: 1h.
	ExpiryCheckInterval caddy.Duration `json:"expiry_check_interval,omitempty"`

	// How often managed certificates are checked for renewal. It takes
	// effect when the process first loads the app. Default: 10m.
	RenewCheckInterval caddy.Duration `json:"renew_check_interval,omitempty"`

	// The fraction of a certificate's lifetime left when its renewal
	// starts. Default: 1/3.
	RenewalWindowRatio float64 `json:"renewal_window_ratio,omitempty"`

	// How often to look for changes that other Caddy instances on the
	// same storage made. Each look reads one or two small keys of the
	// change journal, whatever the number of domains, and the changes
	// found. With the default, a change made through any instance is
	// served by every instance within 2 seconds. Default: 1s.
	SyncInterval caddy.Duration `json:"sync_interval,omitempty"`

	// How long an API write waits for the storage (the journal lock that
	// instances share, and the writes) before it fails with 503
	// STORAGE_UNAVAILABLE, changing nothing; also the bound of each
	// storage read. Default: 15s.
	StorageTimeout caddy.Duration `json:"storage_timeout,omitempty"`

	ctx         caddy.Context
	key         string
	inst        *instance
	acme        *certsource.ACME
	dnsProvider any
	// dnsProviderJSON is dns_provider's JSON, for the issuers that load it
	dnsProviderJSON json.RawMessage
	// globalDNS is set in Start when the tls app has a global "dns"
	// provider, which DNS-01 then uses unless dns_provider or dns_server
	// is configured
	globalDNS bool
	// events is this config's events app, for the events the app sends
	events *eventTarget
	// expiry announces expiring certificates while the app runs, until
	// stopExpiry
	expiry     *expiryWatch
	stopExpiry context.CancelFunc
	// running is acme once Start has set it, for the API's doors: an HTTP
	// handler may serve a request while the app starts
	running *atomic.Pointer[certsource.ACME]
	// denyOnDemand is set when this config's tls app has the domaincerts
	// on-demand permission, which refuses every name (see Manager)
	denyOnDemand *atomic.Bool
	dnsKey       string
	log          *zap.Logger
	storage      certmagic.Storage // this config's storage, applied in Start

	issuerNames []string                    // sorted
	issuerMods  map[string]certmagic.Issuer // provisioned, by name
	proxies     map[string]proxyFunc        // ACME issuers' network_proxy, by name
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "domaincerts",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision loads and provisions the issuers (so that `caddy validate`
// finds a bad one; their challenge ports are set in Start, when Caddy's
// ports are known), and loads the domain store from Caddy's storage, or
// reuses the one already loaded by the running config.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.denyOnDemand = new(atomic.Bool)
	a.running = new(atomic.Pointer[certsource.ACME])
	if a.ExpiryWarning == 0 {
		a.ExpiryWarning = caddy.Duration(DefaultExpiryWarning)
	}
	if a.ExpiryCheckInterval == 0 {
		a.ExpiryCheckInterval = caddy.Duration(DefaultExpiryCheckInterval)
	}
	evApp, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("getting events app: %w", err)
	}
	a.events = &eventTarget{events: evApp.(*caddyevents.App), ctx: ctx, log: ctx.Logger()}
	a.log = ctx.Logger()
	if a.CacheCapacity == 0 {
		a.CacheCapacity = certsource.DefaultCacheCapacity
	}
	if len(a.Issuers) == 0 {
		a.Issuers = maps.Clone(defaultIssuers)
	}
	a.issuerNames = slices.Sorted(maps.Keys(a.Issuers))
	if a.DefaultAuthority == "" {
		a.DefaultAuthority = "letsencrypt"
		if len(a.issuerNames) == 1 {
			a.DefaultAuthority = a.issuerNames[0]
		}
	}
	if a.DNSProviderRaw != nil {
		// kept: each DNS-01 issuer loads its own instance (Start)
		a.dnsProviderJSON = slices.Clone(a.DNSProviderRaw)
		val, err := ctx.LoadModule(a, "DNSProviderRaw")
		if err != nil {
			return fmt.Errorf("loading dns_provider: %w", err)
		}
		a.dnsProvider = val
	}
	st := ctx.Storage()
	if st == nil {
		return errors.New("no storage configured")
	}
	opts := domainstore.Options{
		Logger:           a.log.Named("store"),
		DefaultAuthority: a.DefaultAuthority,
		Authorities:      a.authorityNames(),
		SyncInterval:     time.Duration(a.SyncInterval),
		Timeout:          time.Duration(a.StorageTimeout),
	}
	key, inst, err := acquireInstance(ctx, st, opts, a.CacheCapacity, a.log.Named("source"))
	if err != nil {
		return fmt.Errorf("loading domain store: %w", err)
	}
	a.key, a.inst, a.storage = key, inst, st
	// Provision changes nothing the running config shares (the instance
	// outlives reloads): a config that fails to load must leave it as it
	// was. This config's settings are applied in Start.
	if id := a.FallbackCertificateID; id != "" {
		if _, err := inst.store.GetCertificate(ctx, id); err != nil {
			return fmt.Errorf("fallback_certificate_id %q: %w; upload it first or remove the option", id, err)
		}
	}
	if err := registerMetrics(ctx.GetMetricsRegistry(), inst); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	// last: an issuer may provision the tls app, whose get_certificate
	// manager then finds this app ready
	return a.loadIssuers(ctx)
}

func (a *App) authorityNames() []string { return slices.Clone(a.issuerNames) }

// minCacheMemory is the smallest cache_memory accepted: about 300 ECDSA
// certificates. Smaller values are most likely a unit mistake (512 meant
// as MiB) and would make every handshake load its certificate.
const minCacheMemory = 1 << 20

// Validate checks the configuration.
func (a *App) Validate() error {
	if a.CacheCapacity < 0 {
		return fmt.Errorf("cache_capacity must not be negative, got %d", a.CacheCapacity)
	}
	if a.HotCertificates < -1 {
		return fmt.Errorf("hot_certificates must be -1 (off), 0 (default) or a count, got %d", a.HotCertificates)
	}
	if a.CacheMemory < 0 {
		return fmt.Errorf("cache_memory must not be negative, got %d", a.CacheMemory)
	}
	if a.CacheMemory > 0 && a.CacheMemory < minCacheMemory {
		return fmt.Errorf("cache_memory %d bytes would hold only a few certificates; it is in bytes, e.g. 536870912 or, in a Caddyfile, 512MiB (at least 1MiB)", a.CacheMemory)
	}
	if !slices.Contains(a.issuerNames, a.DefaultAuthority) {
		return fmt.Errorf("default_authority %q names no issuer; configure it under issuers (have %v)", a.DefaultAuthority, a.authorityNames())
	}
	if a.ExpiryCheckInterval != 0 && time.Duration(a.ExpiryCheckInterval) < minExpiryCheckInterval {
		return fmt.Errorf("expiry_check_interval must be at least %v, got %v", minExpiryCheckInterval, time.Duration(a.ExpiryCheckInterval))
	}
	if a.ExpiryWarning < 0 {
		return fmt.Errorf("expiry_warning must not be negative, got %v", time.Duration(a.ExpiryWarning))
	}
	if a.RenewalWindowRatio < 0 || a.RenewalWindowRatio >= 1 {
		return fmt.Errorf("renewal_window_ratio must be between 0 and 1, got %v", a.RenewalWindowRatio)
	}
	if a.SyncInterval < 0 || (a.SyncInterval > 0 && time.Duration(a.SyncInterval) < 50*time.Millisecond) {
		return fmt.Errorf("sync_interval must be at least 50ms, got %s", time.Duration(a.SyncInterval))
	}
	if a.ProvisioningTimeout < 0 {
		return fmt.Errorf("provisioning_timeout must not be negative, got %s", time.Duration(a.ProvisioningTimeout))
	}
	if a.StorageTimeout < 0 {
		return fmt.Errorf("storage_timeout must not be negative, got %s", time.Duration(a.StorageTimeout))
	}
	if a.DNSServer != nil && a.ChallengeZone == "" {
		return errors.New("dns_server needs challenge_zone, the zone it answers for")
	}
	switch a.DelegateDNS01 {
	case "", "wildcards":
	case "all":
		if a.ChallengeZone == "" {
			return errors.New(`delegate_dns01 "all" needs challenge_zone, the zone of the _acme-challenge targets`)
		}
	default:
		return fmt.Errorf(`delegate_dns01 must be "wildcards" or "all", got %q`, a.DelegateDNS01)
	}
	for _, ip := range a.EdgeAddresses {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("edge_addresses: %q is not an IP address", ip)
		}
	}
	for _, z := range a.Zones {
		if strings.HasPrefix(z, "*") {
			return fmt.Errorf("zone %q: give the zone name without a wildcard", z)
		}
	}
	return nil
}

// Start loads the issuers, starts the built-in DNS server if configured,
// and starts managing the managed domains, taking over from the app of the
// previous config.
func (a *App) Start() error {
	authorities, err := a.loadAuthorities(a.ctx)
	if err != nil {
		return err
	}
	if err := a.startDNSServer(); err != nil {
		return err
	}
	if a.dnsProvider == nil && a.DNSServer == nil {
		a.globalDNS = tlsAppHasDNS(a.ctx)
	}
	// this config's storage value, bounds and timings, also when the
	// instance outlives a reload (nothing below fails)
	a.inst.store.SetStorage(a.storage)
	a.inst.source.Cache().SetCapacity(a.CacheCapacity)
	a.inst.source.Cache().SetMaxBytes(a.CacheMemory)
	a.startHot()
	a.inst.source.SetFallback(a.FallbackCertificateID)
	a.inst.store.SetSyncInterval(time.Duration(a.SyncInterval))
	a.inst.store.SetTimeout(time.Duration(a.StorageTimeout))
	a.acme = certsource.NewACME(a.inst.store, a.inst.source,
		certsource.ManagedCache(time.Duration(a.RenewCheckInterval), a.log.Named("cache")),
		a.acmeOptions(authorities))
	a.inst.store.SetPolicyOptions(a.DefaultAuthority, a.authorityNames(), a.acme.Decorate, a.acme.CheckPolicy)
	a.running.Store(a.acme)
	setEventTarget(a.events)
	a.acme.Start()
	expiryCtx, stopExpiry := context.WithCancel(context.Background())
	a.expiry = &expiryWatch{
		store: a.inst.store, warning: time.Duration(a.ExpiryWarning), interval: time.Duration(a.ExpiryCheckInterval),
		ratio: a.renewalRatio(), log: a.log.Named("expiry"), ctx: expiryCtx, done: make(chan struct{}),
	}
	a.stopExpiry = stopExpiry
	go a.expiry.run()
	return nil
}

// renewalRatio is renewal_window_ratio, or CertMagic's default.
func (a *App) renewalRatio() float64 {
	if a.RenewalWindowRatio > 0 {
		return a.RenewalWindowRatio
	}
	return certmagic.DefaultRenewalWindowRatio
}

// Stop stops this app's provisioning jobs. Certificates keep being served;
// the next config's app resumes management.
func (a *App) Stop() error {
	if a.acme != nil {
		a.acme.Stop()
	}
	if a.running != nil {
		a.running.Store(nil) // the doors of this config stop reaching its jobs
	}
	if a.expiry != nil {
		a.stopExpiry()
		<-a.expiry.done
		a.expiry = nil
	}
	if a.events != nil {
		clearEventTarget(a.events)
	}
	return nil
}

// acmeNow returns the app's certificate management once it has started,
// else nil.
func (a *App) acmeNow() *certsource.ACME {
	if a.running == nil {
		return nil
	}
	return a.running.Load()
}

// Store returns the domain store.
func (a *App) Store() *domainstore.Store { return a.inst.store }

// Source returns the certificate source.
func (a *App) Source() *certsource.Source { return a.inst.source }

// Cleanup releases the app's hold on the process-wide store and DNS
// server. It is safe to call after a failed Provision.
func (a *App) Cleanup() error {
	var errs []error
	if a.dnsKey != "" {
		if _, err := dnsServers.Delete(a.dnsKey); err != nil {
			errs = append(errs, err)
		}
		a.dnsKey = ""
	}
	if a.key != "" {
		if _, err := instances.Delete(a.key); err != nil {
			errs = append(errs, err)
		}
		a.key = ""
	}
	return errors.Join(errs...)
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
