package caddymod

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
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
		Emit:                emitNow,
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
		if _, ok := a.dnsProvider.(certmagic.DNSProvider); ok {
			opts.DNS01Provider = true
		}
	case a.DNSServer == nil && a.globalDNS:
		// no dns_server here: the tls app's global "dns" provider
		opts.DNS01Provider = true
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
