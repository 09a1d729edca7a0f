package domainstore

import (
	"context"
	"errors"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
)

// txn is what a write sees while the sequencer builds a journal entry:
// the memory state, which is the fleet's current state because the
// journal lock is held and the journal was read up to its end, plus the
// changes staged by earlier writes of the same entry. Each write runs in
// a child txn that is merged into the entry's only when the write
// succeeds, so a rejected write stages nothing.
type txn struct {
	s      *Store
	ctx    context.Context
	seq    uint64 // the entry being built
	parent *txn

	ops   []entryOp
	doms  map[string]*Domain      // staged domain records by ID; nil: deleted
	names map[string]string       // staged names: name -> ID; "": freed
	certs map[string]*Certificate // staged certificate records by ID; nil: deleted
	use   map[string]int          // changes of certUse
}

func newTxn(s *Store, ctx context.Context, seq uint64, parent *txn) *txn {
	return &txn{s: s, ctx: ctx, seq: seq, parent: parent,
		doms: make(map[string]*Domain), names: make(map[string]string),
		certs: make(map[string]*Certificate), use: make(map[string]int)}
}

// merge adds the changes of child c to tx.
func (tx *txn) merge(c *txn) {
	tx.ops = append(tx.ops, c.ops...)
	for k, v := range c.doms {
		tx.doms[k] = v
	}
	for k, v := range c.names {
		tx.names[k] = v
	}
	for k, v := range c.certs {
		tx.certs[k] = v
	}
	for k, v := range c.use {
		tx.use[k] += v
	}
}

func (tx *txn) stagedDomain(id string) (*Domain, bool) {
	for t := tx; t != nil; t = t.parent {
		if d, ok := t.doms[id]; ok {
			return d, true
		}
	}
	return nil, false
}

func (tx *txn) stagedCert(id string) (*Certificate, bool) {
	for t := tx; t != nil; t = t.parent {
		if c, ok := t.certs[id]; ok {
			return c, true
		}
	}
	return nil, false
}

// domain returns the current record of domain id, a copy.
func (tx *txn) domain(id string) (*Domain, error) {
	if d, ok := tx.stagedDomain(id); ok {
		if d == nil {
			return nil, notFound("domain", id)
		}
		return d.clone(), nil
	}
	s := tx.s
	if e := s.domains[id]; e != nil {
		d, err := s.readDomain(tx.ctx, id, e.Version)
		if errors.Is(err, errVersionGone) {
			// memory is current under the lock: the record is gone
			return nil, recordDamaged("domain", id, errors.New("the record is missing"))
		}
		return d, err
	}
	if dm := s.damaged[id]; dm != nil {
		return nil, recordDamaged("domain", id, errors.New(dm.Reason))
	}
	return nil, notFound("domain", id)
}

// domainState returns the version, name and certificate of domain id as
// the entry being built sees it, and whether it exists (live or damaged).
func (tx *txn) domainState(id string) (version uint64, name, certID string, exists bool) {
	if d, ok := tx.stagedDomain(id); ok {
		if d == nil {
			return 0, "", "", false
		}
		return tx.seq, d.Domain, d.CertificateID, true
	}
	if e := tx.s.domains[id]; e != nil {
		return e.Version, e.Name, e.CertificateID, true
	}
	if dm := tx.s.damaged[id]; dm != nil && dm.version > 0 {
		return dm.version, dm.Name, "", true
	}
	return 0, "", "", false
}

// nameOwner returns the domain registered under name, if any.
func (tx *txn) nameOwner(name string) (string, bool) {
	for t := tx; t != nil; t = t.parent {
		if id, ok := t.names[name]; ok {
			return id, id != ""
		}
	}
	return tx.s.nameOwnerLocked(name)
}

// certExists reports whether certificate id exists (damaged or not).
func (tx *txn) certExists(id string) bool {
	if c, ok := tx.stagedCert(id); ok {
		return c != nil
	}
	_, ok := tx.s.certMetaOf(id)
	return ok
}

// certMetaOf returns what memory knows of certificate id. The sequencer
// reads the rest of the state without s.mu, as only it changes it; the
// certificates' map it reads under s.mu, as the dates loop fills in dates.
func (s *Store) certMetaOf(id string) (certMeta, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.certs[id]
	return m, ok
}

// certificate returns the current record of certificate id.
func (tx *txn) certificate(id string) (*Certificate, error) {
	if c, ok := tx.stagedCert(id); ok {
		if c == nil {
			return nil, notFound("certificate", id)
		}
		cc := *c
		return &cc, nil
	}
	v, ok := tx.s.certMetaOf(id)
	if !ok {
		return nil, notFound("certificate", id)
	}
	c := new(Certificate)
	if err := tx.s.readCertificate(tx.ctx, id, v.version, c); err != nil {
		return nil, err
	}
	return c, nil
}

// certUsers returns how many domains use certificate id.
func (tx *txn) certUsers(id string) int {
	n := tx.s.certUse[id]
	for t := tx; t != nil; t = t.parent {
		n += t.use[id]
	}
	return n
}

// putDomain stages d as the new record of its domain; old is the record
// it replaces (nil for a new domain), for listeners.
func (tx *txn) putDomain(d *Domain, old *Domain) {
	prev, _, oldCert, exists := tx.domainState(d.ID)
	if exists && oldCert != "" {
		tx.use[oldCert]--
	}
	if d.CertificateID != "" {
		tx.use[d.CertificateID]++
	}
	d = d.clone()
	tx.doms[d.ID] = d
	tx.names[d.Domain] = d.ID
	tx.ops = append(tx.ops, entryOp{Op: opPutDomain, ID: d.ID, Prev: prev, Domain: d, old: old})
}

// deleteDomain stages the deletion of domain id (live or damaged); old is
// its record if it could be read.
func (tx *txn) deleteDomain(id string, old *Domain) {
	prev, name, certID, _ := tx.domainState(id)
	if certID != "" {
		tx.use[certID]--
	}
	if name != "" {
		if owner, _ := tx.nameOwner(name); owner == id {
			tx.names[name] = ""
		}
	}
	tx.doms[id] = nil
	tx.ops = append(tx.ops, entryOp{Op: opDelDomain, ID: id, Prev: prev, Name: name, old: old})
}

// putCert stages c as a certificate record; upload is the parsed bundle
// of an upload this instance stores, for listeners.
func (tx *txn) putCert(c *Certificate, upload *bundle.Bundle) {
	cc := *c
	tx.certs[c.ID] = &cc
	tx.ops = append(tx.ops, entryOp{Op: opPutCert, ID: c.ID, Certificate: &cc, upload: upload})
}

// deleteCert stages the deletion of certificate id and, for an upload,
// of its private key.
func (tx *txn) deleteCert(id string, deleteKey bool) {
	tx.certs[id] = nil
	tx.ops = append(tx.ops, entryOp{Op: opDelCert, ID: id, DeleteKey: deleteKey})
}
