package domainstore

import "strings"

// The store's per-certificate maps are keyed by the ID's 26 characters
// as an array, not by the ID string: a map whose keys and values hold no
// pointers is never scanned by the garbage collector, while one keyed by
// strings is scanned whole at every cycle (tens of megabytes at a million
// certificates, on a server whose handshakes make the GC run often).
// Every ID in memory has newID's shape (the journal, listings and
// snapshots check it); any other goes to a small string-keyed map, so the
// tables accept every ID.

// idKey is the part of a certificate ID after its prefix.
type idKey [26]byte

// certKeyOf returns id's key, or false if id is not a certificate ID of
// newID's shape.
func certKeyOf(id string) (idKey, bool) {
	var k idKey
	rest, ok := strings.CutPrefix(id, CertificatePrefix)
	if !ok || len(rest) != len(k) {
		return k, false
	}
	copy(k[:], rest)
	return k, true
}

// certTable maps certificate IDs to what memory knows of them.
type certTable struct {
	m     map[idKey]certMeta
	other map[string]certMeta // IDs of another shape (none expected)
}

func newCertTable(n int) certTable {
	return certTable{m: make(map[idKey]certMeta, n), other: map[string]certMeta{}}
}

func (t *certTable) get(id string) (certMeta, bool) {
	if k, ok := certKeyOf(id); ok {
		m, found := t.m[k]
		return m, found
	}
	m, found := t.other[id]
	return m, found
}

func (t *certTable) set(id string, m certMeta) {
	if k, ok := certKeyOf(id); ok {
		t.m[k] = m
		return
	}
	t.other[id] = m
}

func (t *certTable) del(id string) {
	if k, ok := certKeyOf(id); ok {
		delete(t.m, k)
		return
	}
	delete(t.other, id)
}

func (t *certTable) len() int { return len(t.m) + len(t.other) }

// useTable counts the domains that use each certificate.
type useTable struct {
	m     map[idKey]int32
	other map[string]int32 // IDs of another shape (none expected)
}

func newUseTable(n int) useTable {
	return useTable{m: make(map[idKey]int32, n), other: map[string]int32{}}
}

func (t *useTable) get(id string) int {
	if k, ok := certKeyOf(id); ok {
		return int(t.m[k])
	}
	return int(t.other[id])
}

// add changes id's count by delta, forgetting it at zero or below.
func (t *useTable) add(id string, delta int32) {
	if k, ok := certKeyOf(id); ok {
		if n := t.m[k] + delta; n > 0 {
			t.m[k] = n
		} else {
			delete(t.m, k)
		}
		return
	}
	if n := t.other[id] + delta; n > 0 {
		t.other[id] = n
	} else {
		delete(t.other, id)
	}
}
