package caddymod

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/mholt/acmez/v3/acme"
)

// nopSolver is a DNS-01 solver that solves nothing; the issuer under test
// is only inspected.
type nopSolver struct{}

func (nopSolver) Present(context.Context, acme.Challenge) error { return nil }
func (nopSolver) CleanUp(context.Context, acme.Challenge) error { return nil }

// TestDNS01IssuerKeepsSettings: the DNS-01 issuer built from an ACME
// issuer keeps its CA, account, preferred chains, certificate lifetime and
// network proxy.
func TestDNS01IssuerKeepsSettings(t *testing.T) {
	proxyURL, _ := url.Parse("http://proxy.example.net:3128")
	proxy := func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	tmpl := &caddytls.ACMEIssuer{
		CA:                  "https://ca.example.net/dir",
		Email:               "ops@example.net",
		Profile:             "shortlived",
		CertificateLifetime: caddy.Duration(72 * time.Hour),
		ACMETimeout:         caddy.Duration(3 * time.Minute),
		PreferredChains:     &caddytls.ChainPreference{Smallest: new(bool), RootCommonName: []string{"Root X"}},
	}
	*tmpl.PreferredChains.Smallest = true
	auth := acmeAuthority("le", tmpl, proxy, dnsProvider{})
	iss, err := auth.NewIssuer(certmagic.NewDefault(), certsource.DNS01{Solver: nopSolver{}})
	if err != nil {
		t.Fatal(err)
	}
	ai, ok := iss.(*certmagic.ACMEIssuer)
	if !ok {
		t.Fatalf("DNS-01 issuer is %T, want *certmagic.ACMEIssuer (an email is set)", iss)
	}
	if ai.CA != tmpl.CA || ai.Email != tmpl.Email || ai.Profile != tmpl.Profile {
		t.Errorf("CA, email, profile = %q, %q, %q", ai.CA, ai.Email, ai.Profile)
	}
	if ai.NotAfter != 72*time.Hour {
		t.Errorf("NotAfter = %s, want the certificate_lifetime 72h", ai.NotAfter)
	}
	if ai.CertObtainTimeout != 3*time.Minute {
		t.Errorf("CertObtainTimeout = %s, want 3m", ai.CertObtainTimeout)
	}
	if ai.PreferredChains.Smallest == nil || !*ai.PreferredChains.Smallest || len(ai.PreferredChains.RootCommonName) != 1 {
		t.Errorf("PreferredChains = %+v, want smallest and root Root X", ai.PreferredChains)
	}
	if ai.HTTPProxy == nil {
		t.Fatal("HTTPProxy is nil, want the issuer's network_proxy")
	}
	if u, _ := ai.HTTPProxy(&http.Request{URL: &url.URL{Scheme: "https", Host: "ca.example.net"}}); u == nil || u.String() != proxyURL.String() {
		t.Errorf("HTTPProxy gives %v, want %s", u, proxyURL)
	}
	if ai.DNS01Solver == nil {
		t.Error("DNS01Solver is nil")
	}
}
