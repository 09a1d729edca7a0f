package certsource

import (
	"crypto/tls"
	"sync"
	"sync/atomic"
)

// DefaultCacheCapacity is the number of parsed certificates kept in memory
// when the operator sets no capacity.
const DefaultCacheCapacity = 10_000

// Cache keeps parsed, ready-to-serve certificates by certificate ID, up to
// a number of certificates and, optionally, an estimate of the memory they
// take (see CertMemory). Eviction is CLOCK (second chance): a hit only sets
// a flag, so hits never take the write lock. It is safe for concurrent use.
type Cache struct {
	mu       sync.RWMutex
	capacity int
	maxBytes int64 // 0: no bound
	bytes    int64 // CertMemory of the entries
	entries  map[string]*cacheEntry
	ring     []string // IDs in insertion order, for the clock hand
	hand     int

	hits, misses, evictions atomic.Uint64

	// onDrop, if set, hears the IDs of entries that left the cache or were
	// replaced, after the cache's lock is released.
	onDrop func(ids []string)
}

type cacheEntry struct {
	cert       *tls.Certificate
	size       int64 // CertMemory(cert)
	referenced atomic.Bool
}

// NewCache returns a cache for up to capacity certificates (at least 1).
func NewCache(capacity int) *Cache {
	if capacity < 1 {
		capacity = 1
	}
	return &Cache{capacity: capacity, entries: make(map[string]*cacheEntry)}
}

// SetCapacity changes the bound; a smaller bound evicts at the next Put.
func (c *Cache) SetCapacity(capacity int) {
	if capacity < 1 {
		capacity = 1
	}
	c.mu.Lock()
	c.capacity = capacity
	c.mu.Unlock()
}

// SetMaxBytes bounds the estimated memory of the cached certificates, in
// bytes (0: no bound besides the capacity); a smaller bound evicts at the
// next Put.
func (c *Cache) SetMaxBytes(n int64) {
	c.mu.Lock()
	c.maxBytes = max(n, 0)
	c.mu.Unlock()
}

// Get returns the certificate cached for id, or nil.
func (c *Cache) Get(id string) *tls.Certificate {
	cert := c.peek(id)
	if cert == nil {
		c.misses.Add(1)
		return nil
	}
	c.hits.Add(1)
	return cert
}

// peek is Get without counting a hit or a miss.
func (c *Cache) peek(id string) *tls.Certificate {
	c.mu.RLock()
	e := c.entries[id]
	c.mu.RUnlock()
	if e == nil {
		return nil
	}
	if !e.referenced.Load() {
		e.referenced.Store(true)
	}
	return e.cert
}

// entry returns the entry cached for id, or nil, without marking it.
func (c *Cache) entry(id string) *cacheEntry {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.entries[id]
}

// Put caches cert under id, replacing what was cached under it, and evicts
// others while the cache is over a bound. A certificate larger than the memory bound on its own is still
// cached, alone. The chain's intermediates are shared with other cached
// certificates that carry the same ones (most certificates come from a few
// CAs).
func (c *Cache) Put(id string, cert *tls.Certificate) {
	for i := 1; i < len(cert.Certificate); i++ {
		cert.Certificate[i] = intern(cert.Certificate[i])
	}
	size := CertMemory(cert)
	var dropped []string
	c.mu.Lock()
	if e, ok := c.entries[id]; ok {
		// replaced by a new entry, so that a hit that holds the old one
		// never sees it change; its ring slot turns stale
		c.bytes -= e.size
		delete(c.entries, id)
		dropped = append(dropped, id)
	}
	for len(c.entries) > 0 && (len(c.entries) >= c.capacity || c.maxBytes > 0 && c.bytes+size > c.maxBytes) {
		evicted, ok := c.evictLocked()
		if !ok {
			break
		}
		dropped = append(dropped, evicted)
	}
	c.entries[id] = &cacheEntry{cert: cert, size: size}
	c.bytes += size
	c.ring = append(c.ring, id)
	c.mu.Unlock()
	if len(dropped) > 0 && c.onDrop != nil {
		c.onDrop(dropped)
	}
}

// Remove drops id from the cache.
func (c *Cache) Remove(id string) {
	c.mu.Lock()
	e, ok := c.entries[id]
	if ok {
		c.bytes -= e.size
		delete(c.entries, id)
	}
	// the ring keeps the stale ID until the hand passes it, or until
	// stale slots outnumber live ones
	if len(c.ring) > 2*len(c.entries)+64 {
		c.compactLocked()
		c.hand = 0
	}
	c.mu.Unlock()
	if ok && c.onDrop != nil {
		c.onDrop([]string{id})
	}
}

// evictLocked advances the clock hand until it evicts one entry, and
// returns its ID and whether it did.
func (c *Cache) evictLocked() (string, bool) {
	for len(c.ring) > 0 {
		if c.hand >= len(c.ring) {
			c.hand = 0
			c.compactLocked()
			if len(c.ring) == 0 {
				return "", false
			}
		}
		id := c.ring[c.hand]
		e, ok := c.entries[id]
		if !ok { // removed earlier; drop the stale slot
			c.ring[c.hand] = c.ring[len(c.ring)-1]
			c.ring = c.ring[:len(c.ring)-1]
			continue
		}
		if e.referenced.Load() {
			e.referenced.Store(false)
			c.hand++
			continue
		}
		delete(c.entries, id)
		c.bytes -= e.size
		c.ring[c.hand] = c.ring[len(c.ring)-1]
		c.ring = c.ring[:len(c.ring)-1]
		c.evictions.Add(1)
		return id, true
	}
	return "", false
}

// compactLocked drops ring slots of removed entries.
func (c *Cache) compactLocked() {
	live := c.ring[:0]
	for _, id := range c.ring {
		if _, ok := c.entries[id]; ok {
			live = append(live, id)
		}
	}
	c.ring = live
}

// CacheStats are counters of a Cache.
type CacheStats struct {
	Entries  int `json:"entries"`
	Capacity int `json:"capacity"`
	// Bytes is the estimated memory of the cached certificates (see
	// CertMemory); MaxBytes its bound, 0 if none.
	Bytes     int64  `json:"bytes"`
	MaxBytes  int64  `json:"max_bytes"`
	Hits      uint64 `json:"hits"`
	Misses    uint64 `json:"misses"`
	Evictions uint64 `json:"evictions"`
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return CacheStats{
		Entries: len(c.entries), Capacity: c.capacity, Bytes: c.bytes, MaxBytes: c.maxBytes,
		Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load(),
	}
}

// Intermediates seen by any cache, by DER. The set is bounded: past
// maxInterned distinct intermediates, new ones are kept as they are.
var (
	internMu sync.Mutex
	interned = make(map[string][]byte)
)

const maxInterned = 10_000

// intern returns the shared copy of an intermediate's DER.
func intern(der []byte) []byte {
	internMu.Lock()
	defer internMu.Unlock()
	if shared, ok := interned[string(der)]; ok {
		return shared
	}
	if len(interned) < maxInterned {
		interned[string(der)] = der
	}
	return der
}
