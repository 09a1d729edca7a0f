// Package sniindex maps TLS server names to values in memory, for the
// handshake path: exact names first, then a wildcard one label up.
//
// The index is sharded; each shard is a map behind its own RWMutex, so a
// lookup takes one shard's read lock for the duration of one or two map
// reads, and a write replaces one entry without rebuilding anything. A hit
// allocates nothing when the server name is already lowercase.
package sniindex

import (
	"strings"
	"sync"
)

const shardCount = 256 // a power of two

// Index maps normalized DNS names, and wildcard names of the form
// "*.example.com", to values. The zero value is not usable; call New.
// It is safe for concurrent use.
type Index[V any] struct {
	shards [shardCount]shard[V]
}

type shard[V any] struct {
	mu    sync.RWMutex
	exact map[string]V
	// wild is keyed by the wildcard's base: "*.example.com" is stored
	// under "example.com", so a lookup needs no string concatenation.
	wild map[string]V
	_    [40]byte // keep shards on separate cache lines
}

// New returns an empty index.
func New[V any]() *Index[V] {
	ix := new(Index[V])
	for i := range ix.shards {
		ix.shards[i].exact = make(map[string]V)
		ix.shards[i].wild = make(map[string]V)
	}
	return ix
}

// Grow makes room for about n more names, to spare rehashing when an
// index is filled in bulk.
func (ix *Index[V]) Grow(n int) {
	per := n/shardCount + 1
	for i := range ix.shards {
		s := &ix.shards[i]
		s.mu.Lock()
		if len(s.exact) == 0 {
			s.exact = make(map[string]V, per)
		}
		s.mu.Unlock()
	}
}

// Normalize returns name as the index stores and looks it up: ASCII
// letters lowercased, without a trailing dot. Other bytes are left as they
// are, so that a server name with non-ASCII characters (which no client
// should send: names go on the wire as A-labels) matches nothing rather
// than an ASCII name it case-folds into. It allocates only when name has
// uppercase letters.
func Normalize(name string) string {
	return LowerASCII(strings.TrimSuffix(name, "."))
}

// LowerASCII lowercases the ASCII letters of s and leaves every other byte
// as it is (strings.ToLower would fold characters such as the KELVIN SIGN
// into ASCII letters). It allocates only when s has uppercase letters.
func LowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// Lookup returns the value for server name sni: the exact name if present,
// else the wildcard one label up ("*.example.com" covers "a.example.com",
// not "example.com" and not "a.b.example.com"). The name is normalized
// first; an empty name never matches.
func (ix *Index[V]) Lookup(sni string) (V, bool) {
	sni = Normalize(sni)
	var zero V
	if sni == "" {
		return zero, false
	}
	s := ix.shardFor(sni)
	s.mu.RLock()
	v, ok := s.exact[sni]
	s.mu.RUnlock()
	if ok {
		return v, true
	}
	dot := strings.IndexByte(sni, '.')
	if dot <= 0 || dot == len(sni)-1 {
		return zero, false
	}
	base := sni[dot+1:]
	s = ix.shardFor(base)
	s.mu.RLock()
	v, ok = s.wild[base]
	s.mu.RUnlock()
	return v, ok
}

// Get returns the value stored under exactly name (which may be a
// wildcard name), without wildcard matching.
func (ix *Index[V]) Get(name string) (V, bool) {
	s, m, key := ix.locate(name)
	s.mu.RLock()
	v, ok := m[key]
	s.mu.RUnlock()
	return v, ok
}

// Set stores v under name, replacing any previous value.
func (ix *Index[V]) Set(name string, v V) {
	s, m, key := ix.locate(name)
	s.mu.Lock()
	m[key] = v
	s.mu.Unlock()
}

// Delete removes name. Deleting a missing name is a no-op.
func (ix *Index[V]) Delete(name string) {
	s, m, key := ix.locate(name)
	s.mu.Lock()
	delete(m, key)
	s.mu.Unlock()
}

// Len returns the number of names in the index.
func (ix *Index[V]) Len() int {
	n := 0
	for i := range ix.shards {
		s := &ix.shards[i]
		s.mu.RLock()
		n += len(s.exact) + len(s.wild)
		s.mu.RUnlock()
	}
	return n
}

// locate returns the shard, the map within it and the key for name.
func (ix *Index[V]) locate(name string) (*shard[V], map[string]V, string) {
	name = Normalize(name)
	if base, ok := strings.CutPrefix(name, "*."); ok {
		s := ix.shardFor(base)
		return s, s.wild, base
	}
	s := ix.shardFor(name)
	return s, s.exact, name
}

// shardFor hashes key with FNV-1a; it does not allocate.
func (ix *Index[V]) shardFor(key string) *shard[V] {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return &ix.shards[h&(shardCount-1)]
}
