package dnscheck

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestRandomTarget(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		got := RandomTarget("CName.Example.NET.")
		label, zone, ok := strings.Cut(got, ".")
		if !ok || zone != "cname.example.net" {
			t.Fatalf("RandomTarget = %q, want <label>.cname.example.net", got)
		}
		if len(label) != 16 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyz234567") != "" {
			t.Fatalf("label %q: want 16 lowercase base32 characters (80 bits)", label)
		}
		if _, ok := dns.IsDomainName(got); !ok {
			t.Fatalf("%q is not a DNS name", got)
		}
		if seen[got] {
			t.Fatalf("RandomTarget repeated %q", got)
		}
		seen[got] = true
	}
}
