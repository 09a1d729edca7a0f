package certsource

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/dnscheck"
	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

// Authority is an issuer that a management policy can name.
type Authority struct {
	// Name is what policies call it (e.g. "letsencrypt").
	Name string
	// ValidatesNames is true for authorities that check control of the
	// names (ACME): their domains must meet the DNS preconditions before
	// an order starts. Caddy's internal issuer does not.
	ValidatesNames bool
	// NewIssuer returns an issuer bound to cfg. A non-zero dns01 means the
	// issuer must solve DNS-01 challenges only, as dns01 says.
	NewIssuer func(cfg *certmagic.Config, dns01 DNS01) (certmagic.Issuer, error)
}

// DNS01 says how an issuer solves DNS-01 challenges: with Solver (the
// built-in TXT store, which routes each challenge to its record's name),
// or through a DNS provider with CertMagic's DNS01Solver, writing the
// record at Target (its OverrideDomain), for one domain's orders.
type DNS01 struct {
	Solver acmez.Solver
	Target string
}

// IsZero reports whether d asks for no DNS-01.
func (d DNS01) IsZero() bool { return d.Solver == nil && d.Target == "" }

// CNAMEChecker checks that a DNS name is a CNAME to a target. Its errors
// carry a message that says which record to create.
type CNAMEChecker interface {
	CheckCNAME(ctx context.Context, name, target string) error
	// CheckAddresses checks that name's A/AAAA records are all edge
	// addresses (and that it has some).
	CheckAddresses(ctx context.Context, name string, edges []netip.Addr) error
}

// ACMEOptions configure automated certificates.
type ACMEOptions struct {
	// Authorities by name.
	Authorities map[string]Authority

	// Zones are the operator's own DNS zones. Domains at or below them
	// need no CNAME.
	Zones []string

	// CNAMETarget returns the CNAME target of a domain outside Zones, or
	// "" when the operator requires none.
	CNAMETarget func(domain string) string

	// ChallengeTarget returns the acme_challenge_cname_target of a
	// wildcard domain outside Zones (its base name given), or "" when
	// none is configured.
	ChallengeTarget func(base string) string

	// DNS01 builds the built-in TXT store's solver from a function that
	// maps an ACME identifier to the name where its TXT record goes. Used
	// unless DNS01Provider is set; nil with DNS01Provider unset means no
	// DNS-01 (wildcards cannot be managed).
	DNS01 func(target func(identifier string) (string, error)) acmez.Solver

	// DNS01Provider reports that DNS-01 records are written through a DNS
	// provider (CertMagic's DNS01Solver, which checks their propagation):
	// each domain's issuer gets the name of its record as DNS01.Target.
	// A provider can also write inside Zones ("_acme-challenge.<base>" of
	// a wildcard in the operator's own zones), which the built-in DNS
	// server, answering only for the challenge zone, cannot.
	DNS01Provider bool

	// Checker verifies CNAMEs. Nil skips the checks.
	Checker CNAMEChecker

	// EdgeAddresses are the edge's public IP addresses: a domain outside
	// Zones whose CNAME is not in place also passes the check when all its
	// A/AAAA records are among them (a zone apex cannot be a CNAME). Empty:
	// only the CNAME passes.
	EdgeAddresses []netip.Addr

	// DelegateAll gives every domain outside Zones (not only wildcards) an
	// acme_challenge_cname_target: once its _acme-challenge CNAME points
	// there, its certificate is issued through DNS-01, before any traffic
	// moves. Needs ChallengeTarget.
	DelegateAll bool

	// ProvisioningTimeout is how long a first issuance may keep failing
	// before its job stops retrying (until an attempt is requested through
	// Provision). A domain whose certificate is still valid keeps
	// retrying. Default: DefaultProvisioningTimeout.
	ProvisioningTimeout time.Duration

	// RetryMin and RetryMax bound the backoff between attempts of a
	// provisioning job. Defaults: 30s and 1h.
	RetryMin, RetryMax time.Duration

	// RenewalWindowRatio is the fraction of a certificate's lifetime left
	// when renewal starts. Default: certmagic's (1/3).
	RenewalWindowRatio float64

	// Storage is where certificates and ACME state are kept.
	Storage certmagic.Storage

	Logger *zap.Logger

	// Emit, if set, sends an event (Caddy's events app): CertMagic's
	// cert_obtaining, cert_obtained and cert_failed for managed domains,
	// with domain_id added, and provisioning_failed. An error from the
	// handlers of cert_obtaining aborts that attempt, as in Caddy.
	Emit func(ctx context.Context, event string, data map[string]any) error
}

// The process-wide CertMagic cache of managed certificates. It outlives
// config reloads; the running ACME manager answers its config lookups.
var (
	managedCacheOnce  sync.Once
	managedCache      *certmagic.Cache
	managedRenewCheck time.Duration // the cache's renewal check interval
	currentACME       atomic.Pointer[ACME]
)

// ManagedCache returns the process-wide cache of managed certificates,
// creating it with the given renewal check interval on first use.
func ManagedCache(renewCheck time.Duration, log *zap.Logger) *certmagic.Cache {
	managedCacheOnce.Do(func() {
		if renewCheck <= 0 {
			renewCheck = certmagic.DefaultRenewCheckInterval
		}
		managedRenewCheck = renewCheck
		managedCache = certmagic.NewCache(certmagic.CacheOptions{
			GetConfigForCert: func(c certmagic.Certificate) (*certmagic.Config, error) {
				a := currentACME.Load()
				if a == nil {
					return nil, errors.New("no domaincerts app is running")
				}
				return a.configForCert(c)
			},
			RenewCheckInterval: renewCheck,
			Logger:             log,
		})
	})
	return managedCache
}

// ACME obtains and renews certificates for managed domains with CertMagic
// and reports progress in the domains' status. One ACME runs per config;
// on a reload the new one takes over the process-wide cache and jobs.
type ACME struct {
	store  *domainstore.Store
	source *Source
	cache  *certmagic.Cache
	opts   ACMEOptions
	log    *zap.Logger

	// attempts bounds how many provisioning attempts run at once, so that
	// a start-up with many managed domains does not storm storage, DNS
	// and the CA
	attempts chan struct{}

	// jobRenewals holds the names that a provisioning job is renewing
	// itself (RenewCertSync): CertMagic reports those as renewals too,
	// and onEvent leaves them to the job
	jobRenewals sync.Map // name -> struct{}

	mu      sync.Mutex
	configs map[configKey]*certmagic.Config
	jobs    map[string]*job // by domain ID
	stopped bool
	wg      sync.WaitGroup
}

type configKey struct {
	authority, keyType string
	dns01              bool
	target             string // the DNS-01 record's name, through a DNS provider
}

// NewACME returns an ACME manager; Start begins managing.
func NewACME(store *domainstore.Store, source *Source, cache *certmagic.Cache, opts ACMEOptions) *ACME {
	if opts.RetryMin <= 0 {
		opts.RetryMin = 30 * time.Second
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(time.Hour, opts.RetryMin)
	}
	if opts.ProvisioningTimeout <= 0 {
		opts.ProvisioningTimeout = DefaultProvisioningTimeout
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &ACME{
		store: store, source: source, cache: cache, opts: opts, log: opts.Logger,
		configs:  make(map[configKey]*certmagic.Config),
		jobs:     make(map[string]*job),
		attempts: make(chan struct{}, maxConcurrentAttempts),
	}
}

// maxConcurrentAttempts is how many provisioning attempts run at once.
const maxConcurrentAttempts = 16

// Start takes over from any previous manager and starts a job for every
// managed domain. A domain whose certificate is in storage and valid gets
// it loaded, with no new order.
func (a *ACME) Start() {
	currentACME.Store(a)
	a.source.SetManaged(a)
	a.store.Subscribe(a)
	// managed domains resume in the background: their records are read
	// from storage one by one, which must not delay the config load
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		ctx := context.Background()
		for _, e := range a.store.Entries() {
			if !e.Managed {
				continue
			}
			a.mu.Lock()
			stopped := a.stopped
			a.mu.Unlock()
			if stopped {
				return
			}
			if d, err := a.store.GetDomain(ctx, e.DomainID); err == nil && d.Policy != nil {
				a.startJob(d)
			}
		}
	}()
}

// Stop cancels this manager's jobs. Certificates stay in the cache and
// keep being served; the next manager resumes renewals.
func (a *ACME) Stop() {
	a.store.Unsubscribe(a)
	a.mu.Lock()
	a.stopped = true
	for id, j := range a.jobs {
		j.cancel()
		delete(a.jobs, id)
	}
	a.mu.Unlock()
	a.wg.Wait()
	currentACME.CompareAndSwap(a, nil)
}

// Decorate fills in a domain's CNAME targets and initial status. The store
// calls it for new domains and for domains whose policy changes. Targets
// are new (random, from ACMEOptions) for a record that has none; a record
// keeps the ones it was given, since its customer's DNS points there.
func (a *ACME) Decorate(d *domainstore.Domain) {
	if d.Policy != nil && d.Status == nil {
		d.Status = &domainstore.Status{ProvisioningJob: &domainstore.ProvisioningJob{
			Msg: "provisioning job queued", StartedAt: time.Now().UTC().Truncate(time.Second),
		}}
	}
	if a.inZones(d.Domain) {
		d.CNAMETarget, d.ACMEChallengeCNAMETarget = nil, nil
		return
	}
	if d.CNAMETarget == nil && a.opts.CNAMETarget != nil {
		if t := a.opts.CNAMETarget(d.Domain); t != "" {
			d.CNAMETarget = &t
		}
	}
	base, wildcard := strings.CutPrefix(d.Domain, "*.")
	if (wildcard || a.opts.DelegateAll) && d.ACMEChallengeCNAMETarget == nil && a.opts.ChallengeTarget != nil {
		if t := a.opts.ChallengeTarget(base); t != "" {
			d.ACMEChallengeCNAMETarget = &t
		}
	}
}

// CheckPolicy refuses, with POLICY_UNSATISFIABLE, a policy that this
// configuration can never satisfy for name: a wildcard from an authority
// that validates names needs a DNS-01 path, which is a dns_provider for a
// wildcard inside the operator's zones, and the challenge_zone (served by
// the built-in DNS server or a dns_provider) for a customer's wildcard.
// The store calls it when a domain is created with a policy or updated to
// one.
func (a *ACME) CheckPolicy(name string, p domainstore.Policy) error {
	auth, ok := a.opts.Authorities[p.Authority]
	base, wildcard := strings.CutPrefix(name, "*.")
	if !ok || !auth.ValidatesNames || !wildcard {
		return nil
	}
	switch {
	case a.inZones(name) && !a.opts.DNS01Provider:
		return dcerr.New(dcerr.PolicyUnsatisfiable,
			"%s is inside the operator's zones, so %s can issue it only through a DNS-01 record at _acme-challenge.%s, which the built-in dns_server does not serve; configure a dns_provider for the zone, or upload a certificate",
			name, p.Authority, base).WithDetail("authority", p.Authority)
	case !a.inZones(name) && a.opts.ChallengeTarget == nil:
		return dcerr.New(dcerr.PolicyUnsatisfiable,
			"%s is a customer's wildcard, which %s can issue only through DNS-01, delegated with a CNAME into the challenge_zone; configure challenge_zone (and dns_server or a dns_provider), or upload a certificate",
			name, p.Authority).WithDetail("authority", p.Authority)
	}
	return nil
}

// ManagedCertificate returns the managed certificate for an index entry
// from the cache, or nil.
func (a *ACME) ManagedCertificate(e *domainstore.Entry, _ string) *tls.Certificate {
	var best *certmagic.Certificate
	certs := a.cache.AllMatchingCertificates(e.Name)
	for i := range certs {
		c := &certs[i]
		if !slices.Contains(c.Names, e.Name) || c.Leaf == nil {
			continue
		}
		if best == nil || c.Leaf.NotAfter.After(best.Leaf.NotAfter) {
			best = c
		}
	}
	if best == nil {
		return nil
	}
	return &best.Certificate
}

// onlyCached reports whether the certificate with that serial number
// (lowercase hex) is the only one the cache holds for name: then refresh
// has nothing to load or drop. It reads memory only.
func (a *ACME) onlyCached(name, serial string) bool {
	found := false
	for _, c := range a.cache.AllMatchingCertificates(name) {
		if c.Leaf == nil || !slices.Contains(c.Names, name) {
			continue
		}
		if c.Leaf.SerialNumber.Text(16) != serial {
			return false
		}
		found = true
	}
	return found && serial != ""
}

// CertificateStored is part of domainstore.Listener.
func (a *ACME) CertificateStored(string, *bundle.Bundle) {}

// CertificateDeleted is part of domainstore.Listener.
func (a *ACME) CertificateDeleted(string) {}

// DomainChanged starts or stops management when a domain's policy comes,
// goes or changes. It compares the new policy with the running job's, not
// with old's: a record another instance rewrote (Sync) comes without its
// former policy, and a status update must not restart the job. It runs
// under the store's lock, so it only starts goroutines.
func (a *ACME) DomainChanged(old, new *domainstore.Domain) {
	challengeTargetsMu.Lock()
	challengeTargetsGen.Add(1)
	for _, d := range []*domainstore.Domain{old, new} {
		if d != nil {
			challengeTargets.Delete(strings.TrimPrefix(d.Domain, "*."))
		}
	}
	challengeTargetsMu.Unlock()
	if new == nil || new.Policy == nil {
		if old == nil {
			return
		}
		stopped := a.stopJob(old.ID)
		if stopped || new == nil {
			// also when no job ran yet (a reload starts them in the
			// background): a later registration of the name must not
			// find this one's certificate cached
			a.cache.RemoveManaged([]certmagic.SubjectIssuer{{Subject: old.Domain}})
		}
		if new == nil {
			dns01Names.Delete(old.Domain)
		}
		if stopped {
			a.log.Info("stopped managing domain", zap.String("domain_id", old.ID), zap.String("domain", old.Domain))
		}
		return
	}
	a.mu.Lock()
	j, running := a.jobs[new.ID]
	changed := running && j.policy != *new.Policy
	a.mu.Unlock()
	// a changed policy starts a job that obtains a certificate under it;
	// the current certificate serves until then
	if running && !changed && new.CertificateID != "" && (old == nil || old.CertificateID != new.CertificateID) &&
		!a.onlyCached(new.Domain, new.ManagedSerial) {
		// a new certificate (renewed by another instance), or this
		// instance's with others still cached for the name: serve it, and
		// only it
		a.mu.Lock()
		if !a.stopped {
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.refresh(new.Domain, *new.Policy)
			}()
		}
		a.mu.Unlock()
	}
	a.startJob(new)
}

// refresh loads the stored certificate of a managed name into the cache
// and drops the others cached for it (those of a former policy, or
// replaced by a renewal): the stored one is the one the domain's record
// names.
func (a *ACME) refresh(name string, policy domainstore.Policy) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, cert, err := a.cacheStored(ctx, name, policy)
	if err != nil || cert.Leaf == nil {
		return
	}
	var stale []string
	for _, c := range a.cache.AllMatchingCertificates(name) {
		if c.Leaf != nil && slices.Contains(c.Names, name) && c.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) != 0 {
			stale = append(stale, c.Hash())
		}
	}
	if len(stale) > 0 {
		a.cache.Remove(stale)
	}
}

// startJob starts managing d, unless a job with the same policy runs; a
// job with another policy is replaced.
func (a *ACME) startJob(d *domainstore.Domain) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if j, ok := a.jobs[d.ID]; ok && j.policy == *d.Policy {
		return
	}
	a.launchLocked(d, false)
}

// stopJob stops managing the domain id and reports whether it was managed.
func (a *ACME) stopJob(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	j, ok := a.jobs[id]
	if ok {
		j.cancel()
		delete(a.jobs, id)
	}
	return ok
}

// jobError is a failed attempt: the status code to report and the cause.
type jobError struct {
	code  string // "DNS_ERROR" or "INTERNAL_ERROR"
	err   error
	final bool // retrying cannot help: the job ends
}

func (e *jobError) Error() string { return e.err.Error() }

// statusMsg is the provisioning_job msg (and the provisioning_failed
// event's) for a failed attempt. A failure of the storage can carry storage
// keys or file paths, which never appear in a response: its msg names only
// the operation that failed, and the cause is in the log (run logs it;
// CertMagic logs the failures of its own renewals).
func statusMsg(err error) string {
	if !fromStorage(err) {
		return err.Error()
	}
	return "storage unavailable: " + storageOp(err) +
		"; the storage failed or a stored value could not be read, see Caddy's log for the cause"
}

// storageError is a failure of the storage during one of this file's
// operations (see provision and lockJob): the operation, then the cause.
type storageError struct {
	op  string
	err error
}

func (e *storageError) Error() string { return e.op + ": " + e.err.Error() }
func (e *storageError) Unwrap() error { return e.err }

// storageKeyPrefixes begin the storage keys that CertMagic and the domain
// store write; an error text that quotes one names a storage key.
var storageKeyPrefixes = []string{"certificates/", "acme/", "ocsp/", "locks/", "domaincerts/"}

// filePath matches an absolute file path in an error's text ("open
// /var/lib/caddy/acme/.../users/...": CertMagic wraps many storage errors
// with %v, keeping only their text). A URL's path does not match: the
// slash after its scheme's colon is followed by another.
var filePath = regexp.MustCompile(`(?:^|[\s"'(=:])/[^/\s"']+/`)

// fromStorage reports whether err is a failure of the storage: a file
// system error, a sealed value that does not open, one of this file's
// storage operations, or any error whose text names a storage key or a
// file path. A problem that the CA answered is never one, and the cause of a
// *dcerr.Error (the domain store's) does not count: its text is the
// error's Msg, written for clients.
func fromStorage(err error) bool {
	var prob acme.Problem
	var probPtr *acme.Problem
	if errors.As(err, &probPtr) || errors.As(err, &prob) {
		return false
	}
	var pathErr *fs.PathError
	var linkErr *os.LinkError
	var sealErr *seal.Error
	var dcErr *dcerr.Error
	if !errors.As(err, &dcErr) && (errors.As(err, &pathErr) || errors.As(err, &linkErr) || errors.As(err, &sealErr)) {
		return true
	}
	var se *storageError
	if errors.As(err, &se) {
		return true
	}
	text := err.Error()
	for _, p := range storageKeyPrefixes {
		if strings.Contains(text, `"`+p) || strings.Contains(text, "'"+p) || strings.Contains(text, " "+p) {
			return true
		}
	}
	return filePath.MatchString(text)
}

// storageOp names the operation that a storage failure interrupted: the
// outermost context of err (such as "taking the provisioning lock"), or a
// general phrase when that context itself names a key or path.
func storageOp(err error) string {
	var se *storageError
	if errors.As(err, &se) {
		return se.op
	}
	op, _, _ := strings.Cut(err.Error(), ": ")
	if strings.ContainsAny(op, `/\"'`) {
		return "reading or writing the storage"
	}
	return op
}

// run is a domain's provisioning job: it retries with backoff until the
// domain has a certificate under management, or the job is cancelled. An
// attempt requested through Provision (j.wake) starts at once, or as soon
// as the rate limit allows. A first issuance that keeps failing for
// ProvisioningTimeout stops until such a request; so does a policy this
// configuration cannot satisfy.
func (a *ACME) run(ctx context.Context, j *job, id, name string, policy domainstore.Policy, requested bool) {
	log := a.log.With(zap.String("domain_id", id), zap.String("domain", name))
	started := time.Now().UTC().Truncate(time.Second)
	stopped := false
	if d, err := a.store.GetDomain(ctx, id); err == nil && d.Status != nil && d.Status.ProvisioningJob != nil {
		if pj := d.Status.ProvisioningJob; pj.ErrorCode != nil {
			// a series of failures goes on across restarts and reloads
			started = pj.StartedAt
			stopped = pj.RetriesAt == nil && time.Since(started) >= a.opts.ProvisioningTimeout
		}
	}
	delay := a.opts.RetryMin
	lastFailure := ""
	for attempt := 0; ; attempt++ {
		switch {
		case stopped && !requested:
			// wait for a request through the API
			select {
			case <-ctx.Done():
				return
			case <-j.wake:
				requested = true
			}
		case !requested:
			// instances on one storage keep one schedule: the last attempt,
			// whoever made it, set retries_at
			if wait := a.sharedRetryWait(ctx, id); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				case <-j.wake:
					requested = true
				}
			}
		}
		if requested {
			if stopped {
				// a new series: the timeout counts from here
				started, delay, stopped = time.Now().UTC().Truncate(time.Second), a.opts.RetryMin, false
			}
			if wait := time.Until(j.nextRequested()); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			requested = false
		}
		select {
		case a.attempts <- struct{}{}:
		case <-ctx.Done():
			return
		}
		j.attempted(time.Now())
		err := a.provision(ctx, id, name, policy, started)
		<-a.attempts
		if err == nil || ctx.Err() != nil || errors.Is(err, errDomainGone) {
			return
		}
		if errors.Is(err, errJobBusy) {
			// another instance is at it: its result (a certificate in
			// storage, or a status with retries_at) decides what next
			attempt--
			select {
			case <-ctx.Done():
				return
			case <-time.After(jobBusyPoll + time.Duration(rand.Int64N(int64(jobBusyPoll)))):
			}
			continue
		}
		var je *jobError
		if !errors.As(err, &je) {
			je = &jobError{code: "INTERNAL_ERROR", err: err}
		}
		code, msg := je.code, statusMsg(je.err)
		if je.final {
			a.setStatus(ctx, id, policy, &domainstore.Status{ProvisioningJob: &domainstore.ProvisioningJob{
				ErrorCode: &code, Msg: msg, StartedAt: started,
			}})
			a.failed(ctx, id, name, code, msg, nil)
			log.Warn("provisioning certificate failed; not retrying until the configuration changes",
				zap.String("error_code", code), zap.Error(je.err))
			stopped = true
			continue
		}
		if time.Since(started) >= a.opts.ProvisioningTimeout && !a.inUse(ctx, id) {
			a.setStatus(ctx, id, policy, &domainstore.Status{ProvisioningJob: &domainstore.ProvisioningJob{
				ErrorCode: &code, StartedAt: started,
				Msg: fmt.Sprintf("%s; no more attempts after %s of failures: fix the cause, then POST /domaincerts/domains/%s/provision (caddy domaincerts provision %s) or PATCH its certificate_management_policy to try again",
					msg, a.opts.ProvisioningTimeout, id, id),
			}})
			a.failed(ctx, id, name, code, msg, nil)
			log.Warn("provisioning certificate failed for longer than provisioning_timeout; stopped retrying",
				zap.String("error_code", code), zap.Time("started_at", started), zap.Error(je.err))
			stopped = true
			continue
		}
		retry := ceilSecond(time.Now().Add(delay))
		a.setStatus(ctx, id, policy, &domainstore.Status{ProvisioningJob: &domainstore.ProvisioningJob{
			ErrorCode: &code, Msg: msg, StartedAt: started, RetriesAt: &retry,
		}})
		a.failed(ctx, id, name, code, msg, &retry)
		// said once per distinct failure: a customer who has not set up
		// DNS yet is not the operator's problem, and a retry that fails
		// the same way adds nothing
		level := zap.DebugLevel
		if msg := code + " " + je.err.Error(); msg != lastFailure {
			lastFailure = msg
			level = zap.WarnLevel
			if code == "DNS_ERROR" {
				level = zap.InfoLevel
			}
		}
		log.Log(level, "provisioning certificate failed; will retry",
			zap.String("error_code", code), zap.Int("attempt", attempt+1),
			zap.Time("retries_at", retry), zap.Error(je.err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(retry)):
		case <-j.wake:
			requested = true
		}
		delay = min(delay*2, a.opts.RetryMax)
	}
}

// provision makes one attempt: load the certificate from storage, or check
// DNS and obtain one.
func (a *ACME) provision(ctx context.Context, id, name string, policy domainstore.Policy, started time.Time) error {
	auth, ok := a.opts.Authorities[policy.Authority]
	if !ok {
		return &jobError{code: "INTERNAL_ERROR", err: fmt.Errorf("authority %q is not configured", policy.Authority)}
	}
	cfg, err := a.config(policy, a.usesDNS01(name), name)
	if err != nil {
		return err
	}
	if err := a.checkStoredOwner(ctx, auth, cfg, id, name, policy); err != nil {
		return err
	}
	cert, err := cfg.CacheManagedCertificate(ctx, name)
	if err == nil {
		// a stored certificate (a restart): its renewals use the challenge
		// its _acme-challenge CNAME calls for
		a.learnDNS01(ctx, id, name)
		if cfg, err = a.config(policy, a.usesDNS01(name), name); err != nil {
			return err
		}
	}
	switch {
	case err == nil && !cert.NeedsRenewal(cfg) && keyTypeIs(cert, policy.PrivateKeyType):
		return a.loaded(ctx, id, policy, cfg, name, cert)
	case err == nil && !keyTypeIs(cert, policy.PrivateKeyType):
		// the policy asks for another key type than the stored certificate
		// has (it changed): obtain a new one; the stored one serves until
		// then
		unlock, ocfg, err := a.beforeOrder(ctx, auth, id, name, policy, started,
			fmt.Sprintf("obtaining a certificate with a %s key from %s (the policy changed)", policy.PrivateKeyType, policy.Authority))
		if err != nil {
			return err
		}
		defer unlock()
		cfg = ocfg
		if err := a.renewSync(ctx, cfg, name, true); err != nil {
			return a.classify(fmt.Errorf("obtaining a certificate for %s from %s: %w", name, policy.Authority, err), name)
		}
	case err == nil:
		// stored but due for renewal: renew now, then serve the new one
		unlock, err := a.lockJob(ctx, id)
		if err != nil {
			return err
		}
		defer unlock()
		if err := a.renewSync(ctx, cfg, name, false); err != nil {
			return a.classify(fmt.Errorf("renewing the certificate for %s from %s: %w", name, policy.Authority, err), name)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return &jobError{code: "INTERNAL_ERROR", err: &storageError{"loading stored certificate", err}}
	default:
		unlock, ocfg, err := a.beforeOrder(ctx, auth, id, name, policy, started,
			fmt.Sprintf("obtaining a certificate from %s", policy.Authority))
		if err != nil {
			return err
		}
		defer unlock()
		cfg = ocfg
		if err := cfg.ObtainCertSync(ctx, name); err != nil {
			return a.classify(fmt.Errorf("obtaining a certificate for %s from %s: %w", name, policy.Authority, err), name)
		}
	}
	cert, err = cfg.CacheManagedCertificate(ctx, name)
	if err != nil {
		return &jobError{code: "INTERNAL_ERROR", err: &storageError{"loading obtained certificate", err}}
	}
	return a.loaded(ctx, id, policy, cfg, name, cert)
}

// checkStoredOwner runs the pre-checks before a certificate stored for
// name is loaded (and served) when the domain's record does not know it:
// it was obtained for an earlier registration of the name, whose CNAME a
// former customer may have left in place, or before records kept serials.
// The record's own certificate (a restart, a switch back to management)
// loads without them.
func (a *ACME) checkStoredOwner(ctx context.Context, auth Authority, cfg *certmagic.Config, id, name string, policy domainstore.Policy) error {
	if len(cfg.Issuers) == 0 {
		return nil
	}
	pemBytes, err := cfg.Storage.Load(ctx, certmagic.StorageKeys.SiteCert(cfg.Issuers[0].IssuerKey(), name))
	if err != nil {
		return nil // none stored (or unreadable: loading it will say so)
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	d, err := a.store.GetDomain(ctx, id)
	if dcerr.CodeOf(err) == dcerr.NotFound {
		return errDomainGone
	}
	if err != nil {
		return &jobError{code: "INTERNAL_ERROR", err: err}
	}
	if d.ManagedSerial == leaf.SerialNumber.Text(16) {
		return nil
	}
	unlock, err := a.lockJob(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	dns01, err := a.precheck(ctx, auth, id, name, policy)
	if err == nil {
		a.setDNS01(name, dns01)
	}
	return err
}

// beforeOrder takes the domain's provisioning lock, runs the pre-checks
// and reports msg in the status; the caller then orders, and releases the
// lock with the returned func.
func (a *ACME) beforeOrder(ctx context.Context, auth Authority, id, name string, policy domainstore.Policy, started time.Time, msg string) (func(), *certmagic.Config, error) {
	unlock, err := a.lockJob(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	dns01, err := a.precheck(ctx, auth, id, name, policy)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	cfg, err := a.config(policy, dns01, name)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	a.setDNS01(name, dns01)
	if dns01 && !strings.HasPrefix(name, "*.") {
		msg += " through its _acme-challenge record (DNS-01)"
	}
	a.setStatus(ctx, id, policy, &domainstore.Status{ProvisioningJob: &domainstore.ProvisioningJob{
		Msg: msg, StartedAt: started,
	}})
	return unlock, cfg, nil
}

// precheck verifies what an order needs before it is placed: for an
// authority that validates names, the domain's DNS records (and that the
// configuration can satisfy its policy). It reports whether the order
// goes through DNS-01: always for a wildcard, and for a domain whose
// _acme-challenge CNAME is in place; otherwise HTTP-01 or TLS-ALPN-01.
func (a *ACME) precheck(ctx context.Context, auth Authority, id, name string, policy domainstore.Policy) (bool, error) {
	wildcard := strings.HasPrefix(name, "*.")
	if !auth.ValidatesNames {
		return false, nil
	}
	if err := a.CheckPolicy(name, policy); err != nil {
		// a domain stored before the configuration changed: retrying
		// cannot help; a config reload starts its job again
		return false, &jobError{code: "INTERNAL_ERROR", err: err, final: true}
	}
	dns01, err := a.checkDNS(ctx, id)
	return dns01 || wildcard, err
}

// keyTypeIs reports whether cert's private key is of the policy's type.
func keyTypeIs(cert certmagic.Certificate, keyType string) bool {
	switch cert.PrivateKey.(type) {
	case *rsa.PrivateKey:
		return keyType == domainstore.KeyTypeRSA
	case *ecdsa.PrivateKey:
		return keyType == domainstore.KeyTypeECDSA
	}
	return false
}

// errJobBusy means another instance holds the domain's provisioning lock.
var errJobBusy = errors.New("another instance is provisioning this domain")

// jobBusyPoll is how long a job waits, plus up to as much again, before it
// looks again at a domain that another instance is provisioning.
var jobBusyPoll = time.Second

// lockJob takes the domain's provisioning lock in the shared storage, so
// that of the instances running its job one at a time checks DNS and
// orders (CertMagic's own lock already keeps orders to one per name).
func (a *ACME) lockJob(ctx context.Context, id string) (func(), error) {
	name := "domaincerts_job_" + id
	ok, err := a.store.TryLock(ctx, name)
	if err != nil {
		return nil, &jobError{code: "INTERNAL_ERROR", err: &storageError{"taking the provisioning lock", err}}
	}
	if !ok {
		return nil, errJobBusy
	}
	return func() { a.store.Unlock(name) }, nil
}

// sharedRetryWait returns how long until the retries_at that the domain's
// status names, if it lies ahead.
func (a *ACME) sharedRetryWait(ctx context.Context, id string) time.Duration {
	d, err := a.store.GetDomain(ctx, id)
	if err != nil || d.Status == nil || d.Status.ProvisioningJob == nil || d.Status.ProvisioningJob.RetriesAt == nil {
		return 0
	}
	return time.Until(*d.Status.ProvisioningJob.RetriesAt)
}

// checkDNS verifies the CNAMEs a domain needs before an order starts.
// errDomainGone ends a job whose domain was deleted before the job started
// (deleting a domain otherwise stops its job).
var errDomainGone = errors.New("domain deleted")

func (a *ACME) checkDNS(ctx context.Context, id string) (bool, error) {
	if a.opts.Checker == nil {
		return false, nil
	}
	d, err := a.store.GetDomain(ctx, id)
	if dcerr.CodeOf(err) == dcerr.NotFound {
		return false, errDomainGone
	}
	if err != nil {
		return false, err
	}
	if d.ACMEChallengeCNAMETarget != nil {
		// the _acme-challenge CNAME proves control of the name and lets
		// the certificate be issued before any traffic moves
		base := strings.TrimPrefix(d.Domain, "*.")
		acmeErr := a.opts.Checker.CheckCNAME(ctx, "_acme-challenge."+base, *d.ACMEChallengeCNAMETarget)
		if acmeErr == nil {
			return true, nil
		}
		var ae *dnscheck.Error
		if !strings.HasPrefix(d.Domain, "*.") && d.CNAMETarget == nil {
			// no traffic target to check (no cname_zone or cname_target):
			// HTTP-01 or TLS-ALPN-01, as without delegate_dns01 "all"
			return false, nil
		}
		if strings.HasPrefix(d.Domain, "*.") || (errors.As(acmeErr, &ae) && ae.Temporary) {
			return false, dnsCheckError(acmeErr)
		}
		// or the traffic record, for HTTP-01 / TLS-ALPN-01
		trafficErr := a.checkTraffic(ctx, d.Domain, *d.CNAMETarget)
		if trafficErr == nil {
			return false, nil
		}
		var te *dnscheck.Error
		if ae == nil || !errors.As(trafficErr, &te) || te.Temporary {
			return false, dnsCheckError(trafficErr)
		}
		return false, dnsCheckError(&dnscheck.Error{Name: ae.Name, Want: ae.Want, Found: ae.Found,
			Msg: ae.Msg + " to get the certificate before traffic moves; or, to move traffic now, " + te.Msg})
	}
	if d.CNAMETarget != nil {
		if err := a.checkTraffic(ctx, d.Domain, *d.CNAMETarget); err != nil {
			return false, dnsCheckError(err)
		}
	}
	return false, nil
}

// checkTraffic checks that a customer's domain points at the edge: a
// CNAME to its target, or, with EdgeAddresses configured and for a name
// that is not a wildcard, A/AAAA records that are all edge addresses.
func (a *ACME) checkTraffic(ctx context.Context, name, target string) error {
	err := a.opts.Checker.CheckCNAME(ctx, name, target)
	var ce *dnscheck.Error
	if err == nil || len(a.opts.EdgeAddresses) == 0 || strings.HasPrefix(name, "*.") || (errors.As(err, &ce) && ce.Temporary) {
		return err
	}
	aerr := a.opts.Checker.CheckAddresses(ctx, name, a.opts.EdgeAddresses)
	var ae *dnscheck.Error
	switch {
	case aerr == nil:
		return nil
	case errors.As(aerr, &ae) && ae.Temporary:
		return aerr
	case ce != nil && ae != nil:
		return &dnscheck.Error{Name: ce.Name, Want: ce.Want, Found: ae.Found,
			Msg: ce.Msg + "; or, for a name that cannot be a CNAME (a zone apex), " + ae.Msg}
	}
	return err
}

// dnsCheckError maps a failed CNAME check to a status: DNS_ERROR only when
// an answer showed the customer's record missing or wrong; a lookup that
// no resolver answered is the operator's problem, INTERNAL_ERROR, with a
// message that names the resolvers.
func dnsCheckError(err error) *jobError {
	var de *dnscheck.Error
	if errors.As(err, &de) && de.Temporary {
		return &jobError{code: "INTERNAL_ERROR", err: err}
	}
	return &jobError{code: "DNS_ERROR", err: err}
}

// loaded records a certificate that is now in the cache: a certificate
// record if the domain has none for it (the store checks, so instances
// that each load it record it once), and the status.
func (a *ACME) loaded(ctx context.Context, id string, policy domainstore.Policy, cfg *certmagic.Config, name string, cert certmagic.Certificate) error {
	issuerKey := ""
	if len(cfg.Issuers) > 0 {
		issuerKey = cfg.Issuers[0].IssuerKey()
	}
	certPEM, err := cfg.Storage.Load(ctx, certmagic.StorageKeys.SiteCert(issuerKey, name))
	if err != nil {
		return &jobError{code: "INTERNAL_ERROR", err: fmt.Errorf("loading issued certificate: %w", err)}
	}
	issued := time.Now()
	if cert.Leaf != nil {
		issued = cert.Leaf.NotBefore
	}
	renews := a.renewsAt(ctx, cfg, name, cert)
	err = a.store.SetManagedState(ctx, id, policy, &domainstore.Status{RenewsAt: &renews}, &domainstore.IssuedCertificate{
		CertificatePEM: string(certPEM),
		KeyStorageKey:  certmagic.StorageKeys.SitePrivateKey(issuerKey, name),
		IssuedAt:       issued,
	})
	if err != nil {
		return &jobError{code: "INTERNAL_ERROR", err: err}
	}
	return nil
}

// renewsAt is when CertMagic will start renewing cert: at the end of its
// life less the renewal window, or earlier when the CA's ACME Renewal
// Information selected an earlier time (CertMagic renews at whichever
// comes first).
func (a *ACME) renewsAt(ctx context.Context, cfg *certmagic.Config, name string, cert certmagic.Certificate) time.Time {
	if cert.Leaf == nil {
		return time.Time{}
	}
	ratio := a.opts.RenewalWindowRatio
	if ratio <= 0 {
		ratio = certmagic.DefaultRenewalWindowRatio
	}
	life := cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore)
	at := cert.Leaf.NotAfter.Add(-time.Duration(float64(life) * ratio))
	if len(cfg.Issuers) > 0 {
		meta, err := cfg.Storage.Load(ctx, certmagic.StorageKeys.SiteMeta(cfg.Issuers[0].IssuerKey(), name))
		var res struct {
			IssuerData struct {
				RenewalInfo *acme.RenewalInfo `json:"renewal_info"`
			} `json:"issuer_data"`
		}
		if err == nil && json.Unmarshal(meta, &res) == nil {
			if ri := res.IssuerData.RenewalInfo; ri != nil && !ri.SelectedTime.IsZero() && ri.SelectedTime.Before(at) {
				at = ri.SelectedTime
			}
		}
	}
	return at.UTC().Truncate(time.Second)
}

func (a *ACME) setStatus(ctx context.Context, id string, policy domainstore.Policy, st *domainstore.Status) {
	if d, err := a.store.GetDomain(ctx, id); err == nil && d.Status != nil {
		st.RenewsAt = d.Status.RenewsAt // keep the renewal time of a certificate still served
	}
	if err := a.store.SetManagedState(ctx, id, policy, st, nil); err != nil {
		a.log.Error("recording provisioning status", zap.String("domain_id", id), zap.Error(err))
	}
}

// renewSync renews name for a provisioning job, which reports the outcome
// itself: onEvent ignores CertMagic's renewal events for it meanwhile.
func (a *ACME) renewSync(ctx context.Context, cfg *certmagic.Config, name string, force bool) error {
	a.jobRenewals.Store(name, struct{}{})
	defer a.jobRenewals.Delete(name)
	return cfg.RenewCertSync(ctx, name, force)
}

// onEvent follows renewals that CertMagic's maintenance runs.
func (a *ACME) onEvent(ctx context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	switch event {
	case "cert_obtaining", "cert_obtained", "cert_failed":
		if a.opts.Emit != nil {
			out := maps.Clone(data)
			if id, ok := a.store.DomainID(name); ok {
				out["domain_id"] = id
			}
			if err := a.opts.Emit(ctx, event, out); err != nil && event == "cert_obtaining" {
				return err
			}
		}
	}
	renewal, _ := data["renewal"].(bool)
	if !renewal {
		return nil
	}
	if _, ok := a.jobRenewals.Load(name); ok {
		return nil
	}
	d, ok := a.store.DomainByName(ctx, name)
	if !ok || d.Policy == nil {
		return nil
	}
	switch event {
	case "cert_obtaining":
		started := renewals.started(name, time.Now())
		a.setStatus(ctx, d.ID, *d.Policy, &domainstore.Status{ProvisioningJob: &domainstore.ProvisioningJob{
			Msg: "renewing the certificate", StartedAt: started.UTC().Truncate(time.Second),
		}})
	case "cert_failed":
		code := "INTERNAL_ERROR"
		msg := "renewing the certificate failed"
		if err, ok := data["error"].(error); ok {
			code, msg = a.classify(err, name).code, statusMsg(err)
		}
		started, retry := renewals.failed(name, time.Now(), managedRenewCheck)
		retry = ceilSecond(retry)
		a.setStatus(ctx, d.ID, *d.Policy, &domainstore.Status{ProvisioningJob: &domainstore.ProvisioningJob{
			ErrorCode: &code, Msg: msg, StartedAt: started.UTC().Truncate(time.Second), RetriesAt: &retry,
		}})
		a.failed(ctx, d.ID, name, code, msg, &retry)
	case "cert_obtained":
		renewals.done(name)
		// the cache reloads the renewed certificate after this event;
		// record it once it is there
		go a.afterRenewal(d.ID, *d.Policy, name)
	}
	return nil
}

// failed counts a failed provisioning attempt (or renewal) and sends
// provisioning_failed; retry is nil when no attempt follows.
func (a *ACME) failed(ctx context.Context, id, name, code, msg string, retry *time.Time) {
	provisioningFailures.add(code)
	if a.opts.Emit == nil {
		return
	}
	var retriesAt any // null when none follows
	if retry != nil {
		retriesAt = retry.UTC().Format(time.RFC3339)
	}
	_ = a.opts.Emit(ctx, "provisioning_failed", map[string]any{
		"domain_id": id, "domain": name, "error_code": code, "msg": msg, "retries_at": retriesAt,
	})
}

// provisioningFailures counts failed attempts by error code, for the life
// of the process (metrics outlive config reloads).
var provisioningFailures failureCounts

type failureCounts struct {
	mu     sync.Mutex
	counts map[string]uint64
}

func (f *failureCounts) add(code string) {
	f.mu.Lock()
	if f.counts == nil {
		f.counts = make(map[string]uint64)
	}
	f.counts[code]++
	f.mu.Unlock()
}

// ProvisioningFailures returns how many provisioning attempts (and
// renewals) failed in this process, by error code.
func ProvisioningFailures() map[string]uint64 {
	provisioningFailures.mu.Lock()
	defer provisioningFailures.mu.Unlock()
	return maps.Clone(provisioningFailures.counts)
}

func (a *ACME) afterRenewal(id string, policy domainstore.Policy, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, cert, err := a.cacheStored(ctx, name, policy)
	if err != nil {
		a.log.Error("loading renewed certificate", zap.String("domain", name), zap.Error(err))
		return
	}
	if err := a.loaded(ctx, id, policy, cfg, name, cert); err != nil {
		a.log.Error("recording renewed certificate", zap.String("domain", name), zap.Error(err))
	}
}

// cacheStored loads the stored certificate of a managed name into the
// cache and returns it with the config of its policy.
func (a *ACME) cacheStored(ctx context.Context, name string, policy domainstore.Policy) (*certmagic.Config, certmagic.Certificate, error) {
	cfg, err := a.config(policy, a.usesDNS01(name), name)
	if err != nil {
		return nil, certmagic.Certificate{}, err
	}
	cert, err := cfg.CacheManagedCertificate(ctx, name)
	return cfg, cert, err
}

// configForCert returns the config that manages cert, for the cache's
// maintenance (renewals).
func (a *ACME) configForCert(c certmagic.Certificate) (*certmagic.Config, error) {
	// CertMagic calls this for every managed certificate on each maintenance
	// pass, holding its cache's lock: the running job's policy is in memory;
	// the record is read only while jobs resume (a reload)
	for _, n := range c.Names {
		id, ok := a.store.DomainID(n)
		if !ok {
			continue
		}
		dns01 := a.usesDNS01(n)
		a.mu.Lock()
		j, running := a.jobs[id]
		a.mu.Unlock()
		if running {
			return a.config(j.policy, dns01, n)
		}
		if d, err := a.store.GetDomain(context.Background(), id); err == nil && d.Policy != nil {
			return a.config(*d.Policy, dns01, n)
		}
	}
	return nil, fmt.Errorf("no managed domain for certificate %v", c.Names)
}

// config returns the CertMagic config for ordering and renewing name's
// certificate under a policy, through DNS-01 or not, building it on first
// use. Configs are per policy, and, for DNS-01 through a DNS provider, per
// name of the TXT record as well.
func (a *ACME) config(p domainstore.Policy, dns01 bool, name string) (*certmagic.Config, error) {
	target := ""
	if dns01 && a.opts.DNS01Provider {
		target, _ = a.txtTarget(name)
	}
	key := configKey{authority: p.Authority, keyType: p.PrivateKeyType, dns01: dns01, target: target}
	a.mu.Lock()
	defer a.mu.Unlock()
	if cfg, ok := a.configs[key]; ok {
		return cfg, nil
	}
	auth, ok := a.opts.Authorities[p.Authority]
	if !ok {
		return nil, &jobError{code: "INTERNAL_ERROR", err: fmt.Errorf("authority %q is not configured", p.Authority)}
	}
	keyType := certmagic.P256
	if p.PrivateKeyType == domainstore.KeyTypeRSA {
		keyType = certmagic.RSA4096
	}
	cfg := certmagic.New(a.cache, certmagic.Config{
		Storage:            a.opts.Storage,
		KeySource:          certmagic.StandardKeyGenerator{KeyType: keyType},
		RenewalWindowRatio: a.opts.RenewalWindowRatio,
		OnEvent:            a.onEvent,
		Logger:             a.log.Named("certmagic"),
	})
	var d01 DNS01
	if dns01 && auth.ValidatesNames {
		switch {
		case a.opts.DNS01Provider:
			d01.Target = target
		case a.opts.DNS01 != nil:
			d01.Solver = a.opts.DNS01(a.txtTarget)
		default:
			return nil, &jobError{code: "INTERNAL_ERROR",
				err: errors.New("DNS-01 is not configured: configure a challenge zone (built-in DNS) or a dns provider")}
		}
	}
	iss, err := auth.NewIssuer(cfg, d01)
	if err != nil {
		return nil, &jobError{code: "INTERNAL_ERROR", err: fmt.Errorf("setting up issuer %s: %w", p.Authority, err)}
	}
	cfg.Issuers = []certmagic.Issuer{iss}
	a.configs[key] = cfg
	return cfg, nil
}

// txtTarget maps an ACME DNS-01 identifier (a name, or a wildcard's base) to the
// name where its TXT record goes: the acme_challenge_cname_target of a
// domain outside the operator's zones, else "_acme-challenge.<base>".
func (a *ACME) txtTarget(identifier string) (string, error) {
	base := strings.TrimPrefix(strings.ToLower(identifier), "*.")
	if t, ok := challengeTargets.Load(base); ok {
		return t.(string), nil
	}
	gen := challengeTargetsGen.Load()
	// a name and its wildcard share _acme-challenge.<base>, and so one
	// target (the store gives the second the first one's)
	target := "_acme-challenge." + base
	for _, name := range []string{base, "*." + base} {
		if d, ok := a.store.DomainByName(context.Background(), name); ok && d.ACMEChallengeCNAMETarget != nil {
			target = *d.ACMEChallengeCNAMETarget
			break
		}
	}
	// a lookup that found no record (or failed) is not remembered, nor one
	// that a change may have overtaken
	if target != "_acme-challenge."+base {
		challengeTargetsMu.Lock()
		if challengeTargetsGen.Load() == gen {
			challengeTargets.Store(base, target)
		}
		challengeTargetsMu.Unlock()
	}
	return target, nil
}

// challengeTargets caches txtTarget by base name: a record keeps its
// target for life, and DomainChanged forgets a base whose domains change
// (and counts the change in challengeTargetsGen), so that CertMagic's
// maintenance (configForCert) reads no storage.
var (
	challengeTargets    sync.Map   // base name -> TXT record name
	challengeTargetsMu  sync.Mutex // a change (gen and deletes) or a store, at a time
	challengeTargetsGen atomic.Uint64
)

// inZones reports whether name is at or below one of the operator's zones.
func (a *ACME) inZones(name string) bool {
	name = strings.TrimPrefix(name, "*.")
	for _, z := range a.opts.Zones {
		z = strings.ToLower(strings.TrimSuffix(z, "."))
		if name == z || strings.HasSuffix(name, "."+z) {
			return true
		}
	}
	return false
}

// ceilSecond rounds t up to a whole second (in UTC), so that a reported
// retries_at is never earlier than the retry.
func ceilSecond(t time.Time) time.Time {
	t = t.UTC()
	if r := t.Truncate(time.Second); !r.Equal(t) {
		return r.Add(time.Second)
	}
	return t
}

// classify maps an ACME failure for name to a status code: problems the
// domain's owner must fix in DNS are DNS_ERROR, everything else
// INTERNAL_ERROR. CAA records that forbid the CA are always the owner's.
// A CA that could not resolve or reach the name, or reached the wrong
// server, points at the owner's records only when nothing checked them:
// for a name in the operator's zones, or whose CNAME (and, for a
// wildcard, _acme-challenge CNAME) was checked before the order, the
// failure is on the operator's side (firewall, the edge's own records,
// the challenge DNS server).
func (a *ACME) classify(err error, name string) *jobError {
	var prob acme.Problem
	var probPtr *acme.Problem
	if errors.As(err, &probPtr) && probPtr != nil {
		prob = *probPtr
	}
	if prob.Type != "" || errors.As(err, &prob) {
		switch strings.TrimPrefix(prob.Type, "urn:ietf:params:acme:error:") {
		case "caa":
			return &jobError{code: "DNS_ERROR", err: err}
		case "dns", "connection", "unauthorized", "incorrectResponse":
			if !a.customerDNSChecked(name) {
				return &jobError{code: "DNS_ERROR", err: err}
			}
		}
	}
	return &jobError{code: "INTERNAL_ERROR", err: err}
}

// customerDNSChecked reports whether what the CA validates for name is the
// operator's: a name in the operator's zones, or one whose CNAMEs the job
// checks before ordering.
func (a *ACME) customerDNSChecked(name string) bool {
	if a.inZones(name) {
		return true
	}
	if a.opts.Checker == nil || a.opts.CNAMETarget == nil {
		return false
	}
	return !strings.HasPrefix(name, "*.") || a.opts.ChallengeTarget != nil
}

// Interface guards
var (
	_ Managed              = (*ACME)(nil)
	_ domainstore.Listener = (*ACME)(nil)
)
