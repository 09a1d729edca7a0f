package certsource

import (
	"context"
	"crypto"
	"crypto/tls"
	"io"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/sniindex"
)

// Hot serves the uploaded certificates that handshakes use from a CertMagic
// cache that the TLS server consults before it asks any certificate
// manager (in Caddy: the tls app's own cache). A handshake answered from
// that cache costs what a handshake for a certificate Caddy loaded itself
// costs; one that reaches the manager also pays for CertMagic's handling
// of a manager's result (parsing the names, hashing the chain), every time.
//
// A certificate is promoted on a handshake through the manager that finds
// it cached (the first for an upload, which is cached when it is stored;
// the second for one read from storage on a miss), when every name it
// holds is an exact, uploaded domain that serves it (so that the other
// cache answers those names with the certificate the Source would serve;
// it also matches server names the Source would not, such as ones with
// surrounding spaces, which CertMagic trims), and it is removed on every
// change of those domains or of the certificate, and when the Source's own
// cache drops it: the promoted set is a subset of the Source's cache and
// shares its memory. Certificates with wildcard, IP, email or URI names
// are never promoted.
//
// A promoted copy's private key counts each signature, one per full
// handshake, as a served handshake, and marks the Source's cache entry as
// used. It is safe for concurrent use.
type Hot struct {
	src   *Source
	cache *certmagic.Cache
	magic *certmagic.Config
	log   *zap.Logger

	// gen changes on every change of domains or certificates: a
	// promotion decided on an index read before a change is dropped
	gen atomic.Uint64

	// full is set while entries are at capacity, so that handshakes
	// answered by the manager then skip the lock
	full atomic.Bool

	mu       sync.Mutex
	capacity int
	entries  map[string]*hotEntry // certificate ID -> promoted copy
	names    map[string]string    // promoted name -> certificate ID
	skip     map[string]uint64    // certificate ID -> gen at which it was found ineligible

	promotions, removals atomic.Uint64
}

type hotEntry struct {
	hash  string
	names []string
}

// NewHot returns a promoted set of up to capacity certificates of s, kept
// in cache (a CertMagic cache that answers handshakes before managers do),
// and attaches it to s. Capacity 0 promotes nothing.
func NewHot(s *Source, cache *certmagic.Cache, capacity int, log *zap.Logger) *Hot {
	if log == nil {
		log = zap.NewNop()
	}
	h := &Hot{
		src:   s,
		cache: cache,
		// a config only to insert into cache: no OCSP request when a
		// handshake promotes, no events, and no expiry lines (the store
		// warns about expiring uploads itself); the cache's own hourly
		// maintenance staples what it holds, with its owner's settings
		magic: certmagic.New(cache, certmagic.Config{
			OCSP:   certmagic.OCSPConfig{DisableStapling: true},
			Logger: zap.NewNop(),
		}),
		log:      log,
		capacity: max(capacity, 0),
		entries:  make(map[string]*hotEntry),
		names:    make(map[string]string),
		skip:     make(map[string]uint64),
	}
	h.full.Store(h.capacity == 0)
	s.hot.Store(h)
	return h
}

// SetCapacity changes the bound; promoted certificates past a smaller one
// are removed.
func (h *Hot) SetCapacity(capacity int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.capacity = max(capacity, 0)
	var hashes []string
	for id, e := range h.entries {
		if len(h.entries) <= h.capacity {
			break
		}
		hashes = append(hashes, h.removeLocked(id, e))
	}
	h.cache.Remove(hashes)
	h.full.Store(len(h.entries) >= h.capacity)
}

// Cache returns the CertMagic cache h promotes into.
func (h *Hot) Cache() *certmagic.Cache { return h.cache }

// HotStats are figures of a Hot.
type HotStats struct {
	Entries    int
	Capacity   int
	Promotions uint64
	Removals   uint64
}

// Stats returns the promoted set's figures.
func (h *Hot) Stats() HotStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return HotStats{Entries: len(h.entries), Capacity: h.capacity,
		Promotions: h.promotions.Load(), Removals: h.removals.Load()}
}

// Promoted reports whether certificate id is promoted.
func (h *Hot) Promoted(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.entries[id] != nil
}

// Close removes every promoted certificate from the other cache and
// detaches h from its Source.
func (h *Hot) Close() {
	h.src.hot.CompareAndSwap(h, nil)
	h.gen.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	hashes := make([]string, 0, len(h.entries))
	for id, e := range h.entries {
		hashes = append(hashes, h.removeLocked(id, e))
	}
	h.cache.Remove(hashes)
	h.capacity = 0
	h.full.Store(true)
}

// promote is called after the Source served c, certificate id, for
// serverName through entry e, which it read from the index at generation
// gen. It promotes c when it may.
func (h *Hot) promote(gen uint64, serverName string, e *domainstore.Entry, c *tls.Certificate) {
	if e.Managed || e.Name != serverName || c.Leaf == nil {
		return // managed, or matched by a wildcard domain
	}
	if h.full.Load() {
		return
	}
	id := e.CertificateID
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen.Load() != gen || len(h.entries) >= h.capacity || h.skip[id] == gen+1 {
		return
	}
	if old := h.entries[id]; old != nil {
		// promoted, yet the manager was asked: the other cache lost it
		// (a reload of its owner removes certificates by hash)
		h.cache.Remove([]string{h.removeLocked(id, old)})
	}
	ce := h.src.cache.entry(id)
	if ce == nil || ce.cert != c {
		return // dropped or replaced since it was served
	}
	names, ok := h.eligible(id, c)
	if !ok {
		if len(h.skip) > 2*h.capacity+64 {
			clear(h.skip)
		}
		h.skip[id] = gen + 1
		return
	}
	cp := *c
	cp.PrivateKey = countingKey(c.PrivateKey, ce, &h.src.handshakes.Served)
	hash, err := h.magic.CacheUnmanagedTLSCertificate(context.Background(), cp, []string{"domaincerts"})
	if err != nil {
		h.log.Debug("promoting a certificate", zap.String("cert_id", id), zap.Error(err))
		h.skip[id] = gen + 1
		return
	}
	h.entries[id] = &hotEntry{hash: hash, names: names}
	for _, n := range names {
		h.names[n] = id
	}
	h.promotions.Add(1)
	h.full.Store(len(h.entries) >= h.capacity)
}

// eligible returns the names of c when each is an exact uploaded domain
// that serves id and the other cache holds no certificate for any.
func (h *Hot) eligible(id string, c *tls.Certificate) ([]string, bool) {
	leaf := c.Leaf
	if len(leaf.IPAddresses) > 0 || len(leaf.EmailAddresses) > 0 || len(leaf.URIs) > 0 {
		return nil, false
	}
	names := make([]string, 0, len(leaf.DNSNames)+1)
	if cn := leaf.Subject.CommonName; cn != "" {
		names = append(names, sniindex.LowerASCII(cn))
	}
	for _, n := range leaf.DNSNames {
		if n = sniindex.LowerASCII(n); len(names) == 0 || n != names[0] {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, false
	}
	for _, n := range names {
		if strings.Contains(n, "*") {
			return nil, false
		}
		e, ok := h.src.store.Lookup(n)
		if !ok || e.Name != n || e.Managed || e.CertificateID != id {
			return nil, false
		}
		if _, taken := h.names[n]; taken || len(h.cache.AllMatchingCertificates(n)) > 0 {
			return nil, false
		}
	}
	return names, true
}

// removeLocked forgets the promoted certificate id and returns its hash in
// the other cache, for the caller to remove.
func (h *Hot) removeLocked(id string, e *hotEntry) string {
	delete(h.entries, id)
	h.full.Store(len(h.entries) >= h.capacity)
	for _, n := range e.names {
		if h.names[n] == id {
			delete(h.names, n)
		}
	}
	h.removals.Add(1)
	return e.hash
}

// changed removes what a change of certificates ids or of domains names
// may have made stale, and drops promotions decided before it.
func (h *Hot) changed(ids, names []string) {
	h.gen.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range names {
		if id, ok := h.names[n]; ok {
			ids = append(ids, id)
		}
	}
	h.removeIDsLocked(ids)
}

// dropped removes certificates the Source's cache no longer holds.
func (h *Hot) dropped(ids []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removeIDsLocked(ids)
}

// removeIDsLocked removes those of ids that are promoted, from h and from
// the other cache.
func (h *Hot) removeIDsLocked(ids []string) {
	var hashes []string
	for _, id := range ids {
		if e := h.entries[id]; e != nil {
			hashes = append(hashes, h.removeLocked(id, e))
		}
	}
	if len(hashes) > 0 {
		h.cache.Remove(hashes)
	}
}

// countingKey wraps a private key so that each use of it in a handshake
// counts a served handshake and marks the cache entry as used.
func countingKey(key crypto.PrivateKey, ce *cacheEntry, served *paddedCounter) crypto.PrivateKey {
	signer, ok := key.(crypto.Signer)
	if !ok {
		return key
	}
	k := &hotSigner{Signer: signer, entry: ce, served: served}
	if d, ok := key.(crypto.Decrypter); ok {
		return &hotDecrypter{hotSigner: k, d: d}
	}
	return k
}

// hotSigner is a private key of a promoted certificate.
type hotSigner struct {
	crypto.Signer
	entry  *cacheEntry
	served *paddedCounter
}

func (k *hotSigner) used() {
	k.served.Add(1)
	if !k.entry.referenced.Load() {
		k.entry.referenced.Store(true)
	}
}

// Sign signs with the key; a TLS server signs once per full handshake.
func (k *hotSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	k.used()
	return k.Signer.Sign(rand, digest, opts)
}

// hotDecrypter is an RSA private key of a promoted certificate; a TLS 1.2
// server with RSA key exchange decrypts instead of signing.
type hotDecrypter struct {
	*hotSigner
	d crypto.Decrypter
}

// Decrypt decrypts with the key.
func (k *hotDecrypter) Decrypt(rand io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	k.used()
	return k.d.Decrypt(rand, msg, opts)
}
