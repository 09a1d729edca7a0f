package domainstore

import (
	"slices"
	"time"
)

// Memory keeps each certificate's validity period (certMeta) and an index
// of the certificates by the end of it, per source (uploaded, managed), so
// that metrics count the certificates that expire within a window, and the
// expiry announcements find them, without reading any record: the figures
// follow every upload, issuance and deletion as memory applies it.

// certMeta is what memory keeps of a certificate.
type certMeta struct {
	// version is the journal entry that wrote the record; 0 if unknown.
	version uint64
	// notBefore and notAfter are the validity period in Unix seconds;
	// notAfter is 0 while the dates are not known (a store loaded by
	// listing the records, until it has read them).
	notBefore, notAfter int64
	// managed is set for a certificate that ACME issued.
	managed bool
}

func (m certMeta) datesKnown() bool { return m.notAfter != 0 }

// metaOf returns the memory of certificate record c at version v.
func metaOf(c *Certificate, v uint64) certMeta {
	m := certMeta{version: v, managed: c.ManagedDomainID != ""}
	if !c.NotAfter.IsZero() {
		m.notBefore, m.notAfter = c.NotBefore.Unix(), c.NotAfter.Unix()
	}
	return m
}

// Certificate sources, the indexes of Store.expiry.
const (
	sourceUpload = iota
	sourceManaged
	numSources
)

func sourceOf(m certMeta) int {
	if m.managed {
		return sourceManaged
	}
	return sourceUpload
}

// expiryIndex holds certificates by the end of their validity: bucketed by
// UTC day, each bucket sorted by time and ID. Counting those that end by a
// time visits one entry per distinct day (a few hundred: certificates live
// at most a few years), never one per certificate.
type expiryIndex struct {
	days map[int64][]expiryItem
	keys []int64 // the days with certificates, sorted
	n    int
}

type expiryItem struct {
	t  int64 // not_after, Unix seconds
	id string
}

func cmpItem(a, b expiryItem) int {
	switch {
	case a.t < b.t:
		return -1
	case a.t > b.t:
		return 1
	case a.id < b.id:
		return -1
	case a.id > b.id:
		return 1
	}
	return 0
}

func dayOf(t int64) int64 {
	d := t / 86400
	if t < 0 && t%86400 != 0 {
		d--
	}
	return d
}

func (x *expiryIndex) add(t int64, id string) {
	if x.days == nil {
		x.days = make(map[int64][]expiryItem)
	}
	d := dayOf(t)
	items, ok := x.days[d]
	if !ok {
		i, _ := slices.BinarySearch(x.keys, d)
		x.keys = slices.Insert(x.keys, i, d)
	}
	it := expiryItem{t, id}
	i, found := slices.BinarySearchFunc(items, it, cmpItem)
	if found {
		return
	}
	x.days[d] = slices.Insert(items, i, it)
	x.n++
}

// build fills an empty index with items at once: a sort, not an insertion
// each (a snapshot of a million certificates loads in milliseconds).
func (x *expiryIndex) build(items []expiryItem) {
	slices.SortFunc(items, cmpItem)
	items = slices.CompactFunc(items, func(a, b expiryItem) bool { return cmpItem(a, b) == 0 })
	x.days = make(map[int64][]expiryItem)
	x.keys, x.n = nil, len(items)
	for len(items) > 0 {
		d := dayOf(items[0].t)
		n := 1
		for n < len(items) && dayOf(items[n].t) == d {
			n++
		}
		x.days[d] = slices.Clip(items[:n])
		x.keys = append(x.keys, d)
		items = items[n:]
	}
}

// addMany adds items: one by one when they are few next to the index,
// else by building the index again (a sort beats many inserts into the
// middle of large day buckets).
func (x *expiryIndex) addMany(items []expiryItem) {
	if len(items) < 64 || len(items) < x.n/4 {
		for _, it := range items {
			x.add(it.t, it.id)
		}
		return
	}
	all := make([]expiryItem, 0, x.n+len(items))
	for _, d := range x.keys {
		all = append(all, x.days[d]...)
	}
	x.build(append(all, items...))
}

func (x *expiryIndex) remove(t int64, id string) {
	d := dayOf(t)
	items := x.days[d]
	i, found := slices.BinarySearchFunc(items, expiryItem{t, id}, cmpItem)
	if !found {
		return
	}
	x.n--
	if len(items) == 1 {
		delete(x.days, d)
		if k, ok := slices.BinarySearch(x.keys, d); ok {
			x.keys = slices.Delete(x.keys, k, k+1)
		}
		return
	}
	x.days[d] = slices.Delete(items, i, i+1)
}

// countBy returns how many certificates end at or before t.
func (x *expiryIndex) countBy(t int64) int {
	last := dayOf(t)
	n := 0
	for _, d := range x.keys {
		if d > last {
			break
		}
		items := x.days[d]
		if d < last {
			n += len(items)
			continue
		}
		n += sortSearch(items, t)
	}
	return n
}

// sortSearch returns how many of the sorted items end at or before t.
func sortSearch(items []expiryItem, t int64) int {
	i, _ := slices.BinarySearchFunc(items, t+1, func(it expiryItem, t int64) int {
		switch {
		case it.t < t:
			return -1
		case it.t > t:
			return 1
		}
		return 0
	})
	return i
}

// earliest returns the earliest end of a certificate, if there is one.
func (x *expiryIndex) earliest() (int64, bool) {
	if len(x.keys) == 0 {
		return 0, false
	}
	return x.days[x.keys[0]][0].t, true
}

// eachBy calls fn for every certificate that ends at or before t, earliest
// first.
func (x *expiryIndex) eachBy(t int64, fn func(expiryItem)) {
	last := dayOf(t)
	for _, d := range x.keys {
		if d > last {
			return
		}
		for _, it := range x.days[d] {
			if it.t > t {
				return
			}
			fn(it)
		}
	}
}

// indexDatesLocked adds certificate id to the expiry index, if its dates
// are known. s.mu must be held.
func (s *Store) indexDatesLocked(id string, m certMeta) {
	if m.datesKnown() {
		s.expiry[sourceOf(m)].add(m.notAfter, id)
	}
}

// unindexDatesLocked removes certificate id from the expiry index. s.mu
// must be held.
func (s *Store) unindexDatesLocked(id string, m certMeta) {
	if m.datesKnown() {
		s.expiry[sourceOf(m)].remove(m.notAfter, id)
	}
}

// ExpiryFigures are counts of certificates by how soon they end, for one
// source.
type ExpiryFigures struct {
	// Expired counts certificates that have ended.
	Expired int
	// Within counts, for each window asked for, the certificates that
	// have not ended and end within it.
	Within []int
	// Earliest is the earliest end of a certificate (zero if none).
	Earliest time.Time
}

// ExpiryFigures returns, for uploaded and for managed certificates, how
// many have ended at now and how many end within each of windows. It reads
// the in-memory index (one step per distinct day of expiry), never the
// records. Certificates whose dates are not known yet (see DatesPending)
// are not counted.
func (s *Store) ExpiryFigures(now time.Time, windows ...time.Duration) (upload, managed ExpiryFigures) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	figures := func(x *expiryIndex) ExpiryFigures {
		f := ExpiryFigures{Expired: x.countBy(now.Unix()), Within: make([]int, len(windows))}
		for i, w := range windows {
			f.Within[i] = x.countBy(now.Add(w).Unix()) - f.Expired
		}
		if t, ok := x.earliest(); ok {
			f.Earliest = time.Unix(t, 0).UTC()
		}
		return f
	}
	return figures(&s.expiry[sourceUpload]), figures(&s.expiry[sourceManaged])
}

// ExpiringCertificate is a certificate that ends soon, as
// ExpiringCertificates reports it.
type ExpiringCertificate struct {
	ID                  string
	NotBefore, NotAfter time.Time
	// Managed is set for a certificate that ACME issued.
	Managed bool
}

// ExpiringCertificates returns the certificates, uploaded and managed,
// that end at or before by, earliest first. It reads the in-memory index
// (the certificates it returns, and one step per day of expiry).
func (s *Store) ExpiringCertificates(by time.Time) []ExpiringCertificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []ExpiringCertificate
	for src := range numSources {
		s.expiry[src].eachBy(by.Unix(), func(it expiryItem) {
			out = append(out, expiringOf(it.id, s.certs[it.id]))
		})
	}
	slices.SortStableFunc(out, func(a, b ExpiringCertificate) int { return a.NotAfter.Compare(b.NotAfter) })
	return out
}

// expiringOf describes certificate id as memory knows it.
func expiringOf(id string, m certMeta) ExpiringCertificate {
	return ExpiringCertificate{ID: id, NotBefore: time.Unix(m.notBefore, 0).UTC(),
		NotAfter: time.Unix(m.notAfter, 0).UTC(), Managed: m.managed}
}

// CertificateDates returns the dates of those of the certificates ids
// whose dates memory knows, earliest end first. It reads memory: one
// lookup per ID.
func (s *Store) CertificateDates(ids []string) []ExpiringCertificate {
	s.mu.RLock()
	out := make([]ExpiringCertificate, 0, len(ids))
	for _, id := range ids {
		if m, ok := s.certs[id]; ok && m.datesKnown() {
			out = append(out, expiringOf(id, m))
		}
	}
	s.mu.RUnlock()
	slices.SortStableFunc(out, func(a, b ExpiringCertificate) int { return a.NotAfter.Compare(b.NotAfter) })
	return out
}

// DomainsUsing returns, for each of the certificates ids, the domains that
// use it, oldest first (an empty list for one that no domain uses). It
// reads memory: one pass over the domains, so ask for many at once.
func (s *Store) DomainsUsing(ids []string) map[string][]string {
	out := make(map[string][]string, len(ids))
	for _, id := range ids {
		out[id] = []string{}
	}
	if len(ids) == 0 {
		return out
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, id := range s.domainIDs {
		e := s.domains[id]
		if e == nil || e.CertificateID == "" {
			continue
		}
		if users, ok := out[e.CertificateID]; ok {
			out[e.CertificateID] = append(users, id)
		}
	}
	return out
}

// DatesPending returns how many certificates memory does not yet know the
// dates of (the store reads them in the background after a start from a
// listing of the records or from an older snapshot); ExpiryFigures and
// ExpiringCertificates leave them out until then.
func (s *Store) DatesPending() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.certs) - s.expiry[sourceUpload].n - s.expiry[sourceManaged].n - s.damagedCertsLocked()
}

// damagedCertsLocked counts the damaged certificate records. s.mu must be
// held.
func (s *Store) damagedCertsLocked() int {
	n := 0
	for id := range s.damaged {
		if _, ok := s.certs[id]; ok {
			n++
		}
	}
	return n
}
