package domainstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/sniindex"
)

// Defaults of Options.
const (
	DefaultSyncInterval = time.Second
	DefaultTimeout      = 15 * time.Second
)

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

	// CheckPolicy, if set, is asked whether a management policy can ever
	// be satisfied for a name, when a domain is created with the policy
	// or updated to it. It returns nil, or an error (a POLICY_UNSATISFIABLE
	// *dcerr.Error that says what to configure) that refuses the change.
	CheckPolicy func(name string, p Policy) error

	// SyncInterval is how often the store reads the journal for changes
	// that other instances on the same storage made. Each look costs one
	// or two small reads. Default: DefaultSyncInterval.
	SyncInterval time.Duration

	// Timeout bounds how long a write waits for the storage (the journal
	// lock and the writes) before it fails with STORAGE_UNAVAILABLE, and
	// each storage read. Default: DefaultTimeout.
	Timeout time.Duration
}

// Listener is told about changes once memory reflects them: changes this
// instance made, and changes other instances made, read from the journal.
// Calls come from one goroutine, in journal order; they must be fast and
// must not wait for a write of the store.
type Listener interface {
	// CertificateStored is called after this instance stored an upload,
	// with the parsed bundle.
	CertificateStored(id string, b *bundle.Bundle)
	// CertificateDeleted is called after a certificate was deleted.
	CertificateDeleted(id string)
	// DomainChanged is called after a domain was created (old is nil),
	// updated, or deleted (new is nil). The records are copies. For a
	// change another instance made, old holds only the ID, name and
	// certificate of the domain as it was.
	DomainChanged(old, new *Domain)
}

// Store is the service behind every door: it validates, persists and
// indexes Domains and Certificates. It is safe for concurrent use.
//
// Every write goes through the journal (journal.go): it is validated
// against the current state under the journal lock, shared by every
// instance on the storage, and committed by writing one journal entry.
// Memory holds the index and what paging and validation need (domain
// entries, certificate IDs), not the records: reads of a record go to
// storage, so that a million domains cost little memory and start fast.
type Store struct {
	storage atomic.Pointer[storageRef]
	optMu   sync.RWMutex
	opts    Options
	log     *zap.Logger
	index   *sniindex.Index[*Entry]

	// The state below is changed only by the sequencer goroutine, under
	// mu (but the dates loop fills in certificate dates in certs and
	// expiry, under mu); other goroutines read it under mu.RLock, and the
	// sequencer reads certs under it too.
	mu        sync.RWMutex
	domains   map[string]*Entry       // live domains by ID
	domainIDs []string                // sorted, oldest first: live and damaged domains
	certs     map[string]certMeta     // certificate ID -> version and dates
	expiry    [numSources]expiryIndex // certificates with known dates, by end, per source
	certIDs   []string                // sorted, oldest first
	certUse   map[string]int          // certificate ID -> domains that use it
	states    [numDomainStates]int    // live domains by state
	damaged   map[string]*Damaged     // records that cannot be read, by ID
	pos       uint64                  // the journal entry memory reflects

	listenMu  sync.RWMutex
	listeners []Listener

	claims dayClaims // this instance's memory of the day's announcements

	ops          chan *op
	pending      []*op           // writes put back for the next batch (sequencer only)
	syncFailing  bool            // the last look at the journal failed (sequencer only)
	needRecovery bool            // a damaged entry was skipped: read the records (sequencer only)
	skipped      map[uint64]bool // damaged entries skipped so far (sequencer only)
	syncReqs     chan chan error
	interval     atomic.Int64 // SyncInterval
	closing      chan struct{}
	done         chan struct{}
	closeOnce    sync.Once
	reconciled   chan struct{}
	recOnce      sync.Once

	headDamaged atomic.Bool // the stored head was damaged and is not yet written back

	hold       atomic.Pointer[journalHold] // this instance's holding of the journal lock
	ownerWatch ownerWatch                  // the owner record as seen while waiting for the journal lock

	snapMu     sync.Mutex    // one snapshot write at a time
	snapSeq    atomic.Uint64 // the newest snapshot known
	snapWanted atomic.Bool   // memory learned what the newest snapshot lacks (certificate dates)
	snapDone   chan struct{}

	datesWanted chan struct{} // datesLoop: look for certificates without dates
	datesDone   chan struct{}

	stats storeStats
}

// storeStats are counters for metrics.
type storeStats struct {
	storageErrors  atomic.Uint64
	damagedEntries atomic.Uint64
	lastSync       atomic.Int64 // unix nanoseconds of the last successful look at the journal
}

// Open returns a Store over storage with its index built: from the newest
// index snapshot, brought up to date from the journal in the background,
// or, without a snapshot, by listing and reading every record. It starts
// the journal on storage that has none (a new storage, or one written by
// an earlier version of the plugin).
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
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	s := &Store{
		opts:        opts,
		log:         opts.Logger,
		index:       sniindex.New[*Entry](),
		ops:         make(chan *op, 1024),
		syncReqs:    make(chan chan error),
		closing:     make(chan struct{}),
		done:        make(chan struct{}),
		reconciled:  make(chan struct{}),
		snapDone:    make(chan struct{}),
		datesWanted: make(chan struct{}, 1),
		datesDone:   make(chan struct{}),
		skipped:     make(map[uint64]bool),
	}
	s.SetSyncInterval(opts.SyncInterval)
	s.SetStorage(storage)
	s.resetStateLocked(0, 0)
	start := time.Now()
	from, err := s.load(ctx)
	if err != nil {
		return nil, err
	}
	go s.sequencer()
	go s.snapshotLoop()
	go s.datesLoop()
	s.wantDates()
	s.mu.RLock()
	n, c, pos := len(s.domains), len(s.certs), s.pos
	s.mu.RUnlock()
	s.log.Info("domain store loaded",
		zap.String("from", from), zap.Int("domains", n), zap.Int("certificates", c),
		zap.Uint64("journal_position", pos), zap.Duration("took", time.Since(start)))
	return s, nil
}

// load builds the memory state at start-up and says from what.
func (s *Store) load(ctx context.Context) (string, error) {
	_, err := s.readHead(ctx)
	if errors.Is(err, errNoEntry) {
		return "listing (new journal)", s.startJournal(ctx)
	}
	if err != nil {
		return "", fmt.Errorf("opening the journal: %w", err)
	}
	if snap := s.loadSnapshot(ctx); snap != nil {
		s.publishSnapshot(snap)
		return "snapshot", nil // the sequencer catches up in the background
	}
	if err := s.recoverFromListing(ctx, false); err != nil {
		return "", fmt.Errorf("listing the records: %w", err)
	}
	// the entries past the head that the listing started from: usually
	// none, or the few of a writer that died before moving the head
	if err := s.catchUp(ctx, nil); err == nil {
		s.markReconciled()
	}
	return "listing", nil
}

// startJournal starts the journal on storage that has none: it reads the
// records (of an earlier version of the plugin, or none) and writes a
// head past every version they carry. Two instances starting at once are
// kept apart by the journal lock.
func (s *Store) startJournal(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	if err := s.lockJournal(lctx); err != nil {
		return fmt.Errorf("starting the journal: %w", storageFailed("waiting for the journal lock", err))
	}
	defer s.unlockJournal()
	if _, err := s.readHead(ctx); err == nil {
		// another instance started it meanwhile
		return s.recoverFromListing(ctx, true)
	} else if !errors.Is(err, errNoEntry) {
		return err
	}
	maxVersion, err := s.readListing(ctx, 0)
	if err != nil {
		return fmt.Errorf("starting the journal: %w", err)
	}
	if err := s.writeHead(ctx, head{Seq: maxVersion, Base: maxVersion + 1}); err != nil {
		return fmt.Errorf("starting the journal: %w", err)
	}
	s.mu.Lock()
	s.pos = maxVersion
	s.mu.Unlock()
	// the index snapshot of earlier versions is superseded by snapshots/
	_ = s.Storage().Delete(ctx, legacySnapshotKey)
	return nil
}

// Reconciled is closed once memory has caught up with the journal after
// start-up: before Open returns when the store was loaded by listing the
// records, soon after when it was loaded from a snapshot.
func (s *Store) Reconciled() <-chan struct{} { return s.reconciled }

func (s *Store) markReconciled() {
	s.recOnce.Do(func() { close(s.reconciled) })
}

// Subscribe adds a listener for changes.
func (s *Store) Subscribe(l Listener) {
	s.listenMu.Lock()
	s.listeners = append(s.listeners, l)
	s.listenMu.Unlock()
}

// Unsubscribe removes a listener added with Subscribe.
func (s *Store) Unsubscribe(l Listener) {
	s.listenMu.Lock()
	s.listeners = slices.DeleteFunc(s.listeners, func(x Listener) bool { return x == l })
	s.listenMu.Unlock()
}

func (s *Store) listenersSnapshot() []Listener {
	s.listenMu.RLock()
	defer s.listenMu.RUnlock()
	return slices.Clone(s.listeners)
}

// SetPolicyOptions changes the policy options of a loaded store, for a
// config reload: the default authority, the authorities a policy may
// name, the decorator of new and re-managed domains, and the check of
// policies (see Options).
func (s *Store) SetPolicyOptions(defaultAuthority string, authorities []string, decorate func(*Domain), checkPolicy func(string, Policy) error) {
	s.optMu.Lock()
	defer s.optMu.Unlock()
	if defaultAuthority != "" {
		s.opts.DefaultAuthority = defaultAuthority
	}
	s.opts.Authorities = slices.Clone(authorities)
	if len(s.opts.Authorities) == 0 {
		s.opts.Authorities = []string{s.opts.DefaultAuthority}
	}
	s.opts.Decorate = decorate
	s.opts.CheckPolicy = checkPolicy
}

func (s *Store) options() Options {
	s.optMu.RLock()
	defer s.optMu.RUnlock()
	return s.opts
}

// SetSyncInterval changes how often the store reads the journal; zero or
// less means DefaultSyncInterval.
func (s *Store) SetSyncInterval(d time.Duration) {
	if d <= 0 {
		d = DefaultSyncInterval
	}
	s.interval.Store(int64(d))
}

// SetTimeout changes Options.Timeout; zero or less means DefaultTimeout.
func (s *Store) SetTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultTimeout
	}
	s.optMu.Lock()
	s.opts.Timeout = d
	s.optMu.Unlock()
}

func (s *Store) timeout() time.Duration { return s.options().Timeout }

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

// Len returns the number of domains and certificates, damaged records
// included.
func (s *Store) Len() (domains, certificates int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.domainIDs), len(s.certIDs)
}

// Stats are figures of the store for metrics.
type Stats struct {
	// Domains counts the live domains.
	Domains int
	// Damaged counts records that exist but cannot be read.
	Damaged int
	// JournalPosition is the journal entry that memory reflects.
	JournalPosition uint64
	// StorageErrors counts storage operations that failed.
	StorageErrors uint64
	// LastSync is when the store last read the journal successfully.
	LastSync time.Time
	// States counts the live domains by state (DomainStateNames).
	States [numDomainStates]int
}

// Stats returns the store's figures. It reads memory only.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	st := Stats{Domains: len(s.domains), Damaged: len(s.damaged), JournalPosition: s.pos, States: s.states}
	s.mu.RUnlock()
	st.StorageErrors = s.stats.storageErrors.Load()
	if ns := s.stats.lastSync.Load(); ns > 0 {
		st.LastSync = time.Unix(0, ns)
	}
	return st
}

// Entries returns the index entries of every live domain, oldest first.
// The entries are immutable.
func (s *Store) Entries() []*Entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Entry, 0, len(s.domains))
	for _, id := range s.domainIDs {
		if e := s.domains[id]; e != nil {
			out = append(out, e)
		}
	}
	return out
}

// position returns the journal entry memory reflects.
func (s *Store) position() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pos
}

// Close stops the store: queued writes fail, the background work ends,
// and an index snapshot is written if the journal moved past the newest
// one. The store must not be used afterwards.
func (s *Store) Close() error {
	first := false
	s.closeOnce.Do(func() {
		first = true
		close(s.closing)
		<-s.done
		<-s.snapDone
		<-s.datesDone
	})
	if !first {
		return nil
	}
	force := s.snapWanted.Load()
	if s.position() <= s.snapSeq.Load() && !force {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	return s.writeSnapshot(ctx, force)
}

var errClosed = &dcerr.Error{Code: dcerr.StorageUnavailable, Msg: "the domain store is shutting down; retry later"}
