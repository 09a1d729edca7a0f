package domainstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
)

// Storage keys of the records, below "domaincerts/".
const (
	prefix          = "domaincerts"
	certificatesDir = prefix + "/certificates"
	domainsDir      = prefix + "/domains"
)

func certRecordKey(id string) string { return certificatesDir + "/" + id + ".json" }

// CertificateKeyKey returns the storage key of an uploaded certificate's
// private key.
func CertificateKeyKey(id string) string { return certificatesDir + "/" + id + ".key" }

// domainRecordKey is the storage key of version v of domain id. The
// version is the number of the journal entry that wrote it, so listing the
// directory tells each record's version without reading it.
func domainRecordKey(id string, v uint64) string {
	return fmt.Sprintf("%s/%s.%016x.json", domainsDir, id, v)
}

// parseDomainKey returns the ID and version of a domain record key.
func parseDomainKey(key string) (string, uint64, bool) {
	base, ok := strings.CutSuffix(path.Base(key), ".json")
	if !ok {
		return "", 0, false
	}
	id, ver, ok := strings.Cut(base, ".")
	if !ok || !validID(DomainPrefix, id) || len(ver) != 16 {
		return "", 0, false
	}
	v, err := strconv.ParseUint(ver, 16, 64)
	if err != nil {
		return "", 0, false
	}
	return id, v, true
}

// Damaged describes a record that exists in storage but cannot be read.
// Lists show it as an item, so that an operator sees it and can delete it;
// it is never served.
type Damaged struct {
	// ID is the record's ID.
	ID string
	// Name is the domain's name when it is known (from an index snapshot),
	// else empty.
	Name string
	// Reason says what is wrong.
	Reason string

	version uint64
}

// resetStateLocked empties the memory state and sizes it for n domains.
// s.mu must be held, or s not yet shared.
func (s *Store) resetStateLocked(n, certs int) {
	s.domains = make(map[string]*Entry, n)
	s.domainIDs = make([]string, 0, n)
	s.certs = make(map[string]certMeta, certs)
	s.expiry = [numSources]expiryIndex{}
	s.certIDs = make([]string, 0, certs)
	s.certUse = make(map[string]int, certs)
	s.damaged = make(map[string]*Damaged)
	s.states = [numDomainStates]int{}
	s.index.Grow(n)
}

// putDomainLocked publishes e and returns the entry it replaced, and the
// live domain it took the name from (nil but for a damaged journal). s.mu
// must be held.
func (s *Store) putDomainLocked(e *Entry) (old, evicted *Entry) {
	old = s.domains[e.DomainID]
	if old != nil {
		s.states[old.State()]--
		s.unuseLocked(old.CertificateID)
		if old.Name != e.Name { // names are immutable; only a damaged journal could do this
			s.index.Delete(old.Name)
		}
	} else {
		if _, wasDamaged := s.damaged[e.DomainID]; wasDamaged {
			delete(s.damaged, e.DomainID)
		} else {
			s.domainIDs = insertSorted(s.domainIDs, e.DomainID)
		}
	}
	if other, taken := s.nameOwnerLocked(e.Name); taken && other != e.DomainID {
		// cannot happen through the journal lock; keep every instance
		// alike: the later write wins the name, the other domain stays
		// listed as damaged so that it can be deleted
		s.log.Error("two domains have the same name; the later write keeps it",
			zap.String("domain", e.Name), zap.String("domain_id", e.DomainID), zap.String("other_domain_id", other))
		evicted = s.markDamagedLocked(other, "another domain ("+e.DomainID+") has the same name; delete one of them")
	}
	s.domains[e.DomainID] = e
	s.states[e.State()]++
	if e.CertificateID != "" {
		s.certUse[e.CertificateID]++
	}
	s.index.Set(e.Name, e)
	return old, evicted
}

// markDamagedLocked turns a live domain into a damaged one and returns its
// entry (nil if it was not live). s.mu must be held.
func (s *Store) markDamagedLocked(id, reason string) *Entry {
	e := s.domains[id]
	if e == nil {
		return nil
	}
	s.unuseLocked(e.CertificateID)
	s.states[e.State()]--
	delete(s.domains, id)
	if owner, _ := s.nameOwnerLocked(e.Name); owner == id {
		s.index.Delete(e.Name)
	}
	s.damaged[id] = &Damaged{ID: id, Name: e.Name, Reason: reason, version: e.Version}
	return e
}

// deleteDomainLocked removes domain id, live or damaged, and returns its
// entry if it was live. s.mu must be held.
func (s *Store) deleteDomainLocked(id string) *Entry {
	e := s.domains[id]
	_, wasDamaged := s.damaged[id]
	if e == nil && !wasDamaged {
		return nil
	}
	if e != nil {
		s.unuseLocked(e.CertificateID)
		s.states[e.State()]--
		delete(s.domains, id)
		if owner, _ := s.nameOwnerLocked(e.Name); owner == id {
			s.index.Delete(e.Name)
		}
	}
	delete(s.damaged, id)
	s.domainIDs = deleteSorted(s.domainIDs, id)
	return e
}

// nameOwnerLocked returns the ID of the live domain named name (a
// normalized name). The SNI index is the only map from names to domains:
// a second one would double what the garbage collector scans at a
// million domains. s.mu must be held (or the caller be the sequencer).
func (s *Store) nameOwnerLocked(name string) (string, bool) {
	e, ok := s.index.Get(name)
	if !ok {
		return "", false
	}
	return e.DomainID, true
}

func (s *Store) unuseLocked(certID string) {
	if certID == "" {
		return
	}
	s.certUse[certID]--
	if s.certUse[certID] <= 0 {
		delete(s.certUse, certID)
	}
}

// putCertLocked records that certificate id exists as m says. Dates that
// m lacks are kept from what memory knew (a certificate's chain never
// changes). s.mu must be held.
func (s *Store) putCertLocked(id string, m certMeta) {
	old, ok := s.certs[id]
	if !ok {
		s.certIDs = insertSorted(s.certIDs, id)
	}
	if !m.datesKnown() && old.datesKnown() {
		m.notBefore, m.notAfter, m.managed = old.notBefore, old.notAfter, old.managed
	}
	if old != m {
		s.unindexDatesLocked(id, old)
		s.indexDatesLocked(id, m)
	}
	s.certs[id] = m
	delete(s.damaged, id)
}

// deleteCertLocked forgets certificate id. s.mu must be held.
func (s *Store) deleteCertLocked(id string) bool {
	m, ok := s.certs[id]
	if !ok {
		return false
	}
	s.unindexDatesLocked(id, m)
	delete(s.certs, id)
	delete(s.damaged, id)
	s.certIDs = deleteSorted(s.certIDs, id)
	return true
}

// notice is a change to tell listeners about, once memory reflects it.
type notice struct {
	old, new *Domain        // a domain change
	certID   string         // a certificate change
	upload   *bundle.Bundle // the parsed upload, for a certificate this instance stored
	deleted  bool
}

// applyToMemory publishes the changes of entry e in memory and returns
// what to tell listeners. s.mu must not be held.
func (s *Store) applyToMemory(e *entry) []notice {
	var out []notice
	s.mu.Lock()
	for i := range e.Ops {
		op := &e.Ops[i]
		switch op.Op {
		case opPutDomain:
			d := op.Domain
			old, evicted := s.putDomainLocked(entryFor(d, e.Seq))
			prev := op.old
			if prev == nil {
				prev = formerDomain(old)
			}
			out = append(out, notice{old: prev, new: d.clone()})
			if evicted != nil {
				out = append(out, notice{old: formerDomain(evicted)})
			}
		case opDelDomain:
			old := s.deleteDomainLocked(op.ID)
			prev := op.old
			if prev == nil {
				prev = formerDomain(old)
			}
			if prev != nil {
				out = append(out, notice{old: prev})
			}
		case opPutCert:
			s.putCertLocked(op.ID, metaOf(op.Certificate, e.Seq))
			if op.upload != nil {
				out = append(out, notice{certID: op.ID, upload: op.upload})
			}
		case opDelCert:
			if s.deleteCertLocked(op.ID) {
				out = append(out, notice{certID: op.ID, deleted: true})
			}
		}
	}
	if e.Seq > s.pos {
		s.pos = e.Seq
	}
	s.mu.Unlock()
	return out
}

// applyToStorage writes the records of entry e: a new version of each
// domain it puts (and the version it replaces deleted), each certificate
// record, and the deletions. It is idempotent, so that the holder of the
// journal lock can apply again an entry whose writer crashed. The journal
// lock must be held.
func (s *Store) applyToStorage(ctx context.Context, e *entry) error {
	// ops on different records touch different keys: they are applied side
	// by side (a storage far away answers in milliseconds), each record's
	// ops in their order
	var order []string
	groups := make(map[string][]*entryOp)
	for i := range e.Ops {
		op := &e.Ops[i]
		if _, seen := groups[op.ID]; !seen {
			order = append(order, op.ID)
		}
		groups[op.ID] = append(groups[op.ID], op)
	}
	apply := func(ops []*entryOp) error {
		for _, op := range ops {
			if err := s.applyOp(ctx, e.Seq, op); err != nil {
				return storageFailed(fmt.Sprintf("writing the records of journal entry %d", e.Seq), err)
			}
		}
		return nil
	}
	if len(order) == 1 {
		return apply(groups[order[0]])
	}
	errs := make([]error, len(order))
	sem := make(chan struct{}, applyParallel)
	var wg sync.WaitGroup
	for i, id := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = apply(groups[id])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// applyParallel is how many records applyToStorage writes at once.
const applyParallel = 16

// applyOp writes the records of one change of entry seq.
func (s *Store) applyOp(ctx context.Context, seq uint64, op *entryOp) error {
	st := s.Storage()
	switch op.Op {
	case opPutDomain:
		b, err := json.Marshal(op.Domain)
		if err == nil {
			err = st.Store(ctx, domainRecordKey(op.ID, seq), b)
		}
		if err == nil && op.Prev != 0 && op.Prev != seq {
			err = st.Delete(ctx, domainRecordKey(op.ID, op.Prev))
		}
		return err
	case opDelDomain:
		if op.Prev != 0 {
			return st.Delete(ctx, domainRecordKey(op.ID, op.Prev))
		}
	case opPutCert:
		rec := *op.Certificate
		rec.JournalVersion = seq
		b, err := json.Marshal(&rec)
		if err == nil {
			err = st.Store(ctx, certRecordKey(op.ID), b)
		}
		return err
	case opDelCert:
		err := st.Delete(ctx, certRecordKey(op.ID))
		if err == nil && op.DeleteKey {
			err = st.Delete(ctx, CertificateKeyKey(op.ID))
		}
		return err
	}
	return nil
}

// notify tells listeners about changes, in order. Only the sequencer
// calls it, so every listener hears every change in journal order.
func (s *Store) notify(ns []notice) {
	if len(ns) == 0 {
		return
	}
	listeners := s.listenersSnapshot()
	for _, n := range ns {
		for _, l := range listeners {
			switch {
			case n.certID != "" && n.deleted:
				l.CertificateDeleted(n.certID)
			case n.certID != "":
				l.CertificateStored(n.certID, n.upload)
			default:
				l.DomainChanged(n.old, n.new)
			}
		}
	}
}

// formerDomain describes, for listeners, a domain known only by its index
// entry: its ID, name, certificate and whether it was managed (with the
// store's default policy standing in for the one it had).
func formerDomain(e *Entry) *Domain {
	if e == nil {
		return nil
	}
	return &Domain{ID: e.DomainID, Domain: e.Name, CertificateID: e.CertificateID}
}

// insertSorted inserts id into the sorted ids, unless it is there. New IDs
// sort last (they start with their creation time), so appending is checked
// first.
func insertSorted(ids []string, id string) []string {
	if n := len(ids); n == 0 || ids[n-1] < id {
		return append(ids, id)
	}
	i, found := slices.BinarySearch(ids, id)
	if found {
		return ids
	}
	return slices.Insert(ids, i, id)
}

func deleteSorted(ids []string, id string) []string {
	if i, ok := slices.BinarySearch(ids, id); ok {
		return slices.Delete(ids, i, i+1)
	}
	return ids
}
