package certsource

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"fmt"
	"runtime"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestCertMemoryEstimate loads certificates of every key type the way the
// handshake path does (bundle.ParseStored, then Cache.Put) and compares
// the heap they take with CertMemory's estimate, which cache_memory
// bounds: the estimate must be within 10 % of the measured memory.
func TestCertMemoryEstimate(t *testing.T) {
	ca := testpki.NewCA(t, "Memory CA")
	keys := []struct {
		name string
		new  func() (crypto.Signer, error)
	}{
		{"p256", func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }},
		{"p384", func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) }},
		{"rsa2048", func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 2048) }},
		{"rsa4096", func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 4096) }},
		{"ed25519", func() (crypto.Signer, error) { _, k, err := ed25519.GenerateKey(rand.Reader); return k, err }},
	}
	for _, k := range keys {
		for _, names := range []int{1, 20} {
			t.Run(fmt.Sprintf("%s/names=%d", k.name, names), func(t *testing.T) {
				key, err := k.new()
				if err != nil {
					t.Fatal(err)
				}
				var dns []string
				for i := range names {
					dns = append(dns, fmt.Sprintf("host-%d.memory.example.test", i))
				}
				leaf := ca.IssueWithKey(t, key, dns...)
				const n = 400
				cache := NewCache(n)
				var before, after runtime.MemStats
				var estimate int64
				runtime.GC()
				runtime.ReadMemStats(&before)
				for i := range n {
					// a fresh parse per entry, as on a cache miss: nothing
					// is shared between entries but the intermediate
					tc, err := bundle.ParseStored([]byte(leaf.CertPEM), []byte(leaf.KeyPEM))
					if err != nil {
						t.Fatal(err)
					}
					cache.Put(fmt.Sprintf("cert_%026d", i), &tc)
					estimate += CertMemory(&tc)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				runtime.KeepAlive(cache)
				measured := float64(after.HeapAlloc-before.HeapAlloc) / n
				est := float64(estimate) / n
				t.Logf("measured %.0f B per certificate, estimated %.0f (%+.1f %%)", measured, est, 100*(est-measured)/measured)
				if est < 0.9*measured || est > 1.1*measured {
					t.Errorf("CertMemory estimates %.0f B per certificate, measured %.0f", est, measured)
				}
				if got := cache.Stats().Bytes; got != estimate {
					t.Errorf("cache counts %d bytes, the entries' estimates add up to %d", got, estimate)
				}
			})
		}
	}
}

// TestCacheMemoryBound checks cache_memory: the cache holds certificates
// up to the memory bound, evicting as for the capacity; a certificate over
// the bound on its own is still cached, alone; removals and replacements
// keep the count of bytes right.
func TestCacheMemoryBound(t *testing.T) {
	cert := func(derLen int) *tls.Certificate {
		return &tls.Certificate{Certificate: [][]byte{make([]byte, derLen)}}
	}
	unit := CertMemory(cert(1000))
	c := NewCache(100)
	c.SetMaxBytes(3*unit + unit/2)
	for _, id := range []string{"a", "b", "c"} {
		c.Put(id, cert(1000))
	}
	c.Get("b") // b gets a second chance
	c.Put("d", cert(1000))
	c.Put("e", cert(1000))
	if st := c.Stats(); st.Entries != 3 || st.Bytes != 3*unit || st.Evictions != 2 || st.MaxBytes != 3*unit+unit/2 {
		t.Fatalf("stats = %+v, want 3 entries of %d bytes and 2 evictions", st, unit)
	}
	if c.Get("b") == nil || c.Get("e") == nil {
		t.Fatal("the referenced and the newest certificate should be cached")
	}

	big := cert(int(5 * unit))
	c.Put("big", big)
	if st := c.Stats(); st.Entries != 1 || st.Bytes != CertMemory(big) || c.Get("big") == nil {
		t.Fatalf("a certificate over the bound: stats = %+v, want it cached alone", st)
	}
	c.Remove("big")
	c.Remove("never-cached")
	if st := c.Stats(); st.Entries != 0 || st.Bytes != 0 {
		t.Fatalf("after removing everything: %+v", st)
	}

	c.Put("x", cert(1000))
	c.Put("x", cert(2000)) // replaced, e.g. a reload of the same ID
	if st := c.Stats(); st.Entries != 1 || st.Bytes != CertMemory(cert(2000)) {
		t.Fatalf("after replacing: %+v, want %d bytes", st, CertMemory(cert(2000)))
	}
	c.Put("y", cert(1000))
	c.Put("y", cert(int(4*unit))) // a replacement over the bound evicts too
	if st := c.Stats(); st.Entries != 1 || st.Bytes != CertMemory(cert(int(4*unit))) || c.Get("y") == nil {
		t.Fatalf("after a replacement over the bound: %+v", st)
	}
	c.Remove("y")

	c.SetMaxBytes(0) // only the capacity bounds
	for i := range 50 {
		c.Put(fmt.Sprint("n", i), cert(1000))
	}
	if st := c.Stats(); st.Entries != 50 || st.Evictions != 6 {
		t.Fatalf("without a memory bound: %+v, want 50 entries", st)
	}
}

// TestCacheReplaceWhileServing replaces a cached certificate while
// handshakes read it; run with -race, it fails if a hit can observe the
// entry change.
func TestCacheReplaceWhileServing(t *testing.T) {
	c := NewCache(10)
	c.SetMaxBytes(1 << 20)
	a, b := &tls.Certificate{Certificate: [][]byte{{1}}}, &tls.Certificate{Certificate: [][]byte{{2}}}
	c.Put("r", a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			if i%2 == 0 {
				c.Put("r", b)
			} else {
				c.Put("r", a)
			}
		}
	}()
	for {
		select {
		case <-done:
			if st := c.Stats(); st.Entries != 1 || st.Bytes != CertMemory(a) {
				t.Fatalf("stats = %+v", st)
			}
			return
		default:
		}
		if got := c.Get("r"); got != nil && got != a && got != b {
			t.Fatal("a hit returned a certificate never cached")
		} else if got != nil {
			_ = got.Certificate[0][0]
		}
	}
}
