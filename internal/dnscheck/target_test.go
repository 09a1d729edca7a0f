package dnscheck

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestTarget(t *testing.T) {
	tests := []struct {
		name string
		fn   func(zone, name string) string
		pfx  string
		zone string
		in   string
	}{
		{"cname", Target, "domaincerts-cname\x00", "cname.example.net", "app.customer.com"},
		{"cname wildcard", Target, "domaincerts-cname\x00", "cname.example.net", "*.customer.com"},
		{"challenge", ChallengeTarget, "domaincerts-acme\x00", "acme.example.net", "customer.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sum := sha256.Sum256([]byte(tt.pfx + tt.in))
			label := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:10]))
			want := label + "." + tt.zone
			if got := tt.fn(tt.zone, tt.in); got != want {
				t.Errorf("got %q, want %q", got, want)
			}
			if len(label) != 16 {
				t.Errorf("label %q has %d characters, want 16", label, len(label))
			}
			if _, ok := dns.IsDomainName(want); !ok {
				t.Errorf("%q is not a DNS name", want)
			}
			// Normalized input gives the same name.
			if got := tt.fn(strings.ToUpper(tt.zone)+".", strings.ToUpper(tt.in)+"."); got != want {
				t.Errorf("normalized: got %q, want %q", got, want)
			}
		})
	}
	if Target("z.example", "customer.com") == ChallengeTarget("z.example", "customer.com") {
		t.Error("Target and ChallengeTarget collide")
	}
	if Target("z.example", "a.customer.com") == Target("z.example", "b.customer.com") {
		t.Error("Target is not unique per name")
	}
}

// Known values, computed independently, so that a change to the derivation
// fails loudly: every customer's DNS depends on it.
func TestTargetStable(t *testing.T) {
	if got, want := Target("cname.example.net", "app.customer.com"), "xooahswakq7bh6pa.cname.example.net"; got != want {
		t.Errorf("Target = %q, want %q", got, want)
	}
	if got, want := ChallengeTarget("acme.example.net", "customer.com"), "wuldgu5irjkdildc.acme.example.net"; got != want {
		t.Errorf("ChallengeTarget = %q, want %q", got, want)
	}
}
