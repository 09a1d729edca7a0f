package bundle

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"testing"
)

func TestCovers(t *testing.T) {
	cert := func(cn string, dns ...string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
	}
	ipOnly := cert("cn.example.com")
	ipOnly.IPAddresses = []net.IP{net.ParseIP("192.0.2.1")}
	tests := []struct {
		name   string
		leaf   *x509.Certificate
		domain string
		want   bool
	}{
		{"exact", cert("", "a.example.com"), "a.example.com", true},
		{"second san", cert("", "b.example.com", "a.example.com"), "a.example.com", true},
		{"case and trailing dot", cert("", "A.Example.COM."), "a.example.com.", true},
		{"other name", cert("", "b.example.com"), "a.example.com", false},
		{"wildcard covers one label", cert("", "*.example.com"), "a.example.com", true},
		{"wildcard covers the wildcard", cert("", "*.example.com"), "*.example.com", true},
		{"wildcard does not cover the apex", cert("", "*.example.com"), "example.com", false},
		{"wildcard does not cover two labels", cert("", "*.example.com"), "a.b.example.com", false},
		{"wildcard does not cover a deeper wildcard", cert("", "*.example.com"), "*.a.example.com", false},
		{"name does not cover the wildcard", cert("", "a.example.com"), "*.example.com", false},
		{"deeper wildcard", cert("", "*.a.example.com"), "b.a.example.com", true},
		{"partial wildcard is not a wildcard", cert("", "f*.example.com"), "foo.example.com", false},
		{"partial wildcard never matches", cert("", "f*.example.com"), "f*.example.com", false},
		{"double wildcard", cert("", "*.*.example.com"), "*.*.example.com", false},
		{"bare star", cert("", "*"), "*", false},
		{"empty label", cert("", "*.example.com"), ".example.com", false},
		{"cn used without sans", cert("a.example.com"), "a.example.com", true},
		{"wildcard cn used without sans", cert("*.example.com"), "a.example.com", true},
		{"cn ignored with dns sans", cert("a.example.com", "b.example.com"), "a.example.com", false},
		{"cn ignored with ip sans", ipOnly, "cn.example.com", false},
		{"empty cn", cert(""), "", false},
		{"empty domain", cert("", "a.example.com"), "", false},
		{"nil leaf", nil, "a.example.com", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Covers(tt.leaf, tt.domain); got != tt.want {
				t.Errorf("Covers(%q) = %v, want %v", tt.domain, got, tt.want)
			}
		})
	}
}

func TestCoversParsedLeaf(t *testing.T) {
	leaf := pki(t).ecLeaf.cert // a.example.com, *.wild.example.com
	for domain, want := range map[string]bool{
		"a.example.com":      true,
		"x.wild.example.com": true,
		"*.wild.example.com": true,
		"wild.example.com":   false,
		"*.example.com":      false,
		"127.0.0.1":          false,
	} {
		if got := Covers(leaf, domain); got != want {
			t.Errorf("Covers(%q) = %v, want %v", domain, got, want)
		}
	}
}
