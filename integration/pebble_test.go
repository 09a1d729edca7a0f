package integration

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// pebbleEnv is an in-process Pebble ACME server with the test resolver
// (testResolver) that its VA asks, shared by every test of the binary. Get
// it with getPebble.
//
// ACME tests run Caddy with caddyOpts{HTTPPort: p.HTTPPort, HTTPSPort:
// p.TLSPort}, because Pebble's VA validates HTTP-01 and TLS-ALPN-01 on those
// ports of 127.0.0.1. Such tests must therefore not run in parallel with
// each other.
type pebbleEnv struct {
	// DirectoryURL is the ACME directory, https://127.0.0.1:<port>/dir.
	DirectoryURL string
	// ServerRootFile is a PEM file holding the certificate of the ACME
	// server's HTTPS endpoint, for Caddy's trusted_roots_pem_files.
	ServerRootFile string
	// ServerRoots is a pool with the same certificate.
	ServerRoots *x509.CertPool
	// IssuerRoot and IssuerIntermediate are the certificates Pebble issues
	// from; IssuerRoots is a pool with the root, to check that a served
	// leaf chains to Pebble.
	IssuerRoot         *x509.Certificate
	IssuerIntermediate *x509.Certificate
	IssuerRoots        *x509.CertPool
	// HTTPPort and TLSPort are where the VA sends HTTP-01 and TLS-ALPN-01
	// validation requests on 127.0.0.1.
	HTTPPort, TLSPort int
	// DNSAddr is the test resolver (UDP and TCP), 127.0.0.1:<port>, that
	// the VA uses. Every A query without a record answers 127.0.0.1; AAAA
	// answers nothing. Point the plugin's "resolvers" at it too.
	DNSAddr string
	// DNS is the test resolver itself, for records and delegations.
	DNS *testResolver

	srv     *httptest.Server
	handler http.Handler
	logs    *syncBuffer
}

// Pebble profiles for renewal tests (an issuer's "profile"): shortProfile
// certificates are valid for shortValidity; tinyProfile ones for
// tinyValidity, short enough that CertMagic renews them within seconds
// (under 5 renew_check_intervals left), over and over.
const (
	shortProfile  = "short"
	shortValidity = 30 * time.Second
	tinyProfile   = "tiny"
	tinyValidity  = 8 * time.Second
)

var (
	pebbleOnce sync.Once
	pebbleInst *pebbleEnv
	pebbleErr  error
)

// getPebble starts the shared Pebble and DNS server on first use.
func getPebble(t testing.TB) *pebbleEnv {
	t.Helper()
	pebbleOnce.Do(func() { pebbleInst, pebbleErr = startPebble() })
	if pebbleErr != nil {
		t.Fatalf("starting pebble: %v", pebbleErr)
	}
	return pebbleInst
}

func startPebble() (*pebbleEnv, error) {
	if os.Getenv("PEBBLE_VA_NOSLEEP") != "1" || os.Getenv("PEBBLE_WFE_NONCEREJECT") != "0" || os.Getenv("PEBBLE_AUTHZREUSE") != "0" {
		return nil, fmt.Errorf("PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0 and PEBBLE_AUTHZREUSE=0 must be set before pebble is built (TestMain does)")
	}
	p := &pebbleEnv{logs: &syncBuffer{}}
	p.HTTPPort = freePort(panicTB{})
	p.TLSPort = freePort(panicTB{})

	res, err := startResolver(p.logs)
	if err != nil {
		return nil, err
	}
	p.DNS, p.DNSAddr = res, res.Addr
	if err := waitDNS(p.DNSAddr); err != nil {
		res.Shutdown()
		return nil, err
	}

	logger := log.New(p.logs, "pebble: ", log.LstdFlags|log.Lmicroseconds)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default":    {Description: "the default profile"},
		shortProfile: {Description: "short-lived certificates", ValidityPeriod: uint64(shortValidity / time.Second)},
		tinyProfile:  {Description: "very short-lived certificates", ValidityPeriod: uint64(tinyValidity / time.Second)},
	})
	validator := va.New(logger, p.HTTPPort, p.TLSPort, false, p.DNSAddr, store)
	front := wfe.New(logger, store, validator, authority, nil, false, false, 0, 0)

	p.handler = front.Handler()
	p.srv = httptest.NewUnstartedServer(p.handler)
	p.srv.StartTLS()
	p.DirectoryURL = p.srv.URL + wfe.DirectoryPath

	p.ServerRoots = x509.NewCertPool()
	p.ServerRoots.AddCert(p.srv.Certificate())
	p.ServerRootFile = filepath.Join(suiteDir, "pebble-acme-server-root.pem")
	if err := os.WriteFile(p.ServerRootFile,
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o644); err != nil {
		p.shutdown()
		return nil, err
	}

	p.IssuerRoot = authority.GetRootCert(0).Cert
	p.IssuerIntermediate = authority.GetIntermediateCert(0).Cert
	p.IssuerRoots = x509.NewCertPool()
	p.IssuerRoots.AddCert(p.IssuerRoot)
	return p, nil
}

// ACMEIssuer is a Caddy "acme" issuer object pointed at Pebble. It asks
// for Pebble's "default" profile (90-day certificates): Pebble picks a
// random profile for orders that name none, which could be shortProfile.
func (p *pebbleEnv) ACMEIssuer() map[string]any {
	return map[string]any{
		"module":                  "acme",
		"ca":                      p.DirectoryURL,
		"trusted_roots_pem_files": []any{p.ServerRootFile},
		"profile":                 "default",
	}
}

// ServeOn serves the same Pebble (same CA, same accounts and orders) on
// a second HTTPS endpoint at addr, with the same server certificate, so
// that ServerRootFile is trusted for it too. It returns the directory URL
// there; the endpoint closes when the test ends.
func (p *pebbleEnv) ServeOn(t testing.TB, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s for a second pebble endpoint: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(p.handler)
	srv.Listener.Close()
	srv.Listener = ln
	srv.TLS = p.srv.TLS.Clone() // the same certificate as the first endpoint
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL + wfe.DirectoryPath
}

// Log returns what Pebble and the test resolver logged.
func (p *pebbleEnv) Log() string { return p.logs.String() }

// logMark returns the current length of the log, for LogSince.
func (p *pebbleEnv) logMark() int { return len(p.logs.String()) }

// LogSince returns what was logged after mark.
func (p *pebbleEnv) LogSince(mark int) string { return p.logs.String()[mark:] }

// dumpLogOnFailure prints, when t fails, what Pebble and the resolver
// logged during the test.
func (p *pebbleEnv) dumpLogOnFailure(t testing.TB) {
	mark := p.logMark()
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("DOMAINCERTS_TEST_LOG") != "" {
			t.Logf("pebble and resolver log during the test:\n%s", p.LogSince(mark))
		}
	})
}

// AddA sets the A records of host (answered instead of the default 127.0.0.1).
func (p *pebbleEnv) AddA(host string, ips ...string) { p.DNS.SetA(host, ips...) }

// DeleteA removes the records of host.
func (p *pebbleEnv) DeleteA(host string) { p.DNS.Delete(host) }

// AddCNAME points host at target.
func (p *pebbleEnv) AddCNAME(host, target string) { p.DNS.SetCNAME(host, target) }

// DeleteCNAME removes the records of host.
func (p *pebbleEnv) DeleteCNAME(host string) { p.DNS.Delete(host) }

// AddTXT adds a TXT record for host.
func (p *pebbleEnv) AddTXT(host, value string) { p.DNS.AddTXT(host, value) }

// DeleteTXT removes the records of host.
func (p *pebbleEnv) DeleteTXT(host string) { p.DNS.Delete(host) }

func (p *pebbleEnv) shutdown() {
	if p.srv != nil {
		p.srv.Close()
	}
	if p.DNS != nil {
		p.DNS.Shutdown()
	}
}

// shutdownPebble stops the shared Pebble if a test started it.
func shutdownPebble() {
	if pebbleInst != nil {
		pebbleInst.shutdown()
	}
}

// freeUDPTCPPort finds a port free on 127.0.0.1 for both TCP and UDP.
func freeUDPTCPPort() (int, error) {
	for range 50 {
		p := freePort(panicTB{})
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		u.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no port free for both UDP and TCP")
}

// waitDNS waits until the DNS server answers over UDP and TCP.
func waitDNS(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		lastErr = nil
		for _, network := range []string{"udp", "tcp"} {
			if _, err := dnsQuery(network, addr, "probe.test.", dns.TypeA); err != nil {
				lastErr = fmt.Errorf("dns over %s at %s: %w", network, addr, err)
			}
		}
		if lastErr == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return lastErr
}

func dnsQuery(network, addr, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess {
		return r, fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
	}
	return r, nil
}

// panicTB lets freePort run outside a test (in the lazily started Pebble).
type panicTB struct{ testing.TB }

func (panicTB) Helper()                   {}
func (panicTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (panicTB) Fatal(a ...any)            { panic(fmt.Sprint(a...)) }
