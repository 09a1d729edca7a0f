package challengedns

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
)

// Solver solves DNS-01 challenges by writing the TXT record into a
// TXTStore, at the name Target chooses, for the built-in Server to answer.
// The customer's "_acme-challenge.<base>" must be a CNAME to that name.
//
// The store is shared storage, so the value is visible to every instance at
// once: Solver needs no propagation wait.
type Solver struct {
	// TXT is where the TXT values are written. Required.
	TXT *TXTStore

	// Target returns the fully-qualified name that holds the TXT record for
	// identifier, the challenge's Identifier.Value. For the authorization
	// of a wildcard "*.customer.com", ACME gives the base name
	// "customer.com" (RFC 8555 §7.1.3), the same as for "customer.com"
	// itself; both values then coexist at one name. Required.
	Target func(identifier string) (fqdn string, err error)
}

// Present writes the challenge's key authorization digest at the target.
func (s *Solver) Present(ctx context.Context, chal acme.Challenge) error {
	fqdn, err := target(s.Target, chal)
	if err != nil {
		return err
	}
	if err := s.TXT.Add(ctx, fqdn, chal.DNS01KeyAuthorization()); err != nil {
		return fmt.Errorf("presenting dns-01 challenge for %s: %w", chal.Identifier.Value, err)
	}
	return nil
}

// CleanUp removes what Present wrote. It runs even when ctx is already
// canceled, since a canceled order is a common reason for cleaning up.
func (s *Solver) CleanUp(ctx context.Context, chal acme.Challenge) error {
	fqdn, err := target(s.Target, chal)
	if err != nil {
		return err
	}
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	if err := s.TXT.Remove(ctx, fqdn, chal.DNS01KeyAuthorization()); err != nil {
		return fmt.Errorf("cleaning up dns-01 challenge for %s: %w", chal.Identifier.Value, err)
	}
	return nil
}

// ProviderSolver solves DNS-01 challenges like Solver, but writes the TXT
// record through a libdns provider (a Caddy dns.providers.* module) into
// Zone, for operators whose challenge zone is hosted by a DNS provider
// rather than by the built-in Server.
//
// It remembers the records it appended, with any provider data, until
// CleanUp; after a restart it deletes by name and value. It is safe for
// concurrent use and must not be copied after first use.
type ProviderSolver struct {
	// Provider writes the records. Required.
	Provider certmagic.DNSProvider

	// Zone is the provider's zone that holds the targets, e.g.
	// "acme.example.net". Every target must be at or below it. Required.
	Zone string

	// Target returns the fully-qualified name that holds the TXT record for
	// identifier, as for Solver. Required.
	Target func(identifier string) (fqdn string, err error)

	// TTL of the TXT records. Default: 0, the provider's default.
	TTL time.Duration

	// PropagationDelay is how long Wait pauses after Present before the CA
	// is told to validate, for providers whose name servers are slow to
	// see new records. Default: 0, no pause.
	PropagationDelay time.Duration

	mu      sync.Mutex
	records map[presented][]libdns.Record
}

type presented struct{ fqdn, value string }

// Present appends a TXT record holding the challenge's key authorization
// digest at the target.
func (p *ProviderSolver) Present(ctx context.Context, chal acme.Challenge) error {
	fqdn, err := target(p.Target, chal)
	if err != nil {
		return err
	}
	zone, rec, err := p.record(fqdn, chal.DNS01KeyAuthorization())
	if err != nil {
		return err
	}
	added, err := p.Provider.AppendRecords(ctx, zone, []libdns.Record{rec})
	if err != nil {
		return fmt.Errorf("presenting dns-01 challenge for %s: appending TXT record in zone %s: %w",
			chal.Identifier.Value, zone, err)
	}
	if len(added) == 0 {
		added = []libdns.Record{rec}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.records == nil {
		p.records = make(map[presented][]libdns.Record)
	}
	k := presented{fqdn, chal.DNS01KeyAuthorization()}
	p.records[k] = append(p.records[k], added...)
	return nil
}

// Wait pauses for PropagationDelay; acmez calls it between Present and
// asking the CA to validate.
func (p *ProviderSolver) Wait(ctx context.Context, _ acme.Challenge) error {
	if p.PropagationDelay <= 0 {
		return nil
	}
	t := time.NewTimer(p.PropagationDelay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CleanUp deletes the TXT record that Present appended. It runs even when
// ctx is already canceled.
func (p *ProviderSolver) CleanUp(ctx context.Context, chal acme.Challenge) error {
	fqdn, err := target(p.Target, chal)
	if err != nil {
		return err
	}
	value := chal.DNS01KeyAuthorization()
	zone, rec, err := p.record(fqdn, value)
	if err != nil {
		return err
	}
	k := presented{fqdn, value}
	p.mu.Lock()
	recs := p.records[k]
	delete(p.records, k)
	p.mu.Unlock()
	if len(recs) == 0 {
		recs = []libdns.Record{rec}
	}
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	if _, err := p.Provider.DeleteRecords(ctx, zone, recs); err != nil {
		return fmt.Errorf("cleaning up dns-01 challenge for %s: deleting TXT record in zone %s: %w",
			chal.Identifier.Value, zone, err)
	}
	return nil
}

// record returns the zone as libdns expects it (with trailing dot) and the
// TXT record for value at fqdn, named relative to the zone.
func (p *ProviderSolver) record(fqdn, value string) (string, libdns.TXT, error) {
	if p.Provider == nil {
		return "", libdns.TXT{}, errors.New("no DNS provider configured for dns-01 challenges")
	}
	zone := normalizeName(p.Zone)
	if !validName(zone) {
		return "", libdns.TXT{}, fmt.Errorf("invalid dns-01 challenge zone %q", p.Zone)
	}
	zone += "."
	name := normalizeName(fqdn) + "."
	if !dns.IsSubDomain(zone, name) {
		return "", libdns.TXT{}, fmt.Errorf("challenge target %s is not in zone %s; set the zone that holds the targets", fqdn, zone)
	}
	return zone, libdns.TXT{Name: libdns.RelativeName(name, zone), TTL: p.TTL, Text: value}, nil
}

// target returns the checked target name for chal.
func target(fn func(string) (string, error), chal acme.Challenge) (string, error) {
	if chal.Type != acme.ChallengeTypeDNS01 {
		return "", fmt.Errorf("solving %s challenge: only dns-01 is supported", chal.Type)
	}
	if fn == nil {
		return "", errors.New("no target configured for dns-01 challenges")
	}
	fqdn, err := fn(chal.Identifier.Value)
	if err != nil {
		return "", fmt.Errorf("choosing dns-01 target for %s: %w", chal.Identifier.Value, err)
	}
	if !validName(normalizeName(fqdn)) {
		return "", fmt.Errorf("choosing dns-01 target for %s: invalid name %q", chal.Identifier.Value, fqdn)
	}
	return fqdn, nil
}

// cleanupContext returns a context that outlives ctx's cancellation, with
// a bound of its own.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
}

// Interface guards
var (
	_ acmez.Solver = (*Solver)(nil)
	_ acmez.Solver = (*ProviderSolver)(nil)
	_ acmez.Waiter = (*ProviderSolver)(nil)
)
