package challengedns

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startServer starts a Server for zone acme.example.net (and
// other.example.org) on 127.0.0.1 and returns it and its address.
func startServer(t *testing.T, txt *TXTStore) (*Server, string) {
	t.Helper()
	s := &Server{Zones: []string{"acme.example.net", "Other.Example.ORG."}, TXT: txt}
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return s, addr.String()
}

type query struct {
	name   string
	qtype  uint16
	class  uint16 // default IN
	edns   int    // EDNS version + 1; 0 for none
	opcode int
}

func exchange(t *testing.T, network, addr string, q query) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(q.name, q.qtype)
	m.RecursionDesired = false
	m.Opcode = q.opcode
	if q.class != 0 {
		m.Question[0].Qclass = q.class
	}
	if q.edns > 0 {
		m.SetEdns0(1232, false)
		m.IsEdns0().SetVersion(uint8(q.edns - 1))
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s %s: %v", network, q.name, dns.TypeToString[q.qtype], err)
	}
	return resp
}

// txts returns the TXT strings in rrs, each record's strings joined.
func txts(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if txt, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(txt.Txt, ""))
		}
	}
	slices.Sort(out)
	return out
}

func types(rrs []dns.RR) string {
	var out []string
	for _, rr := range rrs {
		out = append(out, dns.TypeToString[rr.Header().Rrtype])
	}
	return strings.Join(out, ",")
}

func TestServer(t *testing.T) {
	ctx := context.Background()
	txt, fs := newStore(t)
	for name, values := range map[string][]string{
		"k1.acme.example.net":        {"v1", "v2"},
		"a.b.acme.example.net":       {"deep"},
		"x.other.example.org":        {"other"},
		"long.acme.example.net":      {strings.Repeat("z", 300)},
		"backslash.acme.example.net": {`a\b"c`},
	} {
		for _, v := range values {
			if err := txt.Add(ctx, name, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	expired := `{"values":["stale"],"expires":"2001-01-01T00:00:00Z"}`
	if err := fs.Store(ctx, "domaincerts/dns/txt/old.acme.example.net", []byte(expired)); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, txt)

	tests := []struct {
		name    string
		q       query
		rcode   int
		aa      bool
		answer  string   // RR types in the answer section
		txt     []string // TXT values in the answer
		soaAuth bool     // SOA in the authority section
		owner   string   // answer owner name, when set
	}{
		{name: "txt present", q: query{name: "k1.acme.example.net.", qtype: dns.TypeTXT}, aa: true, answer: "TXT,TXT", txt: []string{"v1", "v2"}},
		{name: "txt case-insensitive", q: query{name: "K1.Acme.EXAMPLE.net.", qtype: dns.TypeTXT}, aa: true, answer: "TXT,TXT", txt: []string{"v1", "v2"}, owner: "K1.Acme.EXAMPLE.net."},
		{name: "txt over 255 bytes", q: query{name: "long.acme.example.net.", qtype: dns.TypeTXT}, aa: true, answer: "TXT", txt: []string{strings.Repeat("z", 300)}},
		{name: "txt with backslash", q: query{name: "backslash.acme.example.net.", qtype: dns.TypeTXT}, aa: true, answer: "TXT", txt: []string{`a\\b\"c`}},
		{name: "txt in second zone", q: query{name: "x.other.example.org.", qtype: dns.TypeTXT}, aa: true, answer: "TXT", txt: []string{"other"}},
		{name: "any", q: query{name: "k1.acme.example.net.", qtype: dns.TypeANY}, aa: true, answer: "TXT,TXT", txt: []string{"v1", "v2"}},
		{name: "other type is nodata", q: query{name: "k1.acme.example.net.", qtype: dns.TypeA}, aa: true, soaAuth: true},
		{name: "ns below apex is nodata", q: query{name: "k1.acme.example.net.", qtype: dns.TypeNS}, aa: true, soaAuth: true},
		{name: "never had records is nxdomain", q: query{name: "never.acme.example.net.", qtype: dns.TypeTXT}, rcode: dns.RcodeNameError, aa: true, soaAuth: true},
		{name: "nxdomain for any type", q: query{name: "never.acme.example.net.", qtype: dns.TypeAAAA}, rcode: dns.RcodeNameError, aa: true, soaAuth: true},
		{name: "junk name is nxdomain", q: query{name: `we\.ird.acme.example.net.`, qtype: dns.TypeTXT}, rcode: dns.RcodeNameError, aa: true, soaAuth: true},
		{name: "empty non-terminal is nodata", q: query{name: "b.acme.example.net.", qtype: dns.TypeTXT}, aa: true, soaAuth: true},
		{name: "expired is nodata", q: query{name: "old.acme.example.net.", qtype: dns.TypeTXT}, aa: true, soaAuth: true},
		{name: "apex txt is nodata", q: query{name: "acme.example.net.", qtype: dns.TypeTXT}, aa: true, soaAuth: true},
		{name: "apex soa", q: query{name: "acme.example.net.", qtype: dns.TypeSOA}, aa: true, answer: "SOA"},
		{name: "apex ns", q: query{name: "ACME.example.net.", qtype: dns.TypeNS}, aa: true, answer: "NS", owner: "ACME.example.net."},
		{name: "apex any", q: query{name: "acme.example.net.", qtype: dns.TypeANY}, aa: true, answer: "SOA,NS"},
		{name: "second zone apex soa", q: query{name: "other.example.org.", qtype: dns.TypeSOA}, aa: true, answer: "SOA"},
		{name: "outside zone refused", q: query{name: "example.com.", qtype: dns.TypeTXT}, rcode: dns.RcodeRefused},
		{name: "parent zone refused", q: query{name: "example.net.", qtype: dns.TypeSOA}, rcode: dns.RcodeRefused},
		{name: "suffix without dot refused", q: query{name: "xacme.example.net.", qtype: dns.TypeTXT}, rcode: dns.RcodeRefused},
		{name: "chaos class refused", q: query{name: "k1.acme.example.net.", qtype: dns.TypeTXT, class: dns.ClassCHAOS}, rcode: dns.RcodeRefused},
		{name: "axfr refused", q: query{name: "acme.example.net.", qtype: dns.TypeAXFR}, rcode: dns.RcodeRefused},
		{name: "edns", q: query{name: "k1.acme.example.net.", qtype: dns.TypeTXT, edns: 1}, aa: true, answer: "TXT,TXT", txt: []string{"v1", "v2"}},
		{name: "edns version 1", q: query{name: "k1.acme.example.net.", qtype: dns.TypeTXT, edns: 2}, rcode: dns.RcodeBadVers},
		{name: "notify not implemented", q: query{name: "acme.example.net.", qtype: dns.TypeSOA, opcode: dns.OpcodeNotify}, rcode: dns.RcodeNotImplemented},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				resp := exchange(t, network, addr, tt.q)
				if resp.Rcode != tt.rcode {
					t.Fatalf("rcode = %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
				}
				if resp.Authoritative != tt.aa {
					t.Errorf("AA = %v, want %v", resp.Authoritative, tt.aa)
				}
				if resp.RecursionAvailable {
					t.Error("RA set by an authoritative-only server")
				}
				if got := types(resp.Answer); got != tt.answer {
					t.Errorf("answer types = %q, want %q", got, tt.answer)
				}
				if got := txts(resp.Answer); !slices.Equal(got, tt.txt) {
					t.Errorf("TXT = %q, want %q", got, tt.txt)
				}
				if tt.owner != "" && resp.Answer[0].Header().Name != tt.owner {
					t.Errorf("owner = %q, want %q", resp.Answer[0].Header().Name, tt.owner)
				}
				if tt.soaAuth {
					if len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != dns.TypeSOA {
						t.Fatalf("authority = %v, want the SOA", resp.Ns)
					}
					if !strings.HasSuffix(tt.q.name, resp.Ns[0].Header().Name) {
						t.Errorf("SOA owner %q is not the query's zone", resp.Ns[0].Header().Name)
					}
				} else if len(resp.Ns) != 0 {
					t.Errorf("authority = %v, want none", resp.Ns)
				}
				if (tt.q.edns > 0) != (resp.IsEdns0() != nil) {
					t.Errorf("OPT in response = %v, want %v", resp.IsEdns0() != nil, tt.q.edns > 0)
				}
			})
		}
	}

	t.Run("soa and ns content", func(t *testing.T) {
		resp := exchange(t, "udp", addr, query{name: "acme.example.net.", qtype: dns.TypeANY})
		soa := resp.Answer[0].(*dns.SOA)
		ns := resp.Answer[1].(*dns.NS)
		if soa.Ns != "ns1.acme.example.net." || ns.Ns != "ns1.acme.example.net." {
			t.Errorf("SOA mname %q, NS %q; want ns1.acme.example.net.", soa.Ns, ns.Ns)
		}
		if soa.Minttl != defaultTTL || soa.Hdr.Ttl != defaultTTL || ns.Hdr.Ttl != defaultTTL {
			t.Errorf("TTLs: SOA %d min %d, NS %d; want %d", soa.Hdr.Ttl, soa.Minttl, ns.Hdr.Ttl, defaultTTL)
		}
	})
}

func TestServerTruncation(t *testing.T) {
	ctx := context.Background()
	txt, _ := newStore(t)
	const name = "many.acme.example.net"
	var want []string
	for i := range 20 {
		v := fmt.Sprintf("%02d-%s", i, strings.Repeat("k", 40))
		want = append(want, v)
		if err := txt.Add(ctx, name, v); err != nil {
			t.Fatal(err)
		}
	}
	_, addr := startServer(t, txt)

	tests := []struct {
		network   string
		edns      int
		truncated bool
	}{
		{"udp", 0, true},  // 512 bytes
		{"udp", 1, false}, // 1232 bytes fit 20 × ~60
		{"tcp", 0, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s edns=%d", tt.network, tt.edns), func(t *testing.T) {
			c := &dns.Client{Net: tt.network, Timeout: 2 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion(name+".", dns.TypeTXT)
			if tt.edns > 0 {
				m.SetEdns0(4096, false)
			}
			resp, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Truncated != tt.truncated {
				t.Fatalf("TC = %v, want %v", resp.Truncated, tt.truncated)
			}
			if !tt.truncated && !slices.Equal(txts(resp.Answer), want) {
				t.Errorf("TXT = %q, want %q", txts(resp.Answer), want)
			}
			if tt.edns > 0 && resp.IsEdns0() == nil {
				t.Error("no OPT in the response")
			}
		})
	}
}

func TestServerLifecycle(t *testing.T) {
	txt, _ := newStore(t)
	s := &Server{Zones: []string{"acme.example.net"}, NS: "NS.Example.NET", TTL: 7, TXT: txt}
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start("127.0.0.1:0"); err == nil {
		t.Error("second Start = nil, want an error")
	}
	// TCP listens on the UDP port.
	resp := exchange(t, "tcp", addr.String(), query{name: "acme.example.net.", qtype: dns.TypeSOA})
	soa := resp.Answer[0].(*dns.SOA)
	if soa.Ns != "ns.example.net." || soa.Hdr.Ttl != 7 || soa.Minttl != 7 {
		t.Errorf("SOA = %v, want mname ns.example.net. and TTL 7", soa)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
	// The port is free again, and the server can start again.
	addr2, err := s.Start(addr.String())
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	exchange(t, "udp", addr2.String(), query{name: "acme.example.net.", qtype: dns.TypeSOA})
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}

	for _, bad := range []*Server{
		{TXT: txt},
		{Zones: []string{"acme.example.net"}},
		{Zones: []string{"bad/zone"}, TXT: txt},
		{Zones: []string{"acme.example.net"}, NS: "a..b", TXT: txt},
	} {
		if _, err := bad.Start("127.0.0.1:0"); err == nil {
			bad.Stop()
			t.Errorf("Start(%+v) = nil, want an error", bad)
		}
	}
	if _, err := (&Server{Zones: []string{"a.example"}, TXT: txt}).Start("127.0.0.1"); err == nil {
		t.Error("Start without a port = nil, want an error")
	}
}

// A storage failure answers SERVFAIL rather than a false NXDOMAIN.
func TestServerStorageError(t *testing.T) {
	txt, fs := newStore(t)
	if err := fs.Store(context.Background(), "domaincerts/dns/txt/bad.acme.example.net", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, txt)
	resp := exchange(t, "udp", addr, query{name: "bad.acme.example.net.", qtype: dns.TypeTXT})
	if resp.Rcode != dns.RcodeServerFailure || resp.Authoritative {
		t.Errorf("rcode %s AA %v, want SERVFAIL without AA", dns.RcodeToString[resp.Rcode], resp.Authoritative)
	}
}

// Garbage and responses sent to the server get no answer or FORMERR, and
// the server keeps answering.
func TestServerJunk(t *testing.T) {
	txt, _ := newStore(t)
	_, addr := startServer(t, txt)
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp := new(dns.Msg)
	resp.SetQuestion("acme.example.net.", dns.TypeSOA)
	resp.Response = true
	packed, _ := resp.Pack()
	for _, junk := range [][]byte{{}, {0}, []byte("hello, world"), packed, make([]byte, 600)} {
		if _, err := conn.Write(junk); err != nil {
			t.Fatal(err)
		}
	}
	exchange(t, "udp", addr, query{name: "acme.example.net.", qtype: dns.TypeSOA})
}
