package certsource

import (
	"context"
	"crypto/tls"
	"fmt"
	"testing"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
)

// BenchmarkCertMagicGetCertificate measures what CertMagic does for one
// handshake on the two paths a certificate can take in Caddy: "cache" is
// stock Caddy's path (a certificate loaded into CertMagic's cache, e.g. by
// load_files), "manager" is ours (a cache miss, then this Source as a
// get_certificate manager). The difference is the price of serving
// certificates without a config reload. "fresh_goroutine" runs each call on
// a new goroutine, as net/http does for every connection, so that stack
// growth is counted: CertMagic hashes every certificate a manager returns
// with a BLAKE3 hasher that keeps a 10 KB buffer on the stack.
func BenchmarkCertMagicGetCertificate(b *testing.B) {
	f := newFixtureOn(b, 16, new(memstorage.Storage), "")
	f.attach(b, "managed.example.test")

	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		Logger:           zap.NewNop(),
	})
	b.Cleanup(cache.Stop)
	cfg = certmagic.New(cache, certmagic.Config{
		Storage:  new(memstorage.Storage),
		Logger:   zap.NewNop(),
		OnDemand: &certmagic.OnDemandConfig{Managers: []certmagic.Manager{f.source}},
	})
	leaf := f.ca.Issue(b, "cached.example.test")
	bnd, err := bundle.Parse(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cfg.CacheUnmanagedTLSCertificate(ctx, bnd.TLSCertificate(), nil); err != nil {
		b.Fatal(err)
	}

	for _, path := range []struct{ name, sni string }{
		{"cache", "cached.example.test"},
		{"manager", "managed.example.test"},
	} {
		hello := &tls.ClientHelloInfo{ServerName: path.sni}
		// get returns an error rather than failing the benchmark, because
		// it also runs on goroutines other than the benchmark's
		get := func() error {
			c, err := cfg.GetCertificateWithContext(ctx, hello)
			if err == nil && c.Leaf.DNSNames[0] != path.sni {
				return fmt.Errorf("got a certificate for %v, want %s", c.Leaf.DNSNames, path.sni)
			}
			return err
		}
		if err := get(); err != nil {
			b.Fatal(err)
		}
		b.Run(path.name+"/same_goroutine", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := get(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(path.name+"/fresh_goroutine", func(b *testing.B) {
			b.ReportAllocs()
			done := make(chan error)
			for b.Loop() {
				go func() { done <- get() }()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
