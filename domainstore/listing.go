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

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
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
// reads the head, lists, reads the domain records whose version memory
// lacks, and sets memory's journal position to that head, so that the
// entries written since are read next. Without the journal lock it
// retries a listing that writers interrupt, then takes the lock.
func (s *Store) recoverFromListing(ctx context.Context, locked bool) error {
	for attempt := 1; ; attempt++ {
		h, err := s.readHead(ctx)
		if err != nil {
			return err
		}
		if _, err = s.readListing(ctx, h.Seq); err == nil {
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
			err := s.lockJournal(lctx)
			cancel()
			if err != nil {
				return storageFailed("waiting for the journal lock", err)
			}
			err = s.recoverFromListing(ctx, true)
			s.unlockJournal()
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
// match them (adopt), at journal position pos: the entry the records are
// known to reflect. It returns the highest domain version listed. On any
// error memory is left as it was.
func (s *Store) readListing(ctx context.Context, pos uint64) (uint64, error) {
	st := s.Storage()
	domKeys, err := listKeys(ctx, st, domainsDir)
	if err != nil {
		return 0, err
	}
	certKeys, err := listKeys(ctx, st, certificatesDir)
	if err != nil {
		return 0, err
	}
	state := adoptState{versions: make(map[string]uint64, len(domKeys)), certs: make(map[string]certMeta)}
	var stale []string
	var maxVersion uint64
	for _, k := range domKeys {
		id, v, ok := parseDomainKey(k)
		if !ok {
			continue
		}
		if old, seen := state.versions[id]; seen {
			// an interrupted write left two versions; the newer holds
			stale = append(stale, domainRecordKey(id, min(old, v)))
			v = max(old, v)
		}
		state.versions[id] = v
		maxVersion = max(maxVersion, v)
	}
	for _, k := range certKeys {
		if id, ok := strings.CutSuffix(path.Base(k), ".json"); ok && validID(CertificatePrefix, id) {
			state.certs[id] = certMeta{} // its version and dates are unknown; the record is current
		}
	}
	read, err := s.adopt(ctx, state, pos)
	if err != nil {
		return 0, err
	}
	for _, k := range stale {
		_ = st.Delete(ctx, k)
	}
	s.log.Info("records listed",
		zap.Int("domains", len(state.versions)), zap.Int("records_read", read),
		zap.Int("certificates", len(state.certs)), zap.Int("stale_versions", len(stale)))
	return maxVersion, nil
}

// adoptState is a state for memory to adopt: from a listing of the
// records, or from an index snapshot.
type adoptState struct {
	// versions are the domains, live or damaged, by ID.
	versions map[string]uint64
	// entries are the index entries where known without reading the
	// record (a snapshot).
	entries map[string]*Entry
	// certs are the certificates, with their versions (0: unknown) and
	// dates where known.
	certs map[string]certMeta
	// damaged are the records known to be damaged (a snapshot).
	damaged map[string]*Damaged
}

// adopt makes memory hold state at journal position pos, reading the
// domain records whose version memory lacks (for their entries, or for
// listeners), and tells listeners of every change. It returns how many
// records it read. On error memory is left as it was. Two live domains with one name (left by an earlier
// version of the plugin) resolve as everywhere: the higher version keeps
// the name, or the older ID at the same version; the other is damaged.
func (s *Store) adopt(ctx context.Context, state adoptState, pos uint64) (int, error) {
	ids := make([]string, 0, len(state.versions))
	for id := range state.versions {
		ids = append(ids, id)
	}
	slices.Sort(ids)

	type read struct {
		d      *Domain // nil when only the entry is known (record replaced since)
		e      *Entry
		damage string
	}
	reads := make(map[string]read)
	s.mu.RLock()
	var need []string
	for _, id := range ids {
		v := state.versions[id]
		if e := s.domains[id]; e != nil && e.Version == v {
			continue
		}
		if dm := s.damaged[id]; dm != nil && dm.version == v {
			continue
		}
		need = append(need, id)
	}
	s.mu.RUnlock()
	nread := 0
	for _, id := range need {
		v := state.versions[id]
		if dm := state.damaged[id]; dm != nil {
			reads[id] = read{damage: dm.Reason}
			continue
		}
		d, err := s.readDomain(ctx, id, v)
		nread++
		switch {
		case err == nil:
			reads[id] = read{d: d, e: entryFor(d, v)}
		case errors.Is(err, errVersionGone):
			// replaced or deleted since: the journal entries past the
			// adopted position carry the change
			if e := state.entries[id]; e != nil {
				reads[id] = read{e: e}
			}
		case dcerr.CodeOf(err) == dcerr.RecordDamaged:
			reads[id] = read{damage: damageReason(err)}
		default:
			return 0, err
		}
	}

	// publish: everything at once, so that an error above changes nothing
	var ns []notice
	s.mu.Lock()
	for _, id := range slices.Clone(s.domainIDs) {
		if _, kept := state.versions[id]; kept {
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
		v := state.versions[id]
		if r.damage != "" {
			if old := s.putDamagedLocked(id, v, r.damage); old != nil {
				ns = append(ns, notice{old: formerDomain(old)})
			}
			if dm := state.damaged[id]; dm != nil && dm.Name != "" {
				s.damaged[id].Name = dm.Name
			}
			continue
		}
		if owner, taken := s.nameOwnerLocked(r.e.Name); taken && owner != id {
			ov := s.domains[owner].Version
			if ov > v || (ov == v && owner < id) {
				if old := s.putDamagedLocked(id, v, "another domain ("+owner+") has the same name; delete one of them"); old != nil {
					ns = append(ns, notice{old: formerDomain(old)})
				}
				s.damaged[id].Name = r.e.Name
				continue
			}
			if old := s.markDamagedLocked(owner, "another domain ("+id+") has the same name; delete one of them"); old != nil {
				ns = append(ns, notice{old: formerDomain(old)})
			}
		}
		old, _ := s.putDomainLocked(r.e)
		if r.d != nil {
			ns = append(ns, notice{old: formerDomain(old), new: r.d})
		}
	}
	for _, id := range slices.Clone(s.certIDs) {
		if _, kept := state.certs[id]; !kept {
			if s.deleteCertLocked(id) {
				ns = append(ns, notice{certID: id, deleted: true})
			}
		}
	}
	for id, m := range state.certs {
		if cur, ok := s.certs[id]; !ok || (m.version != 0 && cur.version != m.version) || (m.datesKnown() && !cur.datesKnown()) {
			s.putCertLocked(id, m)
		}
		if dm := state.damaged[id]; dm != nil {
			d := *dm
			s.damaged[id] = &d
			// a damaged record's dates are not trusted, nor counted
			cur := s.certs[id]
			s.unindexDatesLocked(id, cur)
			s.certs[id] = certMeta{version: cur.version}
		}
	}
	s.pos = pos
	s.mu.Unlock()
	s.wantDates()
	s.notify(ns)
	return nread, nil
}

// putDamagedLocked records domain id as damaged at version v (it is
// listed, never served) and returns its entry if it was live. s.mu must be
// held.
func (s *Store) putDamagedLocked(id string, v uint64, reason string) *Entry {
	name := ""
	old := s.markDamagedLocked(id, reason)
	if old != nil {
		name = old.Name
	} else if dm := s.damaged[id]; dm != nil {
		name = dm.Name
	} else {
		s.domainIDs = insertSorted(s.domainIDs, id)
	}
	s.damaged[id] = &Damaged{ID: id, Name: name, Reason: reason, version: v}
	return old
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
	if _, err := lexicalName(d.Domain, d.Domain); err != nil {
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
			// the whole record may be older than the entry memory knows
			// (an update whose record is not written yet): read that
			// entry. The partial records read only what never changes;
			// records of earlier releases carry no version and are taken
			// as current.
			full, ok := c.(*Certificate)
			if !ok || v == 0 || full.JournalVersion == 0 || full.JournalVersion >= v {
				return nil
			}
			newer, err := s.certificateInEntry(ctx, id, v)
			if err != nil || newer == nil {
				return err // nil: the entry is compacted, so the record is current
			}
			*full = Certificate{}
			return decodeCertificate(newer, id, c)
		}
	case !errors.Is(err, fs.ErrNotExist):
		s.stats.storageErrors.Add(1)
		return storageFailed("reading certificate "+id, err)
	}
	if v > 0 {
		b, err := s.certificateInEntry(ctx, id, v)
		if err != nil {
			return err
		}
		if b != nil {
			return decodeCertificate(b, id, c)
		}
	}
	if derr == nil {
		derr = errors.New("the record is missing")
	}
	return recordDamaged("certificate", id, derr)
}

// certificateInEntry returns the record of certificate id that journal
// entry v wrote, encoded as applying the entry stores it; nil if the entry
// is gone or holds none.
func (s *Store) certificateInEntry(ctx context.Context, id string, v uint64) ([]byte, error) {
	e, err := s.readEntry(ctx, v)
	if err != nil {
		if dcerr.CodeOf(err) == dcerr.StorageUnavailable {
			return nil, err
		}
		return nil, nil
	}
	for i := len(e.Ops) - 1; i >= 0; i-- {
		if op := e.Ops[i]; op.Op == opPutCert && op.ID == id {
			rec := *op.Certificate
			rec.JournalVersion = v
			return json.Marshal(&rec)
		}
	}
	return nil, nil
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
	if full, ok := c.(*Certificate); ok && full.Fingerprint == "" {
		full.Fingerprint = bundle.Fingerprint(full.CertificatePEM) // a record of an earlier version
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
