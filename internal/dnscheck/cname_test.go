package dnscheck

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fixture is a tiny recursive-resolver stand-in: it answers from a fixed
// set of records, with DNS wildcard matching one label deep.
type fixture struct {
	cnames   map[string]string // owner → target
	a        map[string]bool   // owners with an A record only
	servfail map[string]bool
	refused  map[string]bool
	truncate map[string]bool // truncated over UDP, answered over TCP
}

func (f *fixture) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	switch {
	case f.servfail[name]:
		m.Rcode = dns.RcodeServerFailure
	case f.refused[name]:
		m.Rcode = dns.RcodeRefused
	case f.truncate[name] && udp:
		m.Truncated = true
	default:
		owner := name
		target, ok := f.cnames[owner]
		if !ok && !f.a[owner] {
			if i := strings.IndexByte(owner, '.'); i >= 0 {
				owner = "*" + owner[i:]
				target, ok = f.cnames[owner]
			}
		}
		switch {
		case ok && q.Qtype == dns.TypeCNAME:
			m.Answer = append(m.Answer, &dns.CNAME{
				Hdr:    dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60},
				Target: target,
			})
		case ok || f.a[owner]:
			// NODATA
		default:
			m.Rcode = dns.RcodeNameError
		}
	}
	_ = w.WriteMsg(m)
}

// serve runs h on 127.0.0.1 over UDP and TCP on one free port and returns
// the address.
func serve(t *testing.T, h dns.Handler) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if attempt == 10 {
			t.Fatal(err)
		}
	}
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	udp := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: notify}
	tcp := &dns.Server{Listener: ln, Handler: h, NotifyStartedFunc: notify}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	<-started
	<-started
	t.Cleanup(func() {
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
	})
	return pc.LocalAddr().String()
}

// closedPort returns a 127.0.0.1 address that nothing listens on, so a
// UDP query to it is refused at once.
func closedPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func TestCheckCNAME(t *testing.T) {
	const target = "3f8k2.cname.example.net"
	good := serve(t, &fixture{
		cnames: map[string]string{
			"app.customer.com.":             target + ".",
			"case.customer.com.":            "3F8K2.CNAME.Example.NET.",
			"wrong.customer.com.":           "other.example.org.",
			"*.wild.customer.com.":          target + ".",
			"big.customer.com.":             target + ".",
			"_acme-challenge.customer.com.": "abc.acme.example.net.",
		},
		a:        map[string]bool{"apex.customer.com.": true},
		refused:  map[string]bool{"refused.customer.com.": true},
		truncate: map[string]bool{"big.customer.com.": true},
	})
	servfail := serve(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		_ = w.WriteMsg(m)
	}))
	down := closedPort(t)

	tests := []struct {
		name      string
		resolvers []string
		qname     string
		target    string
		wantErr   string // substring of the message; "" for success
		found     string
		temporary bool
	}{
		{name: "match", resolvers: []string{good}, qname: "app.customer.com", target: target},
		{name: "trailing dots", resolvers: []string{good}, qname: "app.customer.com.", target: target + "."},
		{name: "case in record", resolvers: []string{good}, qname: "case.customer.com", target: target},
		{name: "case in query", resolvers: []string{good}, qname: "APP.Customer.COM", target: "3F8K2.cname.example.net"},
		{name: "wildcard name", resolvers: []string{good}, qname: "*.wild.customer.com", target: target},
		{name: "acme challenge", resolvers: []string{good}, qname: "_acme-challenge.customer.com", target: "abc.acme.example.net"},
		{name: "truncated then TCP", resolvers: []string{good}, qname: "big.customer.com", target: target},
		{
			name: "wrong target", resolvers: []string{good}, qname: "wrong.customer.com", target: target,
			wantErr: "create a DNS record: wrong.customer.com CNAME " + target + " (found CNAME to other.example.org)",
			found:   "other.example.org",
		},
		{
			name: "nodata", resolvers: []string{good}, qname: "apex.customer.com", target: target,
			wantErr: "create a DNS record: apex.customer.com CNAME " + target + " (found no CNAME record)",
		},
		{
			name: "nxdomain", resolvers: []string{good}, qname: "new.customer.com", target: target,
			wantErr: "create a DNS record: new.customer.com CNAME " + target + " (found no CNAME record; new.customer.com does not exist)",
		},
		{
			name: "wildcard does not cover the base", resolvers: []string{good}, qname: "wild.customer.com", target: target,
			wantErr: "(found no CNAME record; wild.customer.com does not exist)",
		},
		{
			name: "servfail", resolvers: []string{servfail}, qname: "app.customer.com", target: target,
			wantErr:   "could not check app.customer.com CNAME " + target + ": no resolver answered (SERVFAIL from " + servfail + ")",
			temporary: true,
		},
		{
			name: "refused is the resolver's failure", resolvers: []string{good}, qname: "refused.customer.com", target: target,
			wantErr:   "could not check refused.customer.com CNAME " + target + ": no resolver answered (REFUSED from " + good + ")",
			temporary: true,
		},
		{
			name: "unreachable", resolvers: []string{down}, qname: "app.customer.com", target: target,
			wantErr:   ": no resolver answered (connection refused by " + down + ")",
			temporary: true,
		},
		{name: "unreachable then good", resolvers: []string{down, good}, qname: "app.customer.com", target: target},
		{name: "servfail then good", resolvers: []string{servfail, good}, qname: "app.customer.com", target: target},
		{
			name: "nxdomain stops the search", resolvers: []string{good, servfail}, qname: "new.customer.com", target: target,
			wantErr: "does not exist)",
		},
		{
			name: "all fail", resolvers: []string{down, servfail}, qname: "app.customer.com", target: target,
			wantErr:   ": no resolver answered (connection refused by " + down + "; SERVFAIL from " + servfail + ")",
			temporary: true,
		},
		{
			name: "invalid name", resolvers: []string{good}, qname: "a..b", target: target,
			wantErr: "create a DNS record: a..b CNAME " + target + " (it is not a valid DNS name)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Checker{Resolvers: tt.resolvers, Timeout: 2 * time.Second}
			err := c.CheckCNAME(context.Background(), tt.qname, tt.target)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckCNAME: %v", err)
				}
				return
			}
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("CheckCNAME = %v (%T), want *Error", err, err)
			}
			if !strings.Contains(de.Error(), tt.wantErr) {
				t.Errorf("message = %q, want it to contain %q", de.Error(), tt.wantErr)
			}
			if de.Found != tt.found {
				t.Errorf("Found = %q, want %q", de.Found, tt.found)
			}
			if de.Temporary != tt.temporary {
				t.Errorf("Temporary = %v, want %v", de.Temporary, tt.temporary)
			}
			if de.Want != normalize(tt.target) {
				t.Errorf("Want = %q, want %q", de.Want, normalize(tt.target))
			}
		})
	}
}

func TestCheckCNAMETimeout(t *testing.T) {
	// A resolver that never answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c := &Checker{Resolvers: []string{pc.LocalAddr().String()}, Timeout: 200 * time.Millisecond}
	err = c.CheckCNAME(context.Background(), "app.customer.com", "t.example.net")
	var de *Error
	if !errors.As(err, &de) || !de.Temporary || !strings.Contains(de.Msg, "timeout from") {
		t.Fatalf("CheckCNAME = %v, want a temporary timeout *Error", err)
	}
}

func TestCheckCNAMEContextCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := &Checker{Resolvers: []string{closedPort(t)}}
	err := c.CheckCNAME(ctx, "app.customer.com", "t.example.net")
	var de *Error
	if !errors.As(err, &de) || !de.Temporary || !errors.Is(err, context.Canceled) {
		t.Fatalf("CheckCNAME = %v, want a temporary *Error wrapping context.Canceled", err)
	}
}

func TestResolvers(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{[]string{"192.0.2.1"}, []string{"192.0.2.1:53"}},
		{[]string{"192.0.2.1:5353", "ns.example.net"}, []string{"192.0.2.1:5353", "ns.example.net:53"}},
		{[]string{"::1", "[2001:db8::1]", "[2001:db8::1]:54"}, []string{"[::1]:53", "[2001:db8::1]:53", "[2001:db8::1]:54"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.in, ","), func(t *testing.T) {
			got := (&Checker{Resolvers: tt.in}).resolvers()
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("resolvers() = %v, want %v", got, tt.want)
			}
		})
	}
	if got := (&Checker{}).resolvers(); len(got) == 0 {
		t.Error("system resolvers: got none, want at least the fallback")
	}
}
