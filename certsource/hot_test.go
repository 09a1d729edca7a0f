package certsource

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
)

// hotFixture is a Source behind a CertMagic config, as Caddy puts it: the
// config's cache answers first, then the manager (the Source) is asked.
type hotFixture struct {
	*fixture
	cache  *certmagic.Cache
	magic  *certmagic.Config
	hot    *Hot
	asked  atomic.Int64 // manager calls
	served func() uint64
}

type countingManager struct{ f *hotFixture }

func (m countingManager) GetCertificate(ctx context.Context, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	m.f.asked.Add(1)
	return m.f.source.GetCertificate(ctx, hello)
}

func newHotFixture(t testing.TB, cacheCapacity, hotCapacity int) *hotFixture {
	t.Helper()
	f := &hotFixture{fixture: newFixture(t, cacheCapacity)}
	var magic *certmagic.Config
	f.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           zap.NewNop(),
	})
	t.Cleanup(f.cache.Stop)
	magic = certmagic.New(f.cache, certmagic.Config{
		OnDemand: &certmagic.OnDemandConfig{Managers: []certmagic.Manager{countingManager{f}}},
		OCSP:     certmagic.OCSPConfig{DisableStapling: true},
		Storage:  &certmagic.FileStorage{Path: t.TempDir()},
		Logger:   zap.NewNop(),
	})
	f.magic = magic
	f.hot = NewHot(f.source, f.cache, hotCapacity, nil)
	f.served = func() uint64 { return f.source.Handshakes().Served.Load() }
	return f
}

// handshake runs a real TLS 1.3 handshake against a server that gets its
// certificate from the CertMagic config, and returns the leaf's serial.
func (f *hotFixture) handshake(t testing.TB, sni string) (string, error) {
	t.Helper()
	cConn, sConn := net.Pipe()
	defer cConn.Close()
	srv := tls.Server(sConn, &tls.Config{GetCertificate: f.magic.GetCertificate})
	go func() {
		_ = srv.Handshake()
		sConn.Close()
	}()
	cli := tls.Client(cConn, &tls.Config{ServerName: sni, RootCAs: f.ca.Pool()})
	_ = cConn.SetDeadline(time.Now().Add(10 * time.Second))
	_ = sConn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := cli.Handshake(); err != nil {
		return "", err
	}
	return cli.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

// swap uploads a new leaf for a.example.test and attaches it to domainID;
// it returns the leaf's serial.
func (f *hotFixture) swap(t testing.TB, domainID string) string {
	t.Helper()
	leaf := f.ca.Issue(t, "a.example.test")
	c, err := f.store.CreateCertificate(context.Background(), domainstore.CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.UpdateDomain(context.Background(), domainID, domainstore.DomainPatch{CertificateID: &c.ID}); err != nil {
		t.Fatal(err)
	}
	return leaf.Serial
}

func (f *hotFixture) mustServe(t *testing.T, sni, serial string) {
	t.Helper()
	got, err := f.handshake(t, sni)
	if err != nil {
		t.Fatalf("handshake for %s: %v", sni, err)
	}
	if got != serial {
		t.Fatalf("handshake for %s got serial %s; want %s", sni, got, serial)
	}
}

func TestHotAnswersBeforeTheManager(t *testing.T) {
	for _, rsaKey := range []bool{false, true} {
		t.Run(map[bool]string{false: "ecdsa", true: "rsa"}[rsaKey], func(t *testing.T) {
			f := newHotFixture(t, 100, 100)
			leaf := f.ca.Issue(t, "a.example.test")
			if rsaKey {
				leaf = f.ca.IssueRSA(t, "a.example.test")
			}
			c, err := f.store.CreateCertificate(context.Background(), domainstore.CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.store.CreateDomain(context.Background(), domainstore.DomainInput{Domain: "a.example.test", CertificateID: c.ID}); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				f.mustServe(t, "a.example.test", leaf.Serial)
				if got := f.asked.Load(); got != 1 {
					t.Fatalf("after %d handshakes the manager was asked %d times; want 1 (then the cache answers)", i+1, got)
				}
				if got := f.served(); got != uint64(i+1) {
					t.Fatalf("served = %d after %d handshakes", got, i+1)
				}
			}
			if !f.hot.Promoted(c.ID) {
				t.Fatal("certificate not promoted")
			}
			if got := f.cache.AllMatchingCertificates("a.example.test"); len(got) != 1 {
				t.Fatalf("CertMagic's cache holds %d certificates for the name; want 1", len(got))
			}
		})
	}
}

// TestHotPromotesReadOnSecondUse checks that a certificate read from
// storage on a miss is promoted on its next handshake, not on the one
// that read it.
func TestHotPromotesReadOnSecondUse(t *testing.T) {
	f := newHotFixture(t, 100, 100)
	leaf := f.ca.Issue(t, "a.example.test")
	c, err := f.store.CreateCertificate(context.Background(), domainstore.CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.CreateDomain(context.Background(), domainstore.DomainInput{Domain: "a.example.test", CertificateID: c.ID}); err != nil {
		t.Fatal(err)
	}
	f.source.Cache().Remove(c.ID) // as after an eviction or a restart
	for i, want := range []struct {
		asked    int64
		misses   uint64
		promoted bool
	}{{1, 1, false}, {2, 1, true}, {2, 1, true}} {
		f.mustServe(t, "a.example.test", leaf.Serial)
		st := f.source.Cache().Stats()
		if got := f.asked.Load(); got != want.asked || st.Misses != want.misses || f.hot.Promoted(c.ID) != want.promoted {
			t.Fatalf("after handshake %d: manager asked %d times, %d misses, promoted %v; want %d, %d, %v",
				i+1, got, st.Misses, f.hot.Promoted(c.ID), want.asked, want.misses, want.promoted)
		}
	}
}

func TestHotFollowsChanges(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		change func(t *testing.T, f *hotFixture, domainID, certID string) (serial string) // "" means the handshake must fail
	}{
		{"certificate swapped", func(t *testing.T, f *hotFixture, domainID, _ string) string {
			return f.swap(t, domainID)
		}},
		{"certificate detached", func(t *testing.T, f *hotFixture, domainID, _ string) string {
			if err := f.store.DetachCertificate(ctx, domainID); err != nil {
				t.Fatal(err)
			}
			return ""
		}},
		{"domain deleted", func(t *testing.T, f *hotFixture, domainID, _ string) string {
			if err := f.store.DeleteDomain(ctx, domainID); err != nil {
				t.Fatal(err)
			}
			return ""
		}},
		{"evicted from the source's cache", func(t *testing.T, f *hotFixture, _, certID string) string {
			f.source.Cache().Remove(certID)
			if f.hot.Promoted(certID) {
				t.Fatal("still promoted after the source's cache dropped it")
			}
			return "same"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newHotFixture(t, 100, 100)
			certID, serial := f.attach(t, "a.example.test")
			d, ok := f.store.DomainByName(ctx, "a.example.test")
			if !ok {
				t.Fatal("domain not found")
			}
			f.mustServe(t, "a.example.test", serial)
			f.mustServe(t, "a.example.test", serial)
			if !f.hot.Promoted(certID) {
				t.Fatal("certificate not promoted")
			}
			want := tt.change(t, f, d.ID, certID)
			switch want {
			case "":
				if got, err := f.handshake(t, "a.example.test"); err == nil {
					t.Fatalf("handshake got serial %s after the change; want failure", got)
				}
				if got := f.cache.AllMatchingCertificates("a.example.test"); len(got) != 0 {
					t.Fatalf("CertMagic's cache still holds %d certificates for the name", len(got))
				}
			case "same":
				f.mustServe(t, "a.example.test", serial)
			default:
				f.mustServe(t, "a.example.test", want)
				f.mustServe(t, "a.example.test", want)
			}
		})
	}
}

func TestHotPromotesOnlyWhatItMay(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		setup    func(t *testing.T, f *hotFixture) (sni, certID string)
		promoted bool
	}{
		{"one name", func(t *testing.T, f *hotFixture) (string, string) {
			id, _ := f.attach(t, "a.example.test")
			return "a.example.test", id
		}, true},
		{"every name attached", func(t *testing.T, f *hotFixture) (string, string) {
			id, _ := f.attach(t, "a.example.test", "a.example.test", "www.a.example.test")
			if _, err := f.store.CreateDomain(ctx, domainstore.DomainInput{Domain: "www.a.example.test", CertificateID: id}); err != nil {
				t.Fatal(err)
			}
			return "a.example.test", id
		}, true},
		{"a name not attached", func(t *testing.T, f *hotFixture) (string, string) {
			id, _ := f.attach(t, "a.example.test", "a.example.test", "www.a.example.test")
			return "a.example.test", id
		}, false},
		{"a name served by another certificate", func(t *testing.T, f *hotFixture) (string, string) {
			id, _ := f.attach(t, "a.example.test", "a.example.test", "www.a.example.test")
			f.attach(t, "www.a.example.test")
			return "a.example.test", id
		}, false},
		{"wildcard domain", func(t *testing.T, f *hotFixture) (string, string) {
			id, _ := f.attach(t, "*.example.test")
			return "x.example.test", id
		}, false},
		{"wildcard name on an exact domain", func(t *testing.T, f *hotFixture) (string, string) {
			id, _ := f.attach(t, "a.example.test", "a.example.test", "*.a.example.test")
			return "a.example.test", id
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newHotFixture(t, 100, 100)
			sni, id := tt.setup(t, f)
			for range 3 {
				if _, err := f.handshake(t, sni); err != nil {
					t.Fatal(err)
				}
			}
			if got := f.hot.Promoted(id); got != tt.promoted {
				t.Fatalf("promoted = %v; want %v", got, tt.promoted)
			}
			wantAsked := int64(3)
			if tt.promoted {
				wantAsked = 1
			}
			if got := f.asked.Load(); got != wantAsked {
				t.Fatalf("manager asked %d times for 3 handshakes; want %d", got, wantAsked)
			}
			if got := f.served(); got != 3 {
				t.Fatalf("served = %d; want 3", got)
			}
		})
	}
}

func TestHotPromotedWhenLastNameAttached(t *testing.T) {
	f := newHotFixture(t, 100, 100)
	id, serial := f.attach(t, "a.example.test", "a.example.test", "www.a.example.test")
	f.mustServe(t, "a.example.test", serial)
	if f.hot.Promoted(id) {
		t.Fatal("promoted while www.a.example.test is no domain")
	}
	if _, err := f.store.CreateDomain(context.Background(), domainstore.DomainInput{Domain: "www.a.example.test", CertificateID: id}); err != nil {
		t.Fatal(err)
	}
	f.mustServe(t, "www.a.example.test", serial)
	if !f.hot.Promoted(id) {
		t.Fatal("not promoted once every name is a domain that serves it")
	}
}

func TestHotBounds(t *testing.T) {
	t.Run("capacity", func(t *testing.T) {
		f := newHotFixture(t, 100, 2)
		for _, n := range []string{"a.example.test", "b.example.test", "c.example.test"} {
			_, serial := f.attach(t, n)
			f.mustServe(t, n, serial)
		}
		if got := f.hot.Stats().Entries; got != 2 {
			t.Fatalf("%d promoted; want the capacity, 2", got)
		}
		f.hot.SetCapacity(1)
		if got := f.hot.Stats().Entries; got != 1 {
			t.Fatalf("%d promoted after SetCapacity(1)", got)
		}
	})
	t.Run("subset of the source's cache", func(t *testing.T) {
		f := newHotFixture(t, 2, 10)
		var ids []string
		for _, n := range []string{"a.example.test", "b.example.test", "c.example.test", "d.example.test"} {
			id, serial := f.attach(t, n)
			ids = append(ids, id)
			f.mustServe(t, n, serial)
		}
		if !f.hot.Promoted(ids[3]) {
			t.Fatal("the last certificate served is not promoted")
		}
		for _, id := range ids {
			if f.hot.Promoted(id) && f.source.Cache().peek(id) == nil {
				t.Fatalf("%s promoted but not in the source's cache", id)
			}
		}
		if got := f.cache.AllMatchingCertificates("a.example.test"); len(got) != 0 {
			t.Fatal("an evicted certificate is still in CertMagic's cache")
		}
	})
	t.Run("close", func(t *testing.T) {
		f := newHotFixture(t, 100, 10)
		id, serial := f.attach(t, "a.example.test")
		f.mustServe(t, "a.example.test", serial)
		if !f.hot.Promoted(id) {
			t.Fatal("not promoted")
		}
		f.hot.Close()
		if got := f.cache.AllMatchingCertificates("a.example.test"); len(got) != 0 {
			t.Fatal("Close left the certificate in CertMagic's cache")
		}
		f.mustServe(t, "a.example.test", serial) // the manager answers again
		if f.source.Hot() != nil {
			t.Fatal("source still has the closed hot set")
		}
	})
}

// TestHotConcurrentChanges swaps a domain's certificate while handshakes
// run: the last certificate is the one served once the swaps stop.
func TestHotConcurrentChanges(t *testing.T) {
	ctx := context.Background()
	f := newHotFixture(t, 100, 100)
	_, serial := f.attach(t, "a.example.test")
	d, ok := f.store.DomainByName(ctx, "a.example.test")
	if !ok {
		t.Fatal("domain not found")
	}
	domainID := d.ID
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = f.handshake(t, "a.example.test")
			}
		}()
	}
	for range 20 {
		serial = f.swap(t, domainID)
	}
	close(stop)
	wg.Wait()
	for range 3 {
		f.mustServe(t, "a.example.test", serial)
	}
	if got := len(f.cache.AllMatchingCertificates("a.example.test")); got > 1 {
		t.Fatalf("CertMagic's cache holds %d certificates for the name", got)
	}
}

// BenchmarkHotHandshakeLookup is CertMagic's lookup for a promoted
// certificate (what a handshake costs besides the cryptography), against
// the lookup that reaches the manager.
func BenchmarkHotHandshakeLookup(b *testing.B) {
	for _, tt := range []struct {
		name string
		hot  int
	}{{"promoted", 10}, {"manager", 0}} {
		b.Run(tt.name, func(b *testing.B) {
			f := newHotFixture(b, 100, tt.hot)
			magic := f.magic
			f.attach(b, "a.example.test")
			hello := &tls.ClientHelloInfo{ServerName: "a.example.test", SupportedVersions: []uint16{tls.VersionTLS13},
				SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}}
			if _, err := magic.GetCertificate(hello); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				c, err := magic.GetCertificate(hello)
				if err != nil || c == nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHotSign is the signature of a full handshake with a promoted
// certificate's key, which counts the handshake, against the bare key.
func BenchmarkHotSign(b *testing.B) {
	f := newFixture(b, 10)
	id, _ := f.attach(b, "a.example.test")
	c, _, err := f.source.certificate(context.Background(), id)
	if err != nil {
		b.Fatal(err)
	}
	digest := make([]byte, 32)
	for _, tt := range []struct {
		name string
		key  crypto.Signer
	}{
		{"bare", c.PrivateKey.(crypto.Signer)},
		{"counting", countingKey(c.PrivateKey, f.source.cache.entry(id), &f.source.handshakes.Served).(crypto.Signer)},
	} {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tt.key.Sign(rand.Reader, digest, crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
