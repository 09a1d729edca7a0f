package caddymod

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/domaincerts/caddy-domaincerts/internal/challengedns"
	"github.com/domaincerts/caddy-domaincerts/internal/dnscheck"
)

// DNSServerConfig configures the built-in authoritative DNS server for the
// challenge zone.
type DNSServerConfig struct {
	// The address to listen on, UDP and TCP. Delegate challenge_zone to
	// it (NS records) so that ACME CAs reach it. Default: ":53".
	Listen string `json:"listen,omitempty"`

	// The host name of this name server, for SOA and NS answers.
	// Default: "ns1.<challenge_zone>".
	NS string `json:"ns,omitempty"`
}

// dnsServers holds the running built-in DNS servers by listen address.
// A reloaded config reuses its predecessor's server instead of failing to
// bind the same address.
var dnsServers = caddy.NewUsagePool()

type dnsServer struct{ *challengedns.Server }

func (s dnsServer) Destruct() error { return s.Stop() }

// startDNSServer starts (or reuses) the built-in DNS server.
func (a *App) startDNSServer() error {
	if a.DNSServer == nil {
		return nil
	}
	listen := a.DNSServer.Listen
	if listen == "" {
		listen = ":53"
	}
	key := "dns|" + listen
	_, _, err := dnsServers.LoadOrNew(key, func() (caddy.Destructor, error) {
		srv := &challengedns.Server{
			Zones:  []string{a.ChallengeZone},
			NS:     a.DNSServer.NS,
			TXT:    a.txtStore(),
			Logger: a.log.Named("dns"),
		}
		addr, err := srv.Start(listen)
		if err != nil {
			return nil, fmt.Errorf("starting dns_server on %s: %w", listen, err)
		}
		a.log.Info("built-in dns server listening", zap.String("address", addr.String()), zap.String("zone", a.ChallengeZone))
		return dnsServer{srv}, nil
	})
	if err != nil {
		return err
	}
	a.dnsKey = key
	return nil
}

// txtStore keeps DNS-01 TXT records in the app's current storage.
func (a *App) txtStore() *challengedns.TXTStore {
	store := a.inst.store
	return &challengedns.TXTStore{Storage: func() certmagic.Storage { return store.Storage() }}
}

// acmeOptions assembles the options of the ACME manager.
func (a *App) acmeOptions(authorities map[string]certsource.Authority) certsource.ACMEOptions {
	opts := certsource.ACMEOptions{
		Authorities:         authorities,
		Zones:               a.Zones,
		Checker:             &dnscheck.Checker{Resolvers: a.Resolvers},
		RetryMin:            time.Duration(a.RetryMinInterval),
		RetryMax:            time.Duration(a.RetryMaxInterval),
		ProvisioningTimeout: time.Duration(a.ProvisioningTimeout),
		EdgeAddresses:       a.edgeAddresses(),
		DelegateAll:         a.DelegateDNS01 == "all",
		RenewalWindowRatio:  a.RenewalWindowRatio,
		Storage:             certsource.ChallengeMirror(a.inst.store.Storage(), policyIssuerKeys(a.ctx)),
		Logger:              a.log.Named("acme"),
	}
	switch {
	case a.CNAMETarget != "":
		target := strings.ToLower(strings.TrimSuffix(a.CNAMETarget, "."))
		opts.CNAMETarget = func(string) string { return target }
	case a.CNAMEZone != "":
		zone := strings.ToLower(strings.TrimSuffix(a.CNAMEZone, "."))
		opts.CNAMETarget = func(string) string { return dnscheck.RandomTarget(zone) }
	}
	if a.ChallengeZone != "" {
		zone := strings.ToLower(strings.TrimSuffix(a.ChallengeZone, "."))
		opts.ChallengeTarget = func(string) string { return dnscheck.RandomTarget(zone) }
	}
	switch {
	case a.dnsProvider != nil:
		provider, ok := a.dnsProvider.(certmagic.DNSProvider)
		if ok {
			zones := append([]string{a.ChallengeZone}, a.Zones...)
			opts.DNS01 = func(target func(string) (string, error)) acmez.Solver {
				return newZoneRouter(provider, zones, target)
			}
			opts.DNS01InZones = true
		}
	default:
		// the built-in store: served by this process's dns_server, or by
		// another instance's on the same storage
		txt := a.txtStore()
		opts.DNS01 = func(target func(string) (string, error)) acmez.Solver {
			return &challengedns.Solver{TXT: txt, Target: target}
		}
	}
	return opts
}

// zoneRouter writes DNS-01 records through a DNS provider into whichever
// of the zones holds the record's name: the challenge zone for customer
// wildcards, an operator zone for wildcards inside it.
type zoneRouter struct {
	target  func(string) (string, error)
	solvers map[string]*challengedns.ProviderSolver // by zone
}

func newZoneRouter(provider certmagic.DNSProvider, zones []string, target func(string) (string, error)) *zoneRouter {
	r := &zoneRouter{target: target, solvers: make(map[string]*challengedns.ProviderSolver)}
	for _, z := range zones {
		z = strings.ToLower(strings.TrimSuffix(z, "."))
		if z != "" {
			r.solvers[z] = &challengedns.ProviderSolver{Provider: provider, Zone: z, Target: target}
		}
	}
	return r
}

// solverFor returns the solver of the longest zone holding the challenge's
// record name.
func (r *zoneRouter) solverFor(chal acme.Challenge) (*challengedns.ProviderSolver, error) {
	fqdn, err := r.target(chal.Identifier.Value)
	if err != nil {
		return nil, err
	}
	fqdn = strings.ToLower(strings.TrimSuffix(fqdn, "."))
	var best string
	for z := range r.solvers {
		if (fqdn == z || strings.HasSuffix(fqdn, "."+z)) && len(z) > len(best) {
			best = z
		}
	}
	if best == "" {
		return nil, fmt.Errorf("no configured zone holds %s; add its zone to zones or challenge_zone", fqdn)
	}
	return r.solvers[best], nil
}

// Present writes the TXT record.
func (r *zoneRouter) Present(ctx context.Context, chal acme.Challenge) error {
	s, err := r.solverFor(chal)
	if err != nil {
		return err
	}
	return s.Present(ctx, chal)
}

// Wait waits for the record to propagate, if the solver does.
func (r *zoneRouter) Wait(ctx context.Context, chal acme.Challenge) error {
	s, err := r.solverFor(chal)
	if err != nil {
		return err
	}
	return s.Wait(ctx, chal)
}

// CleanUp removes the TXT record.
func (r *zoneRouter) CleanUp(ctx context.Context, chal acme.Challenge) error {
	s, err := r.solverFor(chal)
	if err != nil {
		return err
	}
	return s.CleanUp(ctx, chal)
}

// Interface guards
var (
	_ acmez.Solver = (*zoneRouter)(nil)
	_ acmez.Waiter = (*zoneRouter)(nil)
)

// edgeAddresses parses edge_addresses (Validate has checked them).
func (a *App) edgeAddresses() []netip.Addr {
	var out []netip.Addr
	for _, s := range a.EdgeAddresses {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}
