package certsource

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

type fixture struct {
	store  *domainstore.Store
	source *Source
	ca     *testpki.CA
	dir    string
}

func newFixture(t testing.TB, capacity int) *fixture {
	t.Helper()
	dir := t.TempDir()
	return newFixtureOn(t, capacity, &certmagic.FileStorage{Path: dir}, dir)
}

func newFixtureOn(t testing.TB, capacity int, st certmagic.Storage, dir string) *fixture {
	t.Helper()
	store, err := domainstore.Open(context.Background(), st, domainstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return &fixture{store: store, source: New(store, capacity, nil), ca: testpki.NewCA(t, "Source Test CA"), dir: dir}
}

// attach uploads a leaf for name and creates the domain; it returns the
// certificate ID and the leaf's serial.
func (f *fixture) attach(t testing.TB, domain string, names ...string) (string, string) {
	t.Helper()
	if len(names) == 0 {
		names = []string{domain}
	}
	leaf := f.ca.Issue(t, names...)
	c, err := f.store.CreateCertificate(context.Background(), domainstore.CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.CreateDomain(context.Background(), domainstore.DomainInput{Domain: domain, CertificateID: c.ID}); err != nil {
		t.Fatal(err)
	}
	return c.ID, leaf.Serial
}

// handshake runs a real TLS handshake over a pipe against a server whose
// GetCertificate is the source, and returns the served leaf's serial.
func (f *fixture) handshake(t testing.TB, sni string) (string, error) {
	t.Helper()
	cConn, sConn := net.Pipe()
	defer cConn.Close()
	srv := tls.Server(sConn, &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return f.source.GetCertificate(h.Context(), h)
	}})
	go func() {
		_ = srv.Handshake()
		sConn.Close()
	}()
	// verify the chain but not the name, so that a fallback certificate
	// can be seen for what it is
	pool := f.ca.Pool()
	cli := tls.Client(cConn, &tls.Config{ServerName: sni, InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool})
			return err
		}})
	_ = cConn.SetDeadline(time.Now().Add(10 * time.Second))
	_ = sConn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := cli.Handshake(); err != nil {
		return "", err
	}
	return cli.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

func TestServesBySNI(t *testing.T) {
	f := newFixture(t, 100)
	_, exact := f.attach(t, "a.example.test")
	_, wild := f.attach(t, "*.example.test")

	tests := []struct {
		sni, want string
		err       error
	}{
		{"a.example.test", exact, nil},
		{"b.example.test", wild, nil},
		{"B.Example.Test", wild, nil},
		{"example.test", "", ErrNoDomain},
		{"x.b.example.test", "", ErrNoDomain},
		{"unknown.test", "", ErrNoDomain},
	}
	for _, tt := range tests {
		t.Run(tt.sni, func(t *testing.T) {
			got, err := f.handshake(t, tt.sni)
			if tt.err != nil {
				if err == nil {
					t.Fatalf("handshake succeeded with %s; want failure", got)
				}
				_, gerr := f.source.GetCertificate(context.Background(), &tls.ClientHelloInfo{ServerName: tt.sni})
				if !errors.Is(gerr, tt.err) {
					t.Fatalf("GetCertificate error = %v; want %v", gerr, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("served %s, %v; want %s", got, err, tt.want)
			}
		})
	}
	if _, err := f.source.GetCertificate(context.Background(), &tls.ClientHelloInfo{}); !errors.Is(err, ErrNoServerName) {
		t.Fatalf("no SNI: %v", err)
	}
}

func TestManagedWithoutCertificateFails(t *testing.T) {
	f := newFixture(t, 10)
	if _, err := f.store.CreateDomain(context.Background(), domainstore.DomainInput{Domain: "m.example.test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.source.GetCertificate(context.Background(), &tls.ClientHelloInfo{ServerName: "m.example.test"}); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("err = %v; want ErrNoCertificate", err)
	}
}

func TestFallback(t *testing.T) {
	f := newFixture(t, 10)
	fallbackID, serial := f.attach(t, "fallback.example.test")
	f.source.SetFallback(fallbackID)
	got, err := f.handshake(t, "nothing.example.test")
	if err != nil || got != serial {
		t.Fatalf("served %s, %v; want the fallback %s", got, err, serial)
	}
}

// TestFallbackFailureLoggedOnceAMinute checks that a fallback certificate
// that keeps failing to load is logged once a minute, not once and then
// never again while the failures keep coming.
func TestFallbackFailureLoggedOnceAMinute(t *testing.T) {
	f := newFixture(t, 10)
	core, logs := observer.New(zapcore.ErrorLevel)
	f.source.log = zap.New(core)
	f.source.SetFallback("cert_01m8q3bh8n1n87rt06mm4j10et") // no such certificate
	defer func(old func() int64) { unixNow = old }(unixNow)
	for _, at := range []int64{1000, 1030, 1061, 1090, 1125} {
		unixNow = func() int64 { return at }
		if _, err := f.source.GetCertificate(context.Background(), &tls.ClientHelloInfo{ServerName: "nothing.example.test"}); err == nil {
			t.Fatal("served a handshake without a fallback certificate")
		}
	}
	if got := logs.FilterMessageSnippet("fallback certificate failed").Len(); got != 3 {
		t.Fatalf("logged %d times over failures at 0, 30, 61, 90 and 125 s; want 3 (at 0, 61 and 125 s)", got)
	}
}

// TestLoadsFromStorageOnce starts a second source over the same storage
// (as after a restart) and checks that concurrent first handshakes share
// one load and then hit the cache.
func TestLoadsFromStorageOnce(t *testing.T) {
	f := newFixture(t, 10)
	_, serial := f.attach(t, "a.example.test")

	counting := &keyLoadCounter{FileStorage: &certmagic.FileStorage{Path: f.dir}}
	store2, err := domainstore.Open(context.Background(), counting, domainstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store2.Close() })
	f2 := &fixture{store: store2, source: New(store2, 10, nil), ca: f.ca}
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := f2.handshake(t, "a.example.test")
			if err != nil || got != serial {
				t.Errorf("served %s, %v; want %s", got, err, serial)
			}
		}()
	}
	wg.Wait()
	st := f2.source.Cache().Stats()
	if st.Entries != 1 {
		t.Fatalf("cache entries = %d; want 1", st.Entries)
	}
	if n := counting.keyLoads.Load(); n != 1 {
		t.Fatalf("the private key was read from storage %d times; want 1 (one shared load)", n)
	}
}

// keyLoadCounter counts reads of private key files.
type keyLoadCounter struct {
	*certmagic.FileStorage
	keyLoads atomic.Int64
}

func (c *keyLoadCounter) Load(ctx context.Context, key string) ([]byte, error) {
	if strings.HasSuffix(key, ".key") {
		c.keyLoads.Add(1)
	}
	return c.FileStorage.Load(ctx, key)
}

// TestWaitersOfALoadReportLoaded checks that a handshake that waited for
// another's load of its certificate is told the certificate was loaded
// (so it is not promoted on that handshake either).
func TestWaitersOfALoadReportLoaded(t *testing.T) {
	f := newFixture(t, 10)
	id, _ := f.attach(t, "a.example.test")
	f.source.Cache().Remove(id)
	want, err := f.store.LoadKeyPair(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	// a load in flight, as another handshake's
	l := &load{done: make(chan struct{})}
	f.source.mu.Lock()
	f.source.loading[id] = l
	f.source.mu.Unlock()
	type result struct {
		c      *tls.Certificate
		loaded bool
		err    error
	}
	got := make(chan result, 1)
	go func() {
		c, loaded, err := f.source.certificate(context.Background(), id)
		got <- result{c, loaded, err}
	}()
	l.cert = want
	close(l.done)
	if r := <-got; r.err != nil || r.c != want || !r.loaded {
		t.Fatalf("waiter got %p, loaded %v, %v; want the loaded certificate %p, loaded true", r.c, r.loaded, r.err, want)
	}
	// and one that finds it cached does not
	f.source.mu.Lock()
	delete(f.source.loading, id)
	f.source.mu.Unlock()
	f.source.Cache().Put(id, want)
	if c, loaded, err := f.source.certificate(context.Background(), id); err != nil || c != want || loaded {
		t.Fatalf("cached: got %p, loaded %v, %v; want %p, loaded false", c, loaded, err, want)
	}
}

func TestDeletedCertificateLeavesCache(t *testing.T) {
	f := newFixture(t, 10)
	id, _ := f.attach(t, "a.example.test")
	d, _ := f.store.DomainByName(context.Background(), "a.example.test")
	if err := f.store.DeleteDomain(context.Background(), d.ID); err != nil {
		t.Fatal(err)
	}
	if err := f.store.DeleteCertificate(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if c := f.source.Cache().Get(id); c != nil {
		t.Fatal("deleted certificate still cached")
	}
}

func TestCacheEviction(t *testing.T) {
	c := NewCache(3)
	certs := make([]*tls.Certificate, 6)
	for i := range certs {
		certs[i] = &tls.Certificate{}
	}
	c.Put("a", certs[0])
	c.Put("b", certs[1])
	c.Put("c", certs[2])
	c.Get("a") // a gets a second chance
	c.Put("d", certs[3])
	if c.Get("b") != nil {
		t.Fatal("b should have been evicted first (a was referenced)")
	}
	if c.Get("a") == nil || c.Get("c") == nil || c.Get("d") == nil {
		t.Fatal("a, c and d should be cached")
	}
	if st := c.Stats(); st.Entries != 3 || st.Evictions != 1 {
		t.Fatalf("stats = %+v", st)
	}
	c.SetCapacity(1)
	c.Put("e", certs[4])
	if st := c.Stats(); st.Entries != 1 {
		t.Fatalf("after shrinking: %+v", st)
	}
	// removals below capacity do not grow the ring without bound
	c.SetCapacity(1000)
	for i := 0; i < 500; i++ {
		id := fmt.Sprint("x", i)
		c.Put(id, certs[5])
		c.Remove(id)
	}
	if n := len(c.ring); n > 2*len(c.entries)+65 {
		t.Fatalf("ring holds %d slots for %d entries", n, len(c.entries))
	}
}

// TestCacheKeepsHotSetDuringBulkUpload checks what an operator relies on
// when importing many new certificates into a running edge: the new,
// never-served certificates evict each other, not the ones traffic keeps
// using, as long as that traffic touches them between two passes of the
// clock hand.
func TestCacheKeepsHotSetDuringBulkUpload(t *testing.T) {
	const capacity, hot, uploads = 100, 50, 5000
	c := NewCache(capacity)
	for i := range capacity {
		c.Put(fmt.Sprint("hot", i), &tls.Certificate{})
	}
	touch := func() {
		for i := range hot {
			if c.Get(fmt.Sprint("hot", i)) == nil {
				t.Fatalf("hot%d was evicted", i)
			}
		}
	}
	touch()
	for i := range uploads {
		c.Put(fmt.Sprint("new", i), &tls.Certificate{})
		if i%10 == 0 { // traffic between uploads
			touch()
		}
	}
	touch()
	if st := c.Stats(); st.Entries != capacity || st.Evictions != uploads {
		t.Fatalf("stats = %+v, want %d entries and %d evictions", st, capacity, uploads)
	}
}

// TestGetCertificateHitAllocs holds the hit path (index lookup, cache hit,
// handshake counter) to zero allocations, for an exact name and for a
// name that its wildcard domain serves.
func TestGetCertificateHitAllocs(t *testing.T) {
	f := newFixtureOn(t, 16, new(memstorage.Storage), "")
	store, names := benchStore(t, f, 8)
	ctx := context.Background()
	d, ok := store.DomainByName(ctx, names[0])
	if !ok {
		t.Fatalf("no domain %s", names[0])
	}
	if _, err := store.CreateDomain(ctx, domainstore.DomainInput{Domain: "*.bench.test", CertificateID: d.CertificateID}); err != nil {
		t.Fatal(err)
	}
	names = append(names, "only-wildcard.bench.test")
	f.source = New(store, 16, nil)
	for _, name := range names {
		hello := &tls.ClientHelloInfo{ServerName: name}
		if _, err := f.source.GetCertificate(ctx, hello); err != nil {
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(100, func() {
			if _, err := f.source.GetCertificate(ctx, hello); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("GetCertificate(%q) on a hit: %v allocations, want 0", name, allocs)
		}
	}
	if got := f.source.Handshakes().Served.Load(); got < 100*uint64(len(names)) {
		t.Errorf("served counter %d after %d hits", got, 100*len(names))
	}
}

// BenchmarkGetCertificateHit measures the handshake hit path among
// 100,000 domains: index lookup and cache hit.
func BenchmarkGetCertificateHit(b *testing.B) {
	for _, n := range []int{1, 100_000} {
		b.Run(fmt.Sprintf("domains=%d", n), func(b *testing.B) {
			f := newFixtureOn(b, n+1, new(memstorage.Storage), "")
			store, names := benchStore(b, f, n)
			f.source = New(store, n+1, nil)
			for _, name := range names {
				if _, err := f.source.GetCertificate(context.Background(), &tls.ClientHelloInfo{ServerName: name}); err != nil {
					b.Fatal(err)
				}
			}
			hellos := make([]*tls.ClientHelloInfo, len(names))
			for i, name := range names {
				hellos[i] = &tls.ClientHelloInfo{ServerName: name}
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := f.source.GetCertificate(ctx, hellos[i%len(hellos)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGetCertificateMiss measures the lazy path: the certificate is
// not cached, so it is read from storage (in memory here, so no disk),
// decoded and parsed, and put in the cache. A cache of one certificate
// and two domains in turn make every call a miss.
func BenchmarkGetCertificateMiss(b *testing.B) {
	for _, kt := range []string{"ecdsa", "rsa"} {
		b.Run(kt, func(b *testing.B) {
			f := newFixtureOn(b, 1, new(memstorage.Storage), "")
			var hellos []*tls.ClientHelloInfo
			for _, name := range []string{"a.miss.test", "b.miss.test"} {
				leaf := f.ca.Issue(b, name)
				if kt == "rsa" {
					leaf = f.ca.IssueRSA(b, name)
				}
				c, err := f.store.CreateCertificate(context.Background(), domainstore.CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := f.store.CreateDomain(context.Background(), domainstore.DomainInput{Domain: name, CertificateID: c.ID}); err != nil {
					b.Fatal(err)
				}
				hellos = append(hellos, &tls.ClientHelloInfo{ServerName: name})
			}
			f.source = New(f.store, 1, nil)
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				if _, err := f.source.GetCertificate(ctx, hellos[i%2]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchStore fills a store with n domains sharing one uploaded wildcard
// certificate (uploading n distinct certificates would measure the
// upload, not the lookup) and returns their names.
func benchStore(b testing.TB, f *fixture, n int) (*domainstore.Store, []string) {
	b.Helper()
	leaf := f.ca.Issue(b, "*.bench.test")
	c, err := f.store.CreateCertificate(context.Background(), domainstore.CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("d%d.bench.test", i)
		if _, err := f.store.CreateDomain(context.Background(), domainstore.DomainInput{Domain: names[i], CertificateID: c.ID}); err != nil {
			b.Fatal(err)
		}
	}
	return f.store, names
}

// BenchmarkCacheMemory reports the heap bytes one cached certificate takes
// (a leaf with its intermediate and key, parsed leaf kept), for ECDSA P-256
// and RSA-2048 keys. Every RSA leaf has its key parsed on its own, so the
// 16 generated RSA keys stand for distinct ones.
func BenchmarkCacheMemory(b *testing.B) {
	ca := testpki.NewCA(b, "Memory CA")
	rsaKeys := make([]crypto.Signer, 16)
	for i := range rsaKeys {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			b.Fatal(err)
		}
		rsaKeys[i] = k
	}
	const n = 2000
	for _, kt := range []string{"ecdsa", "rsa"} {
		b.Run(kt, func(b *testing.B) {
			leaves := make([]*testpki.Leaf, n)
			for i := range leaves {
				name := fmt.Sprintf("m%d.example.test", i)
				if kt == "rsa" {
					leaves[i] = ca.IssueWithKey(b, rsaKeys[i%len(rsaKeys)], name)
				} else {
					leaves[i] = ca.Issue(b, name)
				}
			}
			for b.Loop() {
				cache := NewCache(n)
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				for j, l := range leaves {
					bnd, err := bundle.Parse(l.CertPEM, l.KeyPEM)
					if err != nil {
						b.Fatal(err)
					}
					tc := bnd.TLSCertificate()
					cache.Put(fmt.Sprint("cert_", j), &tc)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/cert")
				b.ReportMetric(float64(after.HeapObjects-before.HeapObjects)/n, "objects/cert")
				runtime.KeepAlive(cache)
			}
		})
	}
}
