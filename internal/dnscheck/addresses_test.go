package dnscheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// addrFixture answers A and AAAA queries from its maps; a name in cnames
// answers with the CNAME and the target's addresses, as a resolver does.
type addrFixture struct {
	addrs    map[string][]string // owner -> addresses
	cnames   map[string]string
	servfail map[string]bool
}

func (f *addrFixture) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if f.servfail[name] {
		m.Rcode = dns.RcodeServerFailure
		_ = w.WriteMsg(m)
		return
	}
	owner := name
	if target, ok := f.cnames[name]; ok {
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: target})
		owner = target
	}
	list, ok := f.addrs[owner]
	if !ok && owner == name {
		m.Rcode = dns.RcodeNameError
	}
	for _, s := range list {
		ip := net.ParseIP(s)
		hdr := dns.RR_Header{Name: owner, Class: dns.ClassINET, Ttl: 60}
		switch {
		case ip.To4() != nil && q.Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip.To4()})
		case ip.To4() == nil && q.Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
		}
	}
	_ = w.WriteMsg(m)
}

func TestCheckAddresses(t *testing.T) {
	good := serve(t, &addrFixture{
		addrs: map[string][]string{
			"apex.customer.com.":    {"203.0.113.10"},
			"dual.customer.com.":    {"203.0.113.10", "2001:db8::10"},
			"mixed.customer.com.":   {"203.0.113.10", "198.51.100.7"},
			"v6wrong.customer.com.": {"203.0.113.10", "2001:db8::99"},
			"edge.example.net.":     {"203.0.113.11"},
			"empty.customer.com.":   nil,
		},
		cnames:   map[string]string{"www.customer.com.": "edge.example.net."},
		servfail: map[string]bool{"broken.customer.com.": true},
	})
	edges := []netip.Addr{netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("203.0.113.11"), netip.MustParseAddr("2001:db8::10")}
	tests := []struct {
		name      string
		wantErr   string
		found     string
		temporary bool
	}{
		{name: "apex.customer.com"},
		{name: "dual.customer.com"},
		// a CNAME fails whatever it reaches: a former customer's CNAME to
		// their target also reaches the edge
		{name: "www.customer.com", wantErr: "found a CNAME to edge.example.net", found: "edge.example.net"},
		{name: "mixed.customer.com", wantErr: "(found A 198.51.100.7, which is not an edge address)", found: "198.51.100.7"},
		{name: "v6wrong.customer.com", wantErr: "(found AAAA 2001:db8::99, which is not an edge address)", found: "2001:db8::99"},
		{name: "empty.customer.com", wantErr: "(found no A or AAAA record)"},
		{name: "missing.customer.com", wantErr: "point missing.customer.com at the edge: give it A/AAAA records with edge addresses only (203.0.113.10, 203.0.113.11, 2001:db8::10) (found no A or AAAA record)"},
		{name: "broken.customer.com", wantErr: "could not check the A/AAAA records of broken.customer.com: no resolver answered (SERVFAIL from " + good + ")", temporary: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Checker{Resolvers: []string{good}, Timeout: 2 * time.Second}
			err := c.CheckAddresses(context.Background(), tt.name, edges)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckAddresses: %v", err)
				}
				return
			}
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("CheckAddresses = %v, want *Error", err)
			}
			if !strings.Contains(de.Msg, tt.wantErr) || de.Found != tt.found || de.Temporary != tt.temporary {
				t.Errorf("got %q (found %q, temporary %v); want %q (found %q, temporary %v)", de.Msg, de.Found, de.Temporary, tt.wantErr, tt.found, tt.temporary)
			}
		})
	}
}
