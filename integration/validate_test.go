package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestValidateChecksIssuers: `caddy validate` provisions the app's issuers,
// so a bad issuer configuration fails validation with a message that names
// the problem, and a good one (with a network_proxy) passes.
func TestValidateChecksIssuers(t *testing.T) {
	c := startCaddy(t, caddyOpts{})
	c.Stop()
	tests := []struct {
		name    string
		issuer  map[string]any
		wantErr string // "" when the configuration is valid
	}{
		{"valid acme issuer with a proxy", map[string]any{"module": "acme", "ca": "https://127.0.0.1:14000/dir",
			"network_proxy":    map[string]any{"from": "url", "url": "http://127.0.0.1:3128"},
			"preferred_chains": map[string]any{"smallest": true}}, ""},
		{"valid internal issuer", map[string]any{"module": "internal"}, ""},
		{"unknown field", map[string]any{"module": "acme", "bogus_field": 1}, "bogus_field"},
		{"unknown module", map[string]any{"module": "no_such_issuer"}, "tls.issuance.no_such_issuer"},
		{"DNS challenge without a provider", map[string]any{"module": "acme", "challenges": map[string]any{"dns": map[string]any{}}}, "no DNS provider configured"},
		{"bad network proxy", map[string]any{"module": "acme", "network_proxy": map[string]any{"from": "no_such_proxy"}}, "no_such_proxy"},
		{"no module", map[string]any{"ca": "https://127.0.0.1:14000/dir"}, "issuer needs a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg map[string]any
			raw, _ := json.Marshal(c.Config)
			_ = json.Unmarshal(raw, &cfg)
			cfg["apps"].(map[string]any)["domaincerts"] = map[string]any{
				"issuers":           map[string]any{"ca": tt.issuer},
				"default_authority": "ca",
			}
			raw, _ = json.Marshal(cfg)
			file := filepath.Join(t.TempDir(), "caddy.json")
			if err := os.WriteFile(file, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := c.runCaddy(t, "validate", "--config", file)
			if tt.wantErr == "" {
				if err != nil || !strings.Contains(out, "Valid configuration") {
					t.Fatalf("caddy validate: %v\n%s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("caddy validate passed a bad issuer; output:\n%s", out)
			}
			if !strings.Contains(out, tt.wantErr) || !strings.Contains(out, "issuer") {
				t.Errorf("caddy validate output does not name the problem (%q):\n%s", tt.wantErr, out)
			}
		})
	}
}

// TestExamplesValidate: the example configurations in examples/ are valid
// as the README shows them (the JSON one with its storage moved to a
// temporary directory and a generated seal key), and the Caddyfile's ports
// follow its environment variables.
func TestExamplesValidate(t *testing.T) {
	c := startCaddy(t, caddyOpts{})
	c.Stop()
	key, err := c.runCaddy(t, "seal-keygen")
	if err != nil {
		t.Fatalf("seal-keygen: %v\n%s", err, key)
	}
	t.Setenv("DOMAINCERTS_SEAL_KEY", strings.TrimSpace(key))
	caddyfile, err := filepath.Abs("../examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}

	out, err := c.runCaddy(t, "validate", "--config", caddyfile, "--adapter", "caddyfile")
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("examples/Caddyfile: %v\n%s", err, out)
	}
	t.Setenv("DOMAINCERTS_HTTPS_PORT", "9443")
	t.Setenv("DOMAINCERTS_HTTP_PORT", "9080")
	t.Setenv("DOMAINCERTS_ADMIN", "localhost:2998")
	out, err = c.runCaddy(t, "adapt", "--config", caddyfile, "--adapter", "caddyfile")
	if err != nil {
		t.Fatalf("adapting examples/Caddyfile: %v\n%s", err, out)
	}
	for _, want := range []string{`"https_port":9443`, `"http_port":9080`, `"listen":"localhost:2998"`, `"permission":{"module":"domaincerts"}`} {
		if !strings.Contains(out, want) {
			t.Errorf("examples/Caddyfile adapted with the port variables set has no %s:\n%s", want, out)
		}
	}

	raw, err := os.ReadFile("../examples/domaincerts.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.ReplaceAll(string(raw), `"/var/lib/caddy/storage"`, strconv.Quote(t.TempDir()))
	file := filepath.Join(t.TempDir(), "domaincerts.json")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = c.runCaddy(t, "validate", "--config", file)
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("examples/domaincerts.json: %v\n%s", err, out)
	}
}

// TestFailedReloadChangesNothing: a config that Caddy refuses to load (here
// an issuer that cannot provision) leaves the running one as it was, also
// the settings the domaincerts app shares across reloads: the refused
// config's fallback certificate is not served.
func TestFailedReloadChangesNothing(t *testing.T) {
	ca := testpki.NewChain(t, "Reload")
	c := startCaddy(t, caddyOpts{})
	l := ca.Leaf(t, "fallback.example.test")
	certID := c.uploadLeaf(t, l)
	expectFails(t, c, "unknown.example.test")

	var cfg map[string]any
	raw, _ := json.Marshal(c.Config)
	_ = json.Unmarshal(raw, &cfg)
	cfg["apps"].(map[string]any)["domaincerts"] = map[string]any{
		"fallback_certificate_id": certID,
		"cache_capacity":          5,
		"issuers": map[string]any{"bad": map[string]any{"module": "acme",
			"challenges": map[string]any{"dns": map[string]any{}}}},
	}
	status, resp := c.api(t, "POST", "/load", cfg)
	if status < 400 {
		t.Fatalf("POST /load of a config with a bad issuer: %d %v, want an error", status, resp)
	}
	expectFails(t, c, "unknown.example.test")
	if n := metricValues(t, c)["domaincerts_cache_capacity"]; n != 10000 {
		t.Errorf("domaincerts_cache_capacity = %v after the refused load, want the running config's 10000", n)
	}
}
