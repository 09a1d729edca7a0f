package caddyfile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/domaincerts/caddy-domaincerts"
)

// TestAdapt checks every testdata/*.caddyfiletest: a Caddyfile, a line of
// dashes, and the JSON the caddyfile adapter must produce from it.
func TestAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			cfg, want, ok := strings.Cut(string(b), "\n----------\n")
			if !ok {
				t.Fatalf("%s: no ---------- separator", f)
			}
			if !caddytest.CompareAdapt(t, f, cfg+"\n", "caddyfile", strings.TrimSuffix(want, "\n")) {
				t.Fail()
			}
		})
	}
}

// TestAdaptErrors checks that bad Caddyfiles fail with the line number and
// a message that names the problem.
func TestAdaptErrors(t *testing.T) {
	tests := []struct {
		name, caddyfile, want string
	}{
		{"unknown option", "{\n\tdomaincerts {\n\t\tcache_size 5\n\t}\n}\n", "unrecognized domaincerts option 'cache_size'"},
		{"duplicate option", "{\n\tdomaincerts {\n\t\tcname_zone a.test\n\t\tcname_zone b.test\n\t}\n}\n", "duplicate domaincerts option 'cname_zone'"},
		{"missing argument", "{\n\tdomaincerts {\n\t\tcache_capacity\n\t}\n}\n", "wrong argument count"},
		{"extra argument", "{\n\tdomaincerts {\n\t\tchallenge_zone a.test b.test\n\t}\n}\n", "wrong argument count"},
		{"not a number", "{\n\tdomaincerts {\n\t\tcache_capacity many\n\t}\n}\n", "not a whole number"},
		{"bad duration", "{\n\tdomaincerts {\n\t\tretry_interval soon\n\t}\n}\n", "retry_interval"},
		{"argument on option", "{\n\tdomaincerts now\n}\n", "wrong argument count"},
		{"duplicate issuer", "{\n\tdomaincerts {\n\t\tissuer a internal\n\t\tissuer a internal\n\t}\n}\n", "duplicate issuer 'a'"},
		{"unknown issuer module", "{\n\tdomaincerts {\n\t\tissuer a nosuch\n\t}\n}\n", "tls.issuance.nosuch"},
		{"block on flat option", "{\n\tdomaincerts {\n\t\tzones a.test {\n\t\t\tx\n\t\t}\n\t}\n}\n", "takes no block"},
		{"dns_server unknown", "{\n\tdomaincerts {\n\t\tdns_server :53 {\n\t\t\tport 5\n\t\t}\n\t}\n}\n", "unrecognized dns_server option 'port'"},
		{"manager argument", "https:// {\n\ttls {\n\t\tget_certificate domaincerts extra\n\t}\n}\n", "wrong argument count"},
		{"loader block", "https:// {\n\tdomaincerts_load {\n\t\tx\n\t}\n}\n", "unrecognized subdirective"},
		{"api unknown option", "https:// {\n\tdomaincerts_api {\n\t\tkeys x\n\t}\n}\n", "unknown domaincerts_api option \"keys\""},
		{"api argument", "https:// {\n\tdomaincerts_api ngrok\n}\n", "wrong argument count"},
		{"api compat without value", "https:// {\n\tdomaincerts_api {\n\t\tcompat\n\t}\n}\n", "wrong argument count"},
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := adapter.Adapt([]byte(tt.caddyfile), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatalf("adapting succeeded; want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q; want it to contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error = %q; want a file:line reference", err)
			}
		})
	}
}
