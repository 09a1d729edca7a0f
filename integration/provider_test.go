package integration

import (
	"net/http/httptest"
	"testing"

	"github.com/miekg/dns"
)

// providerEnv starts Caddy (the test build, with dns.providers.testresolver)
// whose DNS-01 records are written through a DNS provider into the test
// resolver, which answers SOA for the zones it hosts. edit sets up the app
// (and cfg, for the tls app's global dns option).
func providerEnv(t *testing.T, edit func(app map[string]any, endpoint string), mutate func(cfg map[string]any, endpoint string)) *managed {
	t.Helper()
	p := getPebble(t)
	ctl := httptest.NewServer(p.DNS.ControlHandler())
	t.Cleanup(ctl.Close)
	for _, z := range []string{challengeZone, operatorZone} {
		p.DNS.SetSOA(z)
		t.Cleanup(func() { p.DNS.UnsetSOA(z) })
	}
	opts := caddyOpts{Bin: testCaddyBin(t)}
	if mutate != nil {
		opts.Mutate = func(cfg map[string]any, _ *caddyProc) { mutate(cfg, ctl.URL) }
	}
	m := startManagedWith(t, opts, func(app map[string]any) {
		delete(app, "dns_server")
		// the test resolver has no authoritative name servers to ask
		app["propagation_timeout"] = "-1s"
		app["retry_min_interval"], app["retry_max_interval"] = "1s", "2s"
		edit(app, ctl.URL)
	})
	p.DNS.Undelegate(challengeZone) // no dns_server: the provider's records are the resolver's own
	return m
}

// TestDNSProviderDNS01: with dns_provider, CertMagic's DNS-01 solver writes
// each record through the provider at its name: a customer's wildcard at
// its acme_challenge_cname_target, and a wildcard in the operator's own
// zone at _acme-challenge.<base> (which the built-in server could not
// serve); both are issued and the records are removed after.
func TestDNSProviderDNS01(t *testing.T) {
	m := providerEnv(t, func(app map[string]any, endpoint string) {
		app["dns_provider"] = map[string]any{"name": "testresolver", "endpoint": endpoint}
	}, nil)

	const customer, base = "*.provider-customer.test", "provider-customer.test"
	id, obj := m.createManaged(t, customer, nil)
	acmeTarget := obj["acme_challenge_cname_target"].(string)
	m.setCNAME(t, "_acme-challenge."+base, acmeTarget)
	d := m.waitIssued(t, id)
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), customer, "ecdsa")
	m.expectServesManaged(t, "x."+base, cert)

	const own = "*.inzone.operator.test"
	ownID, _ := m.createManaged(t, own, nil)
	d = m.waitIssued(t, ownID)
	ownCert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), own, "ecdsa")
	m.expectServesManaged(t, "x.inzone.operator.test", ownCert)

	for _, name := range []string{acmeTarget, "_acme-challenge.inzone.operator.test"} {
		if r, err := dnsQuery("udp", m.p.DNSAddr, name, dns.TypeTXT); err != nil || len(r.Answer) != 0 {
			t.Errorf("TXT %s after issuance: %v, err %v; want the provider to have removed it", name, r, err)
		}
	}
}

// TestGlobalDNSProvider: with neither dns_provider nor dns_server, DNS-01
// goes through the tls app's global dns provider (the Caddyfile's global
// dns option), for the operator's own wildcards too.
func TestGlobalDNSProvider(t *testing.T) {
	m := providerEnv(t, func(map[string]any, string) {}, func(cfg map[string]any, endpoint string) {
		cfg["apps"].(map[string]any)["tls"].(map[string]any)["dns"] = map[string]any{"name": "testresolver", "endpoint": endpoint}
	})
	const own = "*.global.operator.test"
	id, _ := m.createManaged(t, own, nil)
	d := m.waitIssued(t, id)
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), own, "ecdsa")
	m.expectServesManaged(t, "x.global.operator.test", cert)
}
