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
)

// TestHarnessPlainCaddy checks the harness itself against a Caddy without
// the plugin's config: a certificate loaded by Caddy's own load_pem is
// served, the tools work, Restart and Stop work, the home is isolated.
func TestHarnessPlainCaddy(t *testing.T) {
	ca := newTestCA(t, "Harness")
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
