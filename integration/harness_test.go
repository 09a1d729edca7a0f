package integration

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestHarnessPlainCaddy checks the harness itself against a Caddy without
// the plugin's config: a certificate loaded by Caddy's own load_pem is
// served, the tools work, Restart and Stop work, the home is isolated.
func TestHarnessPlainCaddy(t *testing.T) {
	ca := testpki.NewChain(t, "Harness")
	l := ca.Leaf(t, "plain.example.test")
	c := startCaddy(t, caddyOpts{
		NoApp: true,
		TLS: map[string]any{"certificates": map[string]any{"load_pem": []any{
			map[string]any{"certificate": l.ChainPEM, "key": l.KeyPEM},
		}}},
	})

	expectServes(t, c, "plain.example.test", l, ca.Roots())
	resp, err := http.Get("http://" + c.HTTPAddr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "plain" {
		t.Errorf("plain server said %q", body)
	}

	rootFile := ca.RootFile(t, t.TempDir())
	opensslExpect(t, c, "plain.example.test", rootFile)
	curlExpectOK(t, c, "plain.example.test", rootFile)

	c.Restart()
	expectServes(t, c, "plain.example.test", l, ca.Roots())
	if !strings.Contains(c.Log(), "run 2") {
		t.Errorf("log lost across restart")
	}

	// Caddy wrote its autosave into the isolated XDG_CONFIG_HOME.
	if _, err := os.Stat(filepath.Join(c.HomeDir, "config", "caddy", "autosave.json")); err != nil {
		t.Errorf("autosave.json not in the isolated config home: %v\n%s", err, treeOf(c.HomeDir))
	}

	c.Stop()
	if _, err := handshake(t, c.HTTPSAddr(), "plain.example.test"); err == nil {
		t.Errorf("caddy still serves after Stop")
	}
}

// TestHarnessPebble checks the Pebble and DNS harness without issuing:
// the directory is reachable over TLS trusting ServerRoots, the issuer
// chain is consistent, and records added to the test DNS resolve.
func TestHarnessPebble(t *testing.T) {
	p := getPebble(t)

	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.ServerRoots}},
	}
	resp, err := client.Get(p.DirectoryURL)
	if err != nil {
		t.Fatalf("fetching the ACME directory: %v", err)
	}
	var dir map[string]any
	err = json.NewDecoder(resp.Body).Decode(&dir)
	resp.Body.Close()
	if err != nil || dir["newOrder"] == nil || dir["newAccount"] == nil {
		t.Fatalf("directory %v (err %v)", dir, err)
	}
	if b, err := os.ReadFile(p.ServerRootFile); err != nil || !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Errorf("server root file: %v", err)
	}
	if err := p.IssuerIntermediate.CheckSignatureFrom(p.IssuerRoot); err != nil {
		t.Errorf("pebble intermediate not signed by its root: %v", err)
	}
	if p.HTTPPort == 0 || p.TLSPort == 0 || p.HTTPPort == p.TLSPort {
		t.Errorf("ports %d %d", p.HTTPPort, p.TLSPort)
	}

	p.AddA("app.example.test", "192.0.2.10")
	p.AddCNAME("alias.example.test", "app.example.test")
	p.AddTXT("_acme-challenge.example.test", "token-value")
	t.Cleanup(func() {
		p.DeleteA("app.example.test")
		p.DeleteCNAME("alias.example.test")
		p.DeleteTXT("_acme-challenge.example.test")
	})
	for _, network := range []string{"udp", "tcp"} {
		r, err := dnsQuery(network, p.DNSAddr, "app.example.test", dns.TypeA)
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.10" {
			t.Errorf("%s A app.example.test: %v %v", network, r, err)
		}
	}
	if r, err := dnsQuery("udp", p.DNSAddr, "alias.example.test", dns.TypeCNAME); err != nil ||
		len(r.Answer) != 1 || r.Answer[0].(*dns.CNAME).Target != "app.example.test." {
		t.Errorf("CNAME alias.example.test: %v %v", r, err)
	}
	if r, err := dnsQuery("udp", p.DNSAddr, "_acme-challenge.example.test", dns.TypeTXT); err != nil ||
		len(r.Answer) != 1 || strings.Join(r.Answer[0].(*dns.TXT).Txt, "") != "token-value" {
		t.Errorf("TXT: %v %v", r, err)
	}
	if r, err := dnsQuery("udp", p.DNSAddr, "other.example.test", dns.TypeAAAA); err != nil || len(r.Answer) != 0 {
		t.Errorf("AAAA must be empty (the VA resolves AAAA first): %v %v", r, err)
	}
	p.DeleteTXT("_acme-challenge.example.test")
	if r, err := dnsQuery("udp", p.DNSAddr, "_acme-challenge.example.test", dns.TypeTXT); err != nil || len(r.Answer) != 0 {
		t.Errorf("TXT after delete: %v %v", r, err)
	}
}

// TestHarnessResolver checks the test resolver: CNAME chains are followed,
// wildcard records answer one level down, and a delegated zone is asked
// for its names, behind the CNAMEs that lead there.
func TestHarnessResolver(t *testing.T) {
	p := getPebble(t)
	r := p.DNS

	// An authoritative server for zone.test: TXT "v-<name>" for every
	// name except missing.zone.test, which does not exist.
	port, err := freeUDPTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	authAddr := "127.0.0.1:" + strconv.Itoa(port)
	auth := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		q := req.Question[0]
		switch {
		case q.Name == "missing.zone.test.":
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeTXT:
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET},
				Txt: []string{"v-" + q.Name}})
		}
		_ = w.WriteMsg(m)
	})
	for _, network := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: authAddr, Net: network, Handler: auth}
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ListenAndServe() }()
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatalf("authoritative test server over %s did not start", network)
		}
		t.Cleanup(func() { _ = srv.Shutdown() })
	}

	r.Delegate("zone.test", authAddr)
	r.SetCNAME("a.chain.test", "b.chain.test")
	r.SetCNAME("b.chain.test", "c.chain.test")
	r.SetA("c.chain.test", "192.0.2.7")
	r.AddTXT("*.wild.test", "w")
	r.SetCNAME("_acme-challenge.cust.test", "x.zone.test")
	r.SetCNAME("gone.cust.test", "missing.zone.test")
	t.Cleanup(func() {
		r.Undelegate("zone.test")
		for _, n := range []string{"a.chain.test", "b.chain.test", "c.chain.test", "*.wild.test",
			"_acme-challenge.cust.test", "gone.cust.test"} {
			r.Delete(n)
		}
	})

	answers := func(m *dns.Msg) string {
		var parts []string
		for _, rr := range m.Answer {
			switch v := rr.(type) {
			case *dns.CNAME:
				parts = append(parts, v.Hdr.Name+" CNAME "+v.Target)
			case *dns.A:
				parts = append(parts, v.Hdr.Name+" A "+v.A.String())
			case *dns.TXT:
				parts = append(parts, v.Hdr.Name+" TXT "+strings.Join(v.Txt, ""))
			}
		}
		return strings.Join(parts, "; ")
	}
	for _, tc := range []struct {
		network, name string
		qtype         uint16
		want          string
		rcode         int
	}{
		{"udp", "a.chain.test", dns.TypeA, "a.chain.test. CNAME b.chain.test.; b.chain.test. CNAME c.chain.test.; c.chain.test. A 192.0.2.7", 0},
		{"udp", "a.chain.test", dns.TypeCNAME, "a.chain.test. CNAME b.chain.test.", 0},
		{"tcp", "plain.test", dns.TypeA, "plain.test. A 127.0.0.1", 0},
		{"udp", "x.wild.test", dns.TypeTXT, "x.wild.test. TXT w", 0},
		{"udp", "wild.test", dns.TypeTXT, "", 0},
		{"tcp", "_acme-challenge.cust.test", dns.TypeTXT, "_acme-challenge.cust.test. CNAME x.zone.test.; x.zone.test. TXT v-x.zone.test.", 0},
		{"udp", "y.zone.test", dns.TypeTXT, "y.zone.test. TXT v-y.zone.test.", 0},
		{"udp", "gone.cust.test", dns.TypeTXT, "gone.cust.test. CNAME missing.zone.test.", dns.RcodeNameError},
	} {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(tc.name), tc.qtype)
		resp, _, err := (&dns.Client{Net: tc.network, Timeout: 2 * time.Second}).Exchange(m, p.DNSAddr)
		if err != nil {
			t.Errorf("%s %s over %s: %v", dns.TypeToString[tc.qtype], tc.name, tc.network, err)
			continue
		}
		if got := answers(resp); got != tc.want || resp.Rcode != tc.rcode {
			t.Errorf("%s %s over %s: %q (rcode %s), want %q (rcode %s)", dns.TypeToString[tc.qtype], tc.name,
				tc.network, got, dns.RcodeToString[resp.Rcode], tc.want, dns.RcodeToString[tc.rcode])
		}
	}
}

var opensslSubjectRE = regexp.MustCompile(`(?m)^subject=.*CN\s*=\s*([^,/\n]+)`)

// opensslExpect runs the real openssl s_client with -servername and requires
// the subject CN of the served leaf to be name and the chain to verify to
// rootFile for that name.
func opensslExpect(t *testing.T, c *caddyProc, name, rootFile string) {
	t.Helper()
	openssl := requireTool(t, "/usr/bin/openssl")
	out, err := runTool(t, 15*time.Second, "Q\n", openssl, "s_client",
		"-connect", "127.0.0.1:"+strconv.Itoa(c.HTTPSPort),
		"-servername", name,
		"-CAfile", rootFile,
		"-verify_hostname", name,
		"-verify_return_error",
	)
	if err != nil {
		t.Errorf("openssl s_client -servername %s: %v\n%s", name, err, out)
		return
	}
	m := opensslSubjectRE.FindStringSubmatch(out)
	if m == nil || strings.TrimSpace(m[1]) != name {
		t.Errorf("openssl s_client -servername %s: subject CN %v, want %s\n%s", name, m, name, out)
	}
	if !strings.Contains(out, "Verify return code: 0 (ok)") {
		t.Errorf("openssl s_client -servername %s did not verify\n%s", name, out)
	}
}

// curlExpectOK runs the real curl with --resolve and --cacert and requires
// the edge server's "ok" body.
func curlExpectOK(t *testing.T, c *caddyProc, name, rootFile string) {
	t.Helper()
	curl := requireTool(t, "/usr/bin/curl")
	port := strconv.Itoa(c.HTTPSPort)
	out, err := runTool(t, 15*time.Second, "", curl, "-q", "-sS", "--max-time", "10",
		"--resolve", name+":"+port+":127.0.0.1",
		"--cacert", rootFile,
		"https://"+name+":"+port+"/")
	if err != nil || out != "ok" {
		t.Errorf("curl https://%s:%s/: %q, err %v; want \"ok\"", name, port, out, err)
	}
}
