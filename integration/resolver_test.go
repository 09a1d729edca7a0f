package integration

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// testResolver is the test's stand-in for the recursive resolver of the
// Internet, on 127.0.0.1 over UDP and TCP. Pebble's VA and the plugin's
// CNAME checks ("resolvers") both ask it.
//
// It answers from records the test sets, like a resolver whose upstream
// zones hold exactly those records:
//   - A: the records set for a name, else 127.0.0.1 for any name (so every
//     HTTP-01 and TLS-ALPN-01 validation reaches Caddy on loopback);
//   - AAAA: never anything (Pebble's VA asks AAAA first);
//   - CNAME and TXT: the records set;
//   - a record set for "*.<name>" answers names below <name> that have no
//     records of their own, as a DNS wildcard does.
//
// It follows CNAME chains (up to 10 hops), putting every CNAME in the
// answer before the final records. A name at or below a delegated zone
// (Delegate) is not answered from the test's records: the query for it is
// forwarded to that zone's authoritative server (the plugin's dns_server)
// and its answers, or its NXDOMAIN, are appended after the CNAMEs that led
// there, as a recursive resolver does after following the delegation.
type testResolver struct {
	// Addr is 127.0.0.1:<port>, the same port for UDP and TCP.
	Addr string

	mu    sync.RWMutex
	a     map[string][]net.IP // owner FQDN (lowercase) → addresses
	cname map[string]string   // owner FQDN → target FQDN
	txt   map[string][]string // owner FQDN → values
	zones map[string]string   // delegated zone FQDN → server address
	soa   map[string]bool     // zone apexes this resolver answers SOA for

	udp, tcp *dns.Server
	logs     *syncBuffer
}

// startResolver starts a test resolver on a free port. Its log lines go to
// logs.
func startResolver(logs *syncBuffer) (*testResolver, error) {
	port, err := freeUDPTCPPort()
	if err != nil {
		return nil, err
	}
	r := &testResolver{
		Addr:  fmt.Sprintf("127.0.0.1:%d", port),
		a:     map[string][]net.IP{},
		cname: map[string]string{},
		txt:   map[string][]string{},
		zones: map[string]string{},
		soa:   map[string]bool{},
		logs:  logs,
	}
	started := make(chan error, 2)
	for _, network := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: r.Addr, Net: network, Handler: r,
			NotifyStartedFunc: func() { started <- nil }}
		if network == "udp" {
			r.udp = srv
		} else {
			r.tcp = srv
		}
		go func() {
			if err := srv.ListenAndServe(); err != nil {
				started <- fmt.Errorf("test resolver over %s on %s: %w", network, r.Addr, err)
			}
		}()
	}
	for range 2 {
		select {
		case err := <-started:
			if err != nil {
				r.Shutdown()
				return nil, err
			}
		case <-time.After(10 * time.Second):
			r.Shutdown()
			return nil, fmt.Errorf("test resolver on %s did not start", r.Addr)
		}
	}
	return r, nil
}

// Shutdown stops the resolver.
func (r *testResolver) Shutdown() {
	for _, s := range []*dns.Server{r.udp, r.tcp} {
		if s != nil {
			_ = s.Shutdown()
		}
	}
}

func fqdn(name string) string { return dns.Fqdn(strings.ToLower(name)) }

// SetA sets the A records of host, replacing the default 127.0.0.1.
func (r *testResolver) SetA(host string, ips ...string) {
	var list []net.IP
	for _, s := range ips {
		list = append(list, net.ParseIP(s).To4())
	}
	r.mu.Lock()
	r.a[fqdn(host)] = list
	r.mu.Unlock()
}

// SetCNAME makes host a CNAME to target.
func (r *testResolver) SetCNAME(host, target string) {
	r.mu.Lock()
	r.cname[fqdn(host)] = fqdn(target)
	r.mu.Unlock()
}

// AddTXT adds a TXT value to host.
func (r *testResolver) AddTXT(host, value string) {
	r.mu.Lock()
	r.txt[fqdn(host)] = append(r.txt[fqdn(host)], value)
	r.mu.Unlock()
}

// Delete removes every record of host (A, CNAME and TXT) that the test set.
func (r *testResolver) Delete(host string) {
	r.mu.Lock()
	delete(r.a, fqdn(host))
	delete(r.cname, fqdn(host))
	delete(r.txt, fqdn(host))
	r.mu.Unlock()
}

// RemoveTXT removes one TXT value of host.
func (r *testResolver) RemoveTXT(host, value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := r.txt[fqdn(host)]
	for i, v := range list {
		if v == value {
			r.txt[fqdn(host)] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
}

// SetSOA makes the resolver answer an SOA query for zone's apex, as a DNS
// host's zone does: CertMagic finds the zone of a record that way.
func (r *testResolver) SetSOA(zone string) {
	r.mu.Lock()
	r.soa[fqdn(zone)] = true
	r.mu.Unlock()
}

// UnsetSOA undoes SetSOA.
func (r *testResolver) UnsetSOA(zone string) {
	r.mu.Lock()
	delete(r.soa, fqdn(zone))
	r.mu.Unlock()
}

// ControlHandler lets a DNS provider in another process (the test Caddy's
// dns.providers.testresolver) add and remove TXT records:
// POST /txt/add and /txt/remove with form values name and value.
func (r *testResolver) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	for path, fn := range map[string]func(string, string){"/txt/add": r.AddTXT, "/txt/remove": r.RemoveTXT} {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, req *http.Request) {
			name, value := req.FormValue("name"), req.FormValue("value")
			if name == "" || value == "" {
				http.Error(w, "name and value are required", http.StatusBadRequest)
				return
			}
			fn(name, value)
			r.logf("resolver: control %s TXT %s", path, fqdn(name))
		})
	}
	return mux
}

// Delegate sends queries for names at or below zone to the authoritative
// server at addr ("host:port").
func (r *testResolver) Delegate(zone, addr string) {
	r.mu.Lock()
	r.zones[fqdn(zone)] = addr
	r.mu.Unlock()
}

// Undelegate removes a delegation.
func (r *testResolver) Undelegate(zone string) {
	r.mu.Lock()
	delete(r.zones, fqdn(zone))
	r.mu.Unlock()
}

// ServeDNS answers one query; it makes testResolver a dns.Handler.
func (r *testResolver) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	r.resolve(m, q)
	var answers []string
	for _, rr := range m.Answer {
		answers = append(answers, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	r.logf("resolver: %s %s -> %s [%s]", dns.TypeToString[q.Qtype], q.Name,
		dns.RcodeToString[m.Rcode], strings.Join(answers, "; "))
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// resolve fills m with the answer to q.
func (r *testResolver) resolve(m *dns.Msg, q dns.Question) {
	name := strings.ToLower(q.Name)
	for hop := 0; hop < 10; hop++ {
		if server := r.delegation(name); server != "" {
			resp, err := forward(server, name, q.Qtype)
			if err != nil {
				m.Rcode = dns.RcodeServerFailure
				r.logf("resolver: %s %s: forwarding to %s: %v", dns.TypeToString[q.Qtype], name, server, err)
				return
			}
			m.Answer = append(m.Answer, resp.Answer...)
			m.Rcode = resp.Rcode
			r.logf("resolver: %s %s: forwarded to %s: %s, %d answers",
				dns.TypeToString[q.Qtype], name, server, dns.RcodeToString[resp.Rcode], len(resp.Answer))
			return
		}
		a, cname, txt := r.lookup(name)
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: 0}
		}
		if cname != "" && q.Qtype != dns.TypeCNAME {
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: cname})
			name = cname
			continue
		}
		switch q.Qtype {
		case dns.TypeA:
			if a == nil {
				a = []net.IP{net.IPv4(127, 0, 0, 1).To4()}
			}
			for _, ip := range a {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: ip})
			}
		case dns.TypeCNAME:
			if cname != "" {
				m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: cname})
			}
		case dns.TypeTXT:
			for _, v := range txt {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: []string{v}})
			}
		case dns.TypeSOA:
			r.mu.Lock()
			apex := r.soa[name]
			r.mu.Unlock()
			if apex {
				m.Answer = append(m.Answer, &dns.SOA{Hdr: hdr(dns.TypeSOA), Ns: "ns." + name, Mbox: "hostmaster." + name,
					Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 60})
			}
		}
		return
	}
	m.Rcode = dns.RcodeServerFailure
	r.logf("resolver: %s %s: CNAME chain too long", dns.TypeToString[q.Qtype], q.Name)
}

// delegation returns the server of the longest delegated zone that name is
// at or below, or "".
func (r *testResolver) delegation(name string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	best, server := "", ""
	for z, addr := range r.zones {
		if dns.IsSubDomain(z, name) && len(z) > len(best) {
			best, server = z, addr
		}
	}
	return server
}

// lookup returns the records of name: its own, or else those of the
// closest wildcard "*.<ancestor>".
func (r *testResolver) lookup(name string) (a []net.IP, cname string, txt []string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	has := func(n string) bool {
		_, okA := r.a[n]
		_, okC := r.cname[n]
		_, okT := r.txt[n]
		return okA || okC || okT
	}
	owner := name
	if !has(owner) {
		labels := dns.SplitDomainName(name)
		for i := 1; i < len(labels); i++ {
			w := "*." + strings.Join(labels[i:], ".") + "."
			if has(w) {
				owner = w
				break
			}
		}
	}
	return r.a[owner], r.cname[owner], r.txt[owner]
}

// forward asks an authoritative server, over UDP and again over TCP when
// the answer is truncated.
func forward(server, name string, qtype uint16) (*dns.Msg, error) {
	req := new(dns.Msg)
	req.SetQuestion(name, qtype)
	req.RecursionDesired = false
	req.SetEdns0(1232, false)
	var resp *dns.Msg
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 3 * time.Second, UDPSize: 1232}
		var err error
		resp, _, err = c.Exchange(req, server)
		if err != nil {
			return nil, err
		}
		if !resp.Truncated {
			break
		}
	}
	return resp, nil
}

func (r *testResolver) logf(format string, args ...any) {
	if r.logs != nil {
		fmt.Fprintf(r.logs, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
	}
}
