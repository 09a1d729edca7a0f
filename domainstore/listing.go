package domainstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// A full listing reads the record directories. It is for start-up
// without an index snapshot and for an instance that fell behind the
// compacted journal; everything else follows the journal.

// errPartialListing is a listing that failed part way, typically because
// a record was replaced while the directory was walked. It is never taken
// for an empty directory.
var errPartialListing = errors.New("the listing was interrupted (records changed while it ran)")

// listingRetries is how often an unlocked listing is tried before the
// listing takes the journal lock, so that no write interrupts it.
var listingRetries = 3

// recoverFromListing rebuilds memory from a listing of the records: it
// reads the head, lists, reads the domain records whose version differs
// from memory, and sets memory's journal position to that head, so that
// the entries written since are read next. Without the journal lock it
// retries a listing that writers interrupt, then takes the lock.
func (s *Store) recoverFromListing(ctx context.Context, locked bool) error {
	for attempt := 1; ; attempt++ {
		h, err := s.readHead(ctx)
		if err != nil {
			return err
		}
		if _, err = s.readListing(ctx); err == nil {
			s.mu.Lock()
			s.pos = h.Seq
			s.mu.Unlock()
			return nil
		}
		if !errors.Is(err, errPartialListing) {
			return err
		}
		if locked {
			if attempt >= listingRetries {
				return err
			}
			continue
		}
		if attempt >= listingRetries {
			s.log.Info("records keep changing while they are listed; listing under the journal lock")
			lctx, cancel := context.WithTimeout(ctx, s.timeout())
			err := s.lock(lctx, journalLock)
			cancel()
			if err != nil {
				return storageFailed("waiting for the journal lock", err)
			}
			err = s.recoverFromListing(ctx, true)
			s.unlock(journalLock)
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// listKeys lists the keys directly below dir. A listing that reports
// "not found" counts as empty only if dir itself does not exist; otherwise
// a key vanished during the listing and the listing is partial.
func listKeys(ctx context.Context, st certmagic.Storage, dir string) ([]string, error) {
	keys, err := st.List(ctx, dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := st.Stat(ctx, dir); errors.Is(serr, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("listing %s: %w: %v", dir, errPartialListing, err)
	}
	if err != nil {
		return nil, storageFailed("listing the records", err)
	}
	return keys, nil
}

// readListing lists the domain and certificate records and makes memory
// match them, reading only the domain records whose version memory does
// not have. It returns the highest domain version listed. On any error
// memory is left as it was.
func (s *Store) readListing(ctx context.Context) (uint64, error) {
	st := s.Storage()
	domKeys, err := listKeys(ctx, st, domainsDir)
	if err != nil {
		return 0, err
	}
	certKeys, err := listKeys(ctx, st, certificatesDir)
	if err != nil {
		return 0, err
	}

	versions := make(map[string]uint64, len(domKeys))
	var stale []string
	var maxVersion uint64
	for _, k := range domKeys {
		id, v, ok := parseDomainKey(k)
		if !ok {
			continue
		}
		if old, seen := versions[id]; seen {
			// an interrupted write left two versions; the newer holds
			stale = append(stale, domainRecordKey(id, min(old, v)))
			v = max(old, v)
		}
		versions[id] = v
		maxVersion = max(maxVersion, v)
	}
	ids := make([]string, 0, len(versions))
	for id := range versions {
		ids = append(ids, id)
	}
	slices.Sort(ids)

	// read what memory does not have
	type read struct {
		d       *Domain
		version uint64
		damage  string
	}
	reads := make(map[string]read)
	s.mu.RLock()
	var need []string
	for _, id := range ids {
		if e := s.domains[id]; e != nil && e.Version == versions[id] {
			continue
		}
		need = append(need, id)
	}
	s.mu.RUnlock()
	for _, id := range need {
		v := versions[id]
		d, err := s.readDomain(ctx, id, v)
		switch {
		case err == nil:
			reads[id] = read{d: d, version: v}
		case errors.Is(err, errVersionGone):
			// replaced or deleted while listing: the journal entries past
			// the head read before the listing carry the change
		case dcerr.CodeOf(err) == dcerr.RecordDamaged:
			reads[id] = read{version: v, damage: damageReason(err)}
		default:
			return 0, err
		}
	}

	certs := make(map[string]bool)
	for _, k := range certKeys {
		if id, ok := strings.CutSuffix(path.Base(k), ".json"); ok && validID(CertificatePrefix, id) {
			certs[id] = true
		}
	}

	// publish: everything at once, so that an error above changes nothing
	var ns []notice
	s.mu.Lock()
	for _, id := range slices.Clone(s.domainIDs) {
		if _, listed := versions[id]; listed {
			continue
		}
		if old := s.deleteDomainLocked(id); old != nil {
			ns = append(ns, notice{old: formerDomain(old)})
		}
	}
	for _, id := range ids {
		r, ok := reads[id]
		if !ok {
			continue
		}
		if r.damage != "" {
			name := ""
			if e := s.domains[id]; e != nil {
				name = e.Name
			} else if dm := s.damaged[id]; dm != nil {
				name = dm.Name
			}
			s.markDamagedLocked(id, r.damage)
			if s.damaged[id] == nil { // it was not live
				s.damaged[id] = &Damaged{ID: id, Name: name, Reason: r.damage}
				s.domainIDs = insertSorted(s.domainIDs, id)
			}
			s.damaged[id].version = r.version
			continue
		}
		if owner, taken := s.names[r.d.Domain]; taken && owner != id && owner < id {
			// two records with one name (written by an earlier version of
			// the plugin): the older keeps it, the other is listed as
			// damaged so that it can be deleted
			s.deleteDomainLocked(id)
			s.damaged[id] = &Damaged{ID: id, Name: r.d.Domain, version: r.version,
				Reason: "another domain (" + owner + ") has the same name; delete one of them"}
			s.domainIDs = insertSorted(s.domainIDs, id)
			continue
		}
		old := s.putDomainLocked(entryFor(r.d, r.version))
		ns = append(ns, notice{old: formerDomain(old), new: r.d})
	}
	for _, id := range slices.Clone(s.certIDs) {
		if !certs[id] {
			if s.deleteCertLocked(id) {
				ns = append(ns, notice{certID: id, deleted: true})
			}
		}
	}
	for id := range certs {
		if _, ok := s.certs[id]; !ok {
			s.putCertLocked(id, 0)
		}
	}
	s.mu.Unlock()
	s.notify(ns)

	for _, k := range stale {
		_ = st.Delete(ctx, k)
	}
	s.log.Info("records listed",
		zap.Int("domains", len(versions)), zap.Int("records_read", len(need)),
		zap.Int("certificates", len(certs)), zap.Int("stale_versions", len(stale)))
	return maxVersion, nil
}

// errVersionGone means a record version no longer exists: it was replaced
// or deleted, and the journal says by what.
var errVersionGone = errors.New("record version replaced or deleted")

// readDomain reads version v of domain id: its record, or, when the record
// is missing or damaged, the journal entry that wrote it (a writer that
// crashed before writing the record, or a record damaged since).
func (s *Store) readDomain(ctx context.Context, id string, v uint64) (*Domain, error) {
	b, err := s.Storage().Load(ctx, domainRecordKey(id, v))
	var derr error
	switch {
	case err == nil:
		d, err := decodeDomain(b, id)
		if err == nil {
			return d, nil
		}
		derr = err
	case !errors.Is(err, fs.ErrNotExist):
		s.stats.storageErrors.Add(1)
		return nil, storageFailed("reading domain "+id, err)
	}
	if e, err := s.readEntry(ctx, v); err == nil {
		for i := len(e.Ops) - 1; i >= 0; i-- {
			if op := e.Ops[i]; op.Op == opPutDomain && op.ID == id {
				return op.Domain.clone(), nil
			}
		}
	} else if dcerr.CodeOf(err) == dcerr.StorageUnavailable {
		return nil, err
	}
	if derr != nil {
		return nil, recordDamaged("domain", id, derr)
	}
	return nil, errVersionGone
}

func decodeDomain(b []byte, id string) (*Domain, error) {
	var d Domain
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decoding domain %s: %w", id, err)
	}
	if d.ID != id {
		return nil, fmt.Errorf("decoding domain %s: record holds id %q", id, d.ID)
	}
	if _, err := NormalizeDomain(d.Domain); err != nil {
		return nil, fmt.Errorf("decoding domain %s: %w", id, err)
	}
	return &d, nil
}

// readCertificate decodes the record of certificate id (version v, 0 if
// unknown) into c, a *Certificate or a struct with some of its fields.
// A missing record is read from the journal entry that wrote it.
func (s *Store) readCertificate(ctx context.Context, id string, v uint64, c certRecord) error {
	b, err := s.Storage().Load(ctx, certRecordKey(id))
	var derr error
	switch {
	case err == nil:
		if derr = decodeCertificate(b, id, c); derr == nil {
			return nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		s.stats.storageErrors.Add(1)
		return storageFailed("reading certificate "+id, err)
	}
	if v > 0 {
		if e, err := s.readEntry(ctx, v); err == nil {
			for i := len(e.Ops) - 1; i >= 0; i-- {
				if op := e.Ops[i]; op.Op == opPutCert && op.ID == id {
					b, _ := json.Marshal(op.Certificate)
					return decodeCertificate(b, id, c)
				}
			}
		} else if dcerr.CodeOf(err) == dcerr.StorageUnavailable {
			return err
		}
	}
	if derr == nil {
		derr = errors.New("the record is missing")
	}
	return recordDamaged("certificate", id, derr)
}

// certRecord is what readCertificate decodes into: a *Certificate, or a
// struct with only the fields a caller needs, which must include the ID
// and the chain so that a damaged record is recognized.
type certRecord interface {
	recordID() string
	recordPEM() string
}

func (c *Certificate) recordID() string  { return c.ID }
func (c *Certificate) recordPEM() string { return c.CertificatePEM }

func decodeCertificate(b []byte, id string, c certRecord) error {
	if err := json.Unmarshal(b, c); err != nil {
		return fmt.Errorf("decoding certificate %s: %w", id, err)
	}
	if c.recordID() != id || c.recordPEM() == "" {
		return fmt.Errorf("decoding certificate %s: the record holds id %q and %d bytes of PEM", id, c.recordID(), len(c.recordPEM()))
	}
	return nil
}

// damageReason returns the cause of a RecordDamaged error, for lists.
func damageReason(err error) string {
	var e *dcerr.Error
	if errors.As(err, &e) && e.Err != nil {
		return e.Err.Error()
	}
	return err.Error()
}
