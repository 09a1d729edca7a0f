package integration

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/letsencrypt/challtestsrv"
	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// pebbleEnv is an in-process Pebble ACME server with a test DNS server
// (challtestsrv), shared by every test of the binary (challtestsrv uses the
// global miekg/dns mux, so there is only one). Get it with getPebble.
//
// ACME tests run Caddy with caddyOpts{HTTPPort: p.HTTPPort} (and
// HTTPSPort: p.TLSPort for TLS-ALPN-01), because Pebble's VA validates
// HTTP-01 on that one port. Such tests must therefore not run in parallel
// with each other.
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
	// DNSAddr is the test DNS server (UDP and TCP), 127.0.0.1:<port>. Every
	// A query without a record answers 127.0.0.1; AAAA answers nothing.
	DNSAddr string

	srv  *httptest.Server
	dns  *challtestsrv.ChallSrv
	logs *syncBuffer
}

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
	if os.Getenv("PEBBLE_VA_NOSLEEP") != "1" || os.Getenv("PEBBLE_WFE_NONCEREJECT") != "0" {
		return nil, fmt.Errorf("PEBBLE_VA_NOSLEEP=1 and PEBBLE_WFE_NONCEREJECT=0 must be set before pebble is built (TestMain does)")
	}
	p := &pebbleEnv{logs: &syncBuffer{}}
	dnsPort, err := freeUDPTCPPort()
	if err != nil {
		return nil, err
	}
	p.DNSAddr = "127.0.0.1:" + strconv.Itoa(dnsPort)
	p.HTTPPort = freePort(panicTB{})
	p.TLSPort = freePort(panicTB{})

	cs, err := challtestsrv.New(challtestsrv.Config{
		DNSAddrs: []string{p.DNSAddr},
		Log:      log.New(p.logs, "challtestsrv: ", log.LstdFlags),
	})
	if err != nil {
		return nil, fmt.Errorf("creating challtestsrv: %w", err)
	}
	cs.SetDefaultDNSIPv6("")
	cs.Run()
	p.dns = cs
	if err := waitDNS(p.DNSAddr); err != nil {
		cs.Shutdown()
		return nil, err
	}

	logger := log.New(p.logs, "pebble: ", log.LstdFlags)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "the default profile"},
	})
	validator := va.New(logger, p.HTTPPort, p.TLSPort, false, p.DNSAddr, store)
	front := wfe.New(logger, store, validator, authority, nil, false, false, 0, 0)

	p.srv = httptest.NewUnstartedServer(front.Handler())
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

// ACMEIssuer is a Caddy "acme" issuer object pointed at Pebble.
func (p *pebbleEnv) ACMEIssuer() map[string]any {
	return map[string]any{
		"module":                  "acme",
		"ca":                      p.DirectoryURL,
		"trusted_roots_pem_files": []any{p.ServerRootFile},
	}
}

// Log returns what Pebble and challtestsrv logged.
func (p *pebbleEnv) Log() string { return p.logs.String() }

// AddA adds A records for host (answered instead of the default 127.0.0.1).
func (p *pebbleEnv) AddA(host string, ips ...string) { p.dns.AddDNSARecord(host, ips) }

// DeleteA removes the A records of host.
func (p *pebbleEnv) DeleteA(host string) { p.dns.DeleteDNSARecord(host) }

// AddCNAME points host at target.
func (p *pebbleEnv) AddCNAME(host, target string) { p.dns.AddDNSCNAMERecord(host, target) }

// DeleteCNAME removes the CNAME of host.
func (p *pebbleEnv) DeleteCNAME(host string) { p.dns.DeleteDNSCNAMERecord(host) }

// AddTXT adds a TXT record for host.
func (p *pebbleEnv) AddTXT(host, value string) { p.dns.AddDNSTXTRecord(host, value) }

// DeleteTXT removes every TXT record of host.
func (p *pebbleEnv) DeleteTXT(host string) { p.dns.DeleteDNSTXTRecord(host) }

func (p *pebbleEnv) shutdown() {
	if p.srv != nil {
		p.srv.Close()
	}
	if p.dns != nil {
		p.dns.Shutdown()
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
