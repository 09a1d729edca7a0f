package certsource

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/dnscheck"
)

// DefaultProvisioningTimeout is how long a first issuance may keep failing
// before its job stops retrying.
const DefaultProvisioningTimeout = 7 * 24 * time.Hour

// ProvisionGap is the shortest time between the start of an attempt and
// the start of one requested through Provision, per domain and instance:
// requests in between are answered with the later start, so that calling
// provision in a loop cannot hammer DNS or a CA.
const ProvisionGap = 10 * time.Second

// job is a domain's provisioning job.
type job struct {
	cancel context.CancelFunc
	policy domainstore.Policy
	wake   chan struct{} // an attempt was requested through Provision
	ended  atomic.Bool   // run returned: issued, or the domain is gone

	mu          sync.Mutex
	lastAttempt time.Time
}

// attempted records when an attempt started.
func (j *job) attempted(t time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.lastAttempt = t
}

// nextRequested is when an attempt requested now may start.
func (j *job) nextRequested() time.Time {
	j.mu.Lock()
	defer j.mu.Unlock()
	return later(time.Now(), j.lastAttempt.Add(ProvisionGap))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// launchLocked starts a job for d, replacing any job it has; requested
// makes its first attempt one requested through Provision. a.mu is held.
func (a *ACME) launchLocked(d *domainstore.Domain, requested bool) *job {
	if a.stopped {
		return nil
	}
	var last time.Time
	if old, ok := a.jobs[d.ID]; ok {
		old.cancel()
		old.mu.Lock()
		last = old.lastAttempt // the rate limit outlives the job
		old.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	j := &job{cancel: cancel, policy: *d.Policy, wake: make(chan struct{}, 1), lastAttempt: last}
	a.jobs[d.ID] = j
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer j.ended.Store(true)
		a.run(ctx, j, d.ID, d.Domain, *d.Policy, requested)
	}()
	return j
}

// Provision requests an attempt of the domain's provisioning job now: a
// customer who just fixed DNS need not wait for retries_at. The attempt
// starts at the returned time: now, or ProvisionGap after the start of
// the domain's previous attempt on this instance. A job that stopped
// (provisioning_timeout, or a policy the configuration cannot satisfy)
// starts again; a domain that has its certificate loads it again. The
// domain's status shows the request until the attempt reports.
func (a *ACME) Provision(ctx context.Context, id string) (time.Time, error) {
	d, err := a.store.GetDomain(ctx, id)
	if err != nil {
		return time.Time{}, err
	}
	if d.Policy == nil {
		return time.Time{}, dcerr.New(dcerr.NotManaged,
			"domain %s has no certificate_management_policy, so there is nothing to provision; set a policy with PATCH, or attach an uploaded certificate", id).
			WithDetail("domain_id", id)
	}
	at := time.Now()
	a.mu.Lock()
	if j, ok := a.jobs[id]; ok {
		at = j.nextRequested()
	}
	stopped := a.stopped
	a.mu.Unlock()
	if stopped {
		return time.Time{}, errors.New("certificate management is stopping")
	}
	at = ceilSecond(at)

	// the status first: the attempt may report before this returns
	started := time.Now().UTC().Truncate(time.Second)
	if d.Status != nil && d.Status.ProvisioningJob != nil && d.Status.ProvisioningJob.RetriesAt != nil {
		started = d.Status.ProvisioningJob.StartedAt // the series goes on
	}
	status := &domainstore.Status{ProvisioningJob: &domainstore.ProvisioningJob{
		Msg: "an attempt was requested through the API; it starts at retries_at", StartedAt: started, RetriesAt: &at,
	}}
	if d.Status != nil {
		status.RenewsAt = d.Status.RenewsAt
	}
	a.setStatus(ctx, id, *d.Policy, status)

	a.mu.Lock()
	defer a.mu.Unlock()
	if j, ok := a.jobs[id]; ok && !j.ended.Load() && j.policy == *d.Policy {
		select {
		case j.wake <- struct{}{}:
		default: // already requested
		}
	} else {
		a.launchLocked(d, true)
	}
	return at, nil
}

// inUse reports whether the domain has a certificate that has not
// expired: its job then keeps retrying past ProvisioningTimeout. When the
// storage cannot tell, it is taken as in use (retrying is the safe side).
func (a *ACME) inUse(ctx context.Context, id string) bool {
	d, err := a.store.GetDomain(ctx, id)
	if dcerr.CodeOf(err) == dcerr.NotFound {
		return false
	}
	if err != nil {
		return true
	}
	if d.CertificateID == "" {
		return false
	}
	c, err := a.store.GetCertificate(ctx, d.CertificateID)
	if dcerr.CodeOf(err) == dcerr.NotFound || dcerr.CodeOf(err) == dcerr.CertNotFound {
		return false
	}
	return err != nil || time.Now().Before(c.NotAfter)
}

// dns01Names remembers, per name that is not a wildcard, whether its
// certificate is obtained through DNS-01 (its _acme-challenge CNAME was in
// place when the job ordered), so that CertMagic's renewals use the same
// challenge. Process-wide, like the certificate cache.
var dns01Names sync.Map // name -> bool

// usesDNS01 reports whether name's orders go through DNS-01.
func (a *ACME) usesDNS01(name string) bool {
	if strings.HasPrefix(name, "*.") {
		return true
	}
	v, ok := dns01Names.Load(name)
	return ok && v.(bool)
}

// setDNS01 records how name's certificate is obtained.
func (a *ACME) setDNS01(name string, dns01 bool) {
	if !strings.HasPrefix(name, "*.") {
		dns01Names.Store(name, dns01)
	}
}

// learnDNS01 finds out, for a domain whose stored certificate was loaded
// without an order (a restart), whether its renewals go through DNS-01:
// when it has an acme_challenge_cname_target and that CNAME is in place.
func (a *ACME) learnDNS01(ctx context.Context, id, name string) {
	if strings.HasPrefix(name, "*.") || a.opts.Checker == nil {
		return
	}
	if _, known := dns01Names.Load(name); known {
		return
	}
	d, err := a.store.GetDomain(ctx, id)
	if err != nil {
		return
	}
	if d.ACMEChallengeCNAMETarget == nil {
		a.setDNS01(name, false)
		return
	}
	err = a.opts.Checker.CheckCNAME(ctx, "_acme-challenge."+name, *d.ACMEChallengeCNAMETarget)
	var de *dnscheck.Error
	if err == nil || (errors.As(err, &de) && !de.Temporary) {
		a.setDNS01(name, err == nil)
	}
}
