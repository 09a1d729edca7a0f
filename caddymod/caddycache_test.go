package caddymod

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestCaddyCertCache checks that caddyCertCache is the cache the tls app
// serves handshakes from: a certificate the tls app loads itself is found
// in it. It fails on a Caddy release that moved the cache.
func TestCaddyCertCache(t *testing.T) {
	leaf := testpki.NewCA(t, "Cache Test CA").Issue(t, "loaded.example.test")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true},
		"storage": map[string]any{"module": "file_system", "root": t.TempDir()},
		"apps": map[string]any{"tls": map[string]any{
			"certificates": map[string]any{"load_pem": []map[string]any{{"certificate": leaf.CertPEM, "key": leaf.KeyPEM}}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading a tls app: %v", err)
	}
	defer func() { _ = caddy.Stop() }()

	cache := caddyCertCache()
	if cache == nil {
		t.Fatal("caddyCertCache is nil after the tls app was provisioned: the linkname no longer finds caddytls's cache")
	}
	got := cache.AllMatchingCertificates("loaded.example.test")
	if len(got) != 1 || got[0].Leaf.SerialNumber.Text(16) != leaf.Serial {
		t.Fatalf("caddyCertCache holds %d certificates for the loaded name; want the tls app's one", len(got))
	}
}
