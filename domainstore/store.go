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
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/sniindex"
)

// Storage key prefixes.
const (
	prefix          = "domaincerts"
	certificatesDir = prefix + "/certificates"
	domainsDir      = prefix + "/domains"
)

func certRecordKey(id string) string { return certificatesDir + "/" + id + ".json" }

// CertificateKeyKey returns the storage key of a certificate's private key.
func CertificateKeyKey(id string) string { return certificatesDir + "/" + id + ".key" }

// Options configure a Store.
type Options struct {
	// Logger receives the store's logs. Default: a no-op logger.
	Logger *zap.Logger

	// DefaultAuthority is the authority of the default management policy.
	// Default: "letsencrypt".
	DefaultAuthority string

	// Authorities lists the authority names a policy may use. Default:
	// only DefaultAuthority.
	Authorities []string

	// Decorate, if set, is called on every new domain record before it is
	// written, and on a domain whose policy changes, to fill in derived
	// fields such as CNAME targets and the initial status.
	Decorate func(*Domain)
}

// Listener is told about changes after they are written to storage.
// Calls are made synchronously, in write order, while no lock of the store
// is held; they must be fast.
type Listener interface {
	// CertificateStored is called after an upload, with the parsed bundle.
	CertificateStored(id string, b *bundle.Bundle)
	// CertificateDeleted is called after a certificate was deleted.
	CertificateDeleted(id string)
	// DomainChanged is called after a domain was created (old is nil),
	// updated, or deleted (new is nil). The records are copies.
	DomainChanged(old, new *Domain)
}

// Store is the service behind every door: it validates, persists and
// indexes Domains and Certificates. It is safe for concurrent use.
//
// Memory holds the index entries only (name, domain ID, certificate ID,
// managed flag, record version), not the records: reads of a record go to
// storage, so that a million domains cost little memory and start fast.
type Store struct {
	storage atomic.Pointer[storageRef]
	opts    Options
	log     *zap.Logger
	index   *sniindex.Index[*Entry]

	// mu guards the fields below and serializes writes, so that checks
	// (uniqueness, certificate in use) and writes cannot interleave.
	mu        sync.RWMutex
	domains   map[string]*Entry // by domain ID
	names     map[string]string // normalized domain name -> domain ID
	domainIDs []string          // sorted, oldest first
	certIDs   []string          // sorted, oldest first
	certUse   map[string]int    // certificate ID -> domains that use it
	listeners []Listener

	// certsReady is closed when the certificate IDs are listed, or when
	// the first attempt failed; start-up does not wait for it (the
	// handshake path needs only the index). certsErr holds the error while
	// the listing is being retried.
	certsReady chan struct{}
	certsErr   atomic.Pointer[error]

	// touched records the domains written while a snapshot is being
	// reconciled in the background (nil otherwise), so that the
	// reconciliation does not undo them.
	touched    map[string]bool
	reconciled chan struct{} // closed when the index matches storage
	syncMu     sync.Mutex    // one Sync at a time
	syncOnce   sync.Once

	dirty     chan struct{}
	unsaved   atomic.Bool // the index changed since the last snapshot
	closing   chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once
}

// Open returns a Store over storage with its index built. It reads the
// index snapshot and lists the record directories; it reads only the
// domain records that changed since the snapshot was written, and no
// certificate.
func Open(ctx context.Context, storage certmagic.Storage, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.DefaultAuthority == "" {
		opts.DefaultAuthority = "letsencrypt"
	}
	if len(opts.Authorities) == 0 {
		opts.Authorities = []string{opts.DefaultAuthority}
	}
	s := &Store{
		opts:       opts,
		log:        opts.Logger,
		index:      sniindex.New[*Entry](),
		domains:    make(map[string]*Entry),
		names:      make(map[string]string),
		certUse:    make(map[string]int),
		dirty:      make(chan struct{}, 1),
		certsReady: make(chan struct{}),
		reconciled: make(chan struct{}),
		closing:    make(chan struct{}),
		loopDone:   make(chan struct{}),
	}
	s.SetStorage(storage)
	start := time.Now()
	go s.listCertificates(context.WithoutCancel(ctx))
	loaded, stale, err := s.loadDomains(ctx)
	if err != nil {
		return nil, err
	}
	go s.snapshotLoop()
	if loaded > 0 || stale > 0 {
		s.markDirty()
	}
	s.mu.RLock()
	n := len(s.domainIDs) // a reconciliation may be running
	s.mu.RUnlock()
	s.log.Info("domain store loaded",
		zap.Int("domains", n),
		zap.Int("records_read", loaded),
		zap.Duration("took", time.Since(start)))
	return s, nil
}

// listCertificates lists the certificate IDs in the background and closes
// certsReady. Operations on certificates wait for it. A failed listing is
// retried, with growing pauses, until it succeeds or the store is closed;
// meanwhile those operations fail with its error.
func (s *Store) listCertificates(ctx context.Context) {
	ready := false
	defer func() {
		if !ready {
			close(s.certsReady)
		}
	}()
	delay := certListRetry
	for {
		start := time.Now()
		ids, err := s.certificateIDs(ctx)
		if err == nil {
			s.mu.Lock()
			s.certIDs = ids
			s.mu.Unlock()
			s.certsErr.Store(nil)
			s.log.Info("certificates listed", zap.Int("certificates", len(ids)), zap.Duration("took", time.Since(start)))
			return
		}
		err = fmt.Errorf("listing certificates: %w", err)
		s.certsErr.Store(&err)
		if !ready {
			ready = true
			close(s.certsReady)
		}
		s.log.Error("listing certificates; will retry", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-s.closing:
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Minute)
	}
}

// certListRetry is the first pause before listing the certificates again.
var certListRetry = time.Second

// certificateIDs lists the certificate IDs in storage, sorted.
func (s *Store) certificateIDs(ctx context.Context) ([]string, error) {
	keys, err := listKeys(ctx, s.Storage(), certificatesDir)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, k := range keys {
		if id, ok := idFromKey(k, CertificatePrefix); ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Reconciled is closed once the index reflects storage: at once when the
// store started without a snapshot, else when the background
// reconciliation of the snapshot has finished.
func (s *Store) Reconciled() <-chan struct{} { return s.reconciled }

// waitCertificates waits until the certificate IDs are listed.
func (s *Store) waitCertificates() error {
	<-s.certsReady
	if err := s.certsErr.Load(); err != nil {
		return *err
	}
	return nil
}

// loadDomains builds the index. With a snapshot, it publishes the
// snapshot at once and reconciles it with storage in the background
// (records written since, by this instance before a crash or by another
// instance); without one, it reads every record. It returns how many
// records it read and how many stale versions it deleted.
func (s *Store) loadDomains(ctx context.Context) (int, int, error) {
	if snap := s.loadSnapshot(ctx); len(snap) > 0 {
		s.prepare(len(snap))
		for _, e := range snap { // sorted by ID: the older of two entries for one name wins
			s.publishLoadedLocked(e)
		}
		s.touched = make(map[string]bool)
		go s.reconcile(context.WithoutCancel(ctx))
		return 0, 0, nil
	}
	defer close(s.reconciled)
	versions, stale, err := s.listVersions(ctx)
	if err != nil {
		return 0, 0, err
	}
	s.prepare(len(versions))
	for _, id := range sortedIDs(versions) { // oldest first: the older of two records for one name wins
		d, err := s.loadDomainVersion(ctx, id, versions[id])
		if err != nil {
			return 0, 0, err
		}
		s.publishLoadedLocked(entryFor(d, versions[id]))
	}
	return len(versions), stale, nil
}

// prepare sizes the maps for n domains.
func (s *Store) prepare(n int) {
	s.domains = make(map[string]*Entry, n)
	s.names = make(map[string]string, n)
	s.domainIDs = make([]string, 0, n)
	s.index.Grow(n)
}

// publishLoadedLocked publishes an entry read at start-up, unless its
// name is taken: two instances raced on the same name, and the older
// record (published first) is kept.
func (s *Store) publishLoadedLocked(e *Entry) bool {
	if other, dup := s.names[e.Name]; dup && other != e.DomainID {
		s.log.Warn("duplicate domain records; keeping the older",
			zap.String("domain", e.Name), zap.String("domain_id", e.DomainID), zap.String("kept_domain_id", other))
		return false
	}
	s.putEntryLocked(e)
	return true
}

// listVersions lists the domain records and returns the newest version of
// each; older versions (left by an interrupted write) are deleted.
func (s *Store) listVersions(ctx context.Context) (map[string]uint64, int, error) {
	keys, err := listKeys(ctx, s.Storage(), domainsDir)
	if err != nil {
		return nil, 0, fmt.Errorf("listing domains: %w", err)
	}
	versions := make(map[string]uint64, len(keys))
	stale := 0
	for _, k := range keys {
		id, v, ok := parseDomainKey(k)
		if !ok {
			continue
		}
		if old, seen := versions[id]; seen {
			_ = s.Storage().Delete(ctx, domainRecordKey(id, min(old, v)))
			stale++
			v = max(old, v)
		}
		versions[id] = v
	}
	return versions, stale, nil
}

// reconcile brings an index published from a snapshot up to date with
// storage, in the background at start-up.
func (s *Store) reconcile(ctx context.Context) {
	defer close(s.reconciled)
	if err := s.Sync(ctx); err != nil {
		s.log.Error("reconciling the index snapshot with storage; serving the snapshot", zap.Error(err))
	}
}

// Sync brings the index up to date with storage, for changes this
// instance did not make: records written by another instance on the same
// storage (or before a crash) are read, entries whose records are gone are
// dropped, and the certificate list is refreshed. Writes this instance
// makes while Sync runs are left alone. Listeners hear about every change,
// as for a write. It reads only the records whose version changed.
func (s *Store) Sync(ctx context.Context) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	start := time.Now()
	s.mu.Lock()
	if s.touched == nil {
		s.touched = make(map[string]bool)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.touched = nil
		s.mu.Unlock()
	}()

	versions, stale, err := s.listVersions(ctx)
	if err != nil {
		return err
	}
	read, dropped := 0, 0
	for _, id := range sortedIDs(versions) {
		v := versions[id]
		s.mu.RLock()
		cur := s.domains[id]
		s.mu.RUnlock()
		if cur != nil && cur.Version >= v {
			continue
		}
		d, err := s.loadDomainVersion(ctx, id, v)
		if err != nil {
			s.log.Error("reading domain record", zap.String("domain_id", id), zap.Error(err))
			continue
		}
		read++
		s.mu.Lock()
		if cur := s.domains[id]; !s.touched[id] && (cur == nil || cur.Version < v) {
			if s.publishLoadedLocked(entryFor(d, v)) {
				s.notifyDomainLocked(formerDomain(cur), d)
			}
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	for _, id := range slices.Clone(s.domainIDs) {
		if _, ok := versions[id]; ok || s.touched[id] {
			continue
		}
		cur := s.domains[id]
		s.removeEntryLocked(cur)
		s.notifyDomainLocked(formerDomain(cur), nil)
		dropped++
	}
	s.mu.Unlock()

	gone, err := s.syncCertificates(ctx)
	if err != nil {
		return err
	}
	if read > 0 || dropped > 0 || stale > 0 {
		s.markDirty()
	}
	s.log.Info("index synchronized with storage",
		zap.Int("records_read", read), zap.Int("dropped", dropped), zap.Int("stale_versions", stale),
		zap.Int("certificates_gone", gone), zap.Duration("took", time.Since(start)))
	return nil
}

// syncCertificates refreshes the certificate list from storage and tells
// listeners about certificates that another instance deleted.
func (s *Store) syncCertificates(ctx context.Context) (int, error) {
	if err := s.waitCertificates(); err != nil {
		return 0, err
	}
	inStorage, err := s.certificateIDs(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing certificates: %w", err)
	}
	listed := make(map[string]bool, len(inStorage))
	for _, id := range inStorage {
		listed[id] = true
	}
	s.mu.Lock()
	var gone []string
	ids := make([]string, 0, len(listed))
	for _, id := range s.certIDs {
		switch {
		case listed[id] || s.touched["cert:"+id]:
			ids = append(ids, id)
			delete(listed, id)
		default:
			gone = append(gone, id)
		}
	}
	for id := range listed {
		if !s.touched["cert:"+id] { // else this instance deleted it meanwhile
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	s.certIDs = ids
	listeners := slices.Clone(s.listeners)
	s.mu.Unlock()
	for _, id := range gone {
		for _, l := range listeners {
			l.CertificateDeleted(id)
		}
	}
	return len(gone), nil
}

// SyncEvery runs Sync every interval until the store is closed; zero or
// less does nothing. It is for several instances sharing one storage.
func (s *Store) SyncEvery(interval time.Duration) {
	if interval <= 0 {
		return
	}
	s.syncOnce.Do(func() {
		go func() {
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-s.closing:
					return
				case <-t.C:
					if err := s.Sync(context.Background()); err != nil {
						s.log.Warn("synchronizing with storage", zap.Error(err))
					}
				}
			}
		}()
	})
}

// touchLocked notes a write by this instance while a Sync runs, so that
// the Sync does not undo it. s.mu must be held.
func (s *Store) touchLocked(key string) {
	if s.touched != nil {
		s.touched[key] = true
	}
}

// formerDomain describes, for listeners, a domain known only by its index
// entry (its record was replaced in storage): its ID, name and certificate,
// but not its former policy.
func formerDomain(e *Entry) *Domain {
	if e == nil {
		return nil
	}
	return &Domain{ID: e.DomainID, Domain: e.Name, CertificateID: e.CertificateID}
}

func sortedIDs(versions map[string]uint64) []string {
	ids := make([]string, 0, len(versions))
	for id := range versions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Subscribe adds a listener for changes.
func (s *Store) Subscribe(l Listener) {
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
}

// Unsubscribe removes a listener added with Subscribe.
func (s *Store) Unsubscribe(l Listener) {
	s.mu.Lock()
	s.listeners = slices.DeleteFunc(s.listeners, func(x Listener) bool { return x == l })
	s.mu.Unlock()
}

// SetPolicyOptions changes the policy options of a loaded store, for a
// config reload: the default authority, the authorities a policy may
// name, and the decorator of new and re-managed domains.
func (s *Store) SetPolicyOptions(defaultAuthority string, authorities []string, decorate func(*Domain)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if defaultAuthority != "" {
		s.opts.DefaultAuthority = defaultAuthority
	}
	s.opts.Authorities = slices.Clone(authorities)
	if len(s.opts.Authorities) == 0 {
		s.opts.Authorities = []string{s.opts.DefaultAuthority}
	}
	s.opts.Decorate = decorate
}

// storageRef boxes a Storage for atomic.Pointer.
type storageRef struct{ certmagic.Storage }

// Storage returns the storage the store writes to.
func (s *Store) Storage() certmagic.Storage { return s.storage.Load().Storage }

// SetStorage replaces the storage handle, for a config reload that keeps
// the same storage location but, for example, rotates a sealing key. The
// records are not re-read.
func (s *Store) SetStorage(storage certmagic.Storage) {
	s.storage.Store(&storageRef{storage})
}

// Lookup returns the index entry for a handshake's server name: the exact
// domain, else the wildcard one label up. It reads memory only and does not
// allocate for lowercase names.
func (s *Store) Lookup(serverName string) (*Entry, bool) {
	return s.index.Lookup(serverName)
}

// DomainCount returns the number of domains. Unlike Len it never waits
// for the background listing of certificates, so metrics can call it at
// any time.
func (s *Store) DomainCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.domainIDs)
}

// Len returns the number of domains and certificates.
func (s *Store) Len() (domains, certificates int) {
	_ = s.waitCertificates()
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.domainIDs), len(s.certIDs)
}

func (s *Store) listenersSnapshot() []Listener {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.listeners)
}

// putEntryLocked publishes e in the maps and the index. s.mu must be
// held, or s not yet shared.
func (s *Store) putEntryLocked(e *Entry) {
	old, had := s.domains[e.DomainID]
	if had && old.CertificateID != "" {
		s.certUse[old.CertificateID]--
		if s.certUse[old.CertificateID] <= 0 {
			delete(s.certUse, old.CertificateID)
		}
	}
	if !had {
		s.domainIDs = insertSorted(s.domainIDs, e.DomainID)
	}
	s.domains[e.DomainID] = e
	s.names[e.Name] = e.DomainID
	if e.CertificateID != "" {
		s.certUse[e.CertificateID]++
	}
	s.index.Set(e.Name, e)
}

// removeEntryLocked drops e from the maps and the index. s.mu must be held.
func (s *Store) removeEntryLocked(e *Entry) {
	delete(s.domains, e.DomainID)
	delete(s.names, e.Name)
	if e.CertificateID != "" {
		s.certUse[e.CertificateID]--
		if s.certUse[e.CertificateID] <= 0 {
			delete(s.certUse, e.CertificateID)
		}
	}
	if i, ok := slices.BinarySearch(s.domainIDs, e.DomainID); ok {
		s.domainIDs = slices.Delete(s.domainIDs, i, i+1)
	}
	s.index.Delete(e.Name)
}

// loadDomainVersion reads version v of domain id from storage.
func (s *Store) loadDomainVersion(ctx context.Context, id string, v uint64) (*Domain, error) {
	b, err := s.Storage().Load(ctx, domainRecordKey(id, v))
	if err != nil {
		return nil, fmt.Errorf("loading domain %s: %w", id, err)
	}
	var d Domain
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decoding domain %s: %w", id, err)
	}
	if d.ID != id {
		return nil, fmt.Errorf("decoding domain %s: record holds id %q", id, d.ID)
	}
	return &d, nil
}

// writeDomainLocked stores d as the next version of its record, deletes
// the previous version, and publishes the new entry. s.mu must be held.
func (s *Store) writeDomainLocked(ctx context.Context, d *Domain) error {
	var v uint64 = 1
	old := s.domains[d.ID]
	if old != nil {
		v = old.Version + 1
	}
	if err := s.writeJSON(ctx, domainRecordKey(d.ID, v), d); err != nil {
		return err
	}
	if old != nil {
		if err := s.Storage().Delete(ctx, domainRecordKey(d.ID, old.Version)); err != nil {
			// the next start-up finds two versions and keeps the newer
			s.log.Warn("deleting previous domain record version", zap.String("domain_id", d.ID), zap.Error(err))
		}
	}
	s.putEntryLocked(entryFor(d, v))
	s.touchLocked(d.ID)
	s.markDirty()
	return nil
}

func (s *Store) writeJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	if err := s.Storage().Store(ctx, key, b); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}

// listKeys lists the keys directly below dir; a missing dir is empty.
func listKeys(ctx context.Context, storage certmagic.Storage, dir string) ([]string, error) {
	keys, err := storage.List(ctx, dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return keys, err
}

// idFromKey returns the record ID of a ".json" record key.
func idFromKey(key, idPrefix string) (string, bool) {
	base := path.Base(key)
	id, ok := strings.CutSuffix(base, ".json")
	if !ok || !validID(idPrefix, id) {
		return "", false
	}
	return id, true
}

// page returns up to limit IDs from sorted ids, newest first, that sort
// before beforeID (all when beforeID is empty), and whether more follow.
func page(ids []string, limit int, beforeID string) ([]string, bool) {
	end := len(ids)
	if beforeID != "" {
		end, _ = slices.BinarySearch(ids, beforeID)
	}
	out := make([]string, 0, min(limit, end))
	for i := end - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, ids[i])
	}
	more := end-len(out) > 0
	return out, more
}

// loadAll reads the records of a page, skipping those deleted meanwhile.
func loadAll[T any](ctx context.Context, ids []string, get func(context.Context, string) (T, error)) ([]T, error) {
	out := make([]T, 0, len(ids))
	for _, id := range ids {
		r, err := get(ctx, id)
		if dcerr.CodeOf(err) == dcerr.NotFound {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func checkText(field, v string, limit int) error {
	if len(v) > limit {
		return dcerr.New(dcerr.FieldTooLarge, "%s is %d bytes; the limit is %d bytes", field, len(v), limit).
			WithDetail("field", field)
	}
	return nil
}

func notFound(kind, id string) error {
	return dcerr.New(dcerr.NotFound, "%s %q not found", kind, id)
}

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }
