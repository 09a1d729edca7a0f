package domainstore

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// The journal lock is the storage's own lock, and a storage lock is a
// lease that its holder keeps alive. CertMagic's file_system storage keeps
// a lock file fresh from a goroutine that refreshes whatever file is at
// the lock's path until it finds none, so on a busy fleet the goroutines
// of earlier holders keep refreshing the current holder's file: a holder
// that dies or is paused while it holds the lock is never seen as stale,
// and every instance waits for it. Its Unlock removes the file whoever
// holds it.
//
// So the holder of the journal lock also keeps an owner record: a random
// token and a heartbeat it renews every ownerHeartbeat while it holds the
// lock (and leaves for the next holder to replace). An instance waiting for the lock
// that sees the same record for lockLease by its own clock (or, from a
// holder that writes none, an earlier release, no record for three
// leases) releases the lock for its holder and takes it. A holder that
// has not renewed its record for lockLease-ownerHeartbeat (it was paused,
// or its storage fails), or finds another token in it, counts its hold as
// lost: it writes no more journal entries, leaves the head alone, and
// does not release the lock, which is the new holder's.

// ownerKey is the storage key of the journal lock's owner record.
const ownerKey = prefix + "/locks/journal_owner.json"

// lockLease is how long the record of a holder of the journal lock may
// stay the same before another instance takes the lock over;
// ownerHeartbeat is how often a holder renews it.
var (
	lockLease      = 10 * time.Second
	ownerHeartbeat = 3 * time.Second
)

// holdLimit is how long a holder may go without renewing its record
// before it counts its hold as lost: a heartbeat before a waiter can
// decide to take the lock over.
func holdLimit() time.Duration { return lockLease - ownerHeartbeat }

// monoBase anchors mono, a monotonic clock reading.
var monoBase = time.Now()

func mono() time.Duration { return time.Since(monoBase) }

// ownerRecord is the content of the owner record.
type ownerRecord struct {
	Token     string    `json:"token"`
	Heartbeat time.Time `json:"heartbeat"`
}

// journalHold is this instance's holding of the journal lock.
type journalHold struct {
	token   string
	ctx     context.Context // canceled when the hold ends: renewals in flight stop
	cancel  context.CancelFunc
	done    chan struct{}
	lost    atomic.Bool  // another instance may have taken the lock over
	why     atomic.Value // string: why the hold was lost
	renewed atomic.Int64 // mono() when the last successful write of the record was sent
}

func (h *journalHold) markRenewed(sent time.Duration) { h.renewed.Store(int64(sent)) }

func (h *journalHold) sinceRenewed() time.Duration { return mono() - time.Duration(h.renewed.Load()) }

// ownerWatch is what a waiter has seen of the owner record.
type ownerWatch struct {
	mu       sync.Mutex
	raw      string        // the record, "" for none
	since    time.Duration // mono() when it was first seen so
	last     time.Duration // mono() when it was last read
	lastRead time.Duration
	extra    time.Duration // added to the limit, drawn when the watch starts
}

// errLockTaken means this instance's hold of the journal lock is lost:
// another instance took the lock over, or may have, as this one had not
// renewed its hold in time.
var errLockTaken = errors.New("this instance's hold of the journal lock lapsed (another instance may have taken it over)")

// lockJournal takes the journal lock, trying until ctx ends, and takes it
// over from a holder that has stopped renewing its hold.
func (s *Store) lockJournal(ctx context.Context) error {
	if err := s.lockWith(ctx, journalLock, s.breakStaleJournalLock); err != nil {
		return err
	}
	return s.claimJournal(ctx)
}

// claimJournal writes the owner record of a journal lock just taken and
// starts renewing it. If the record cannot be written, the lock is let go.
func (s *Store) claimJournal(ctx context.Context) error {
	var b [8]byte
	_, _ = crand.Read(b[:])
	h := &journalHold{token: hex.EncodeToString(b[:]), done: make(chan struct{})}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	sent := mono()
	if err := s.writeOwner(ctx, h.token); err != nil {
		h.cancel()
		s.stats.storageErrors.Add(1)
		s.unlock(journalLock)
		return storageFailed("claiming the journal lock", err)
	}
	h.markRenewed(sent)
	if old := s.hold.Swap(h); old != nil {
		s.log.Error("a second hold of the journal lock in one process") // cannot happen: one goroutine locks
	}
	go s.renewHold(h)
	return nil
}

// renewHold renews the owner record of hold h until the hold ends, or
// until it finds the hold lost. A renewal must be done within holdLimit
// of the last one, and is tried again sooner after a failure.
func (s *Store) renewHold(h *journalHold) {
	defer close(h.done)
	wait := ownerHeartbeat
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-time.After(wait):
		}
		if s.holdLost(h) {
			return
		}
		sent := mono()
		ctx, cancel := context.WithTimeout(h.ctx, time.Duration(h.renewed.Load())+holdLimit()-sent)
		rec, err := s.readOwner(ctx)
		switch {
		case err == nil && rec.Token != h.token:
			cancel()
			s.loseHold(h, "another instance took the journal lock over while this one held it")
			return
		case err == nil, errors.Is(err, errNoEntry):
			if s.holdLost(h) { // the read took too long: a waiter may have taken over
				cancel()
				return
			}
			err = s.writeOwner(ctx, h.token)
		}
		cancel()
		if err != nil {
			s.stats.storageErrors.Add(1)
			wait = ownerHeartbeat / 3
			continue
		}
		h.markRenewed(sent)
		wait = ownerHeartbeat
	}
}

// holdLost reports whether hold h is lost, and marks it lost when it has
// gone unrenewed for holdLimit.
func (s *Store) holdLost(h *journalHold) bool {
	if h.lost.Load() {
		return true
	}
	if h.sinceRenewed() > holdLimit() {
		s.loseHold(h, "this instance did not renew its hold of the journal lock in time; another instance may take it over")
		return true
	}
	return false
}

func (s *Store) loseHold(h *journalHold, why string) {
	h.why.CompareAndSwap(nil, why)
	if h.lost.CompareAndSwap(false, true) {
		s.log.Error("journal lock taken over by another instance while held; writes of this session fail",
			zap.String("reason", why))
	}
}

// holdWhy says why the current hold was lost, if it was.
func (s *Store) holdWhy() (string, bool) {
	if h := s.hold.Load(); h != nil {
		why, ok := h.why.Load().(string)
		return why, ok
	}
	return "", false
}

// checkHold reports errLockTaken if this instance's hold of the journal
// lock is lost.
func (s *Store) checkHold(ctx context.Context) error {
	h := s.hold.Load()
	if h == nil || s.holdLost(h) {
		return errLockTaken
	}
	rec, err := s.readOwner(ctx)
	switch {
	case errors.Is(err, errNoEntry):
		return nil // no takeover writes none
	case err != nil:
		s.stats.storageErrors.Add(1)
		return err
	case rec.Token != h.token:
		s.loseHold(h, "another instance took the journal lock over while this one held it")
		return errLockTaken
	}
	return nil
}

// unlockJournal stops renewing the hold and releases the journal lock,
// unless the owner record holds another instance's
// token: then that instance has taken the lock over, and the lock (on
// file_system, whose Unlock removes the lock file whoever holds it) is
// left to it. A hold lost only for want of renewal is released: nobody
// took it over, and on a storage whose locks check their owner (Redis) a
// lock never released would be held for good.
func (s *Store) unlockJournal() {
	h := s.hold.Swap(nil)
	if h == nil {
		s.unlock(journalLock)
		return
	}
	h.cancel()
	<-h.done
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	rec, err := s.readOwner(ctx)
	if err == nil && rec.Token != h.token {
		s.log.Warn("leaving the journal lock to the instance that took it over")
		return
	}
	// the record stays: the next holder replaces it when it claims the
	// lock, and until then a waiter watching it sees a holder that has
	// not claimed (or is paused before it could), not a missing record
	s.unlock(journalLock)
}

// breakStaleJournalLock releases the journal lock for its holder when the
// owner record has stayed the same for lockLease while this instance
// waited (three leases while there is none). Reads of the record are at
// most one a tenth of a lease apart; a gap of a lease between them starts
// the watch again.
func (s *Store) breakStaleJournalLock(ctx context.Context) {
	w := &s.ownerWatch
	w.mu.Lock()
	defer w.mu.Unlock()
	now := mono()
	if now-w.lastRead < lockLease/10 {
		return
	}
	w.lastRead = now
	raw, err := s.rawOwner(ctx)
	if err != nil {
		return // the storage fails: taking the lock over can wait
	}
	if w.last == 0 || raw != w.raw || now-w.last > lockLease {
		// a random part, so that two waiters do not both decide at once
		w.raw, w.since, w.last = raw, now, now
		w.extra = time.Duration(rand.Int64N(int64(lockLease/5) + 1))
		return
	}
	w.last = now
	limit := lockLease + w.extra
	if raw == "" {
		limit = 3*lockLease + w.extra
	}
	if now-w.since < limit {
		return
	}
	if again, err := s.rawOwner(ctx); err != nil || again != raw {
		return // it changed just now
	}
	s.log.Warn("the journal lock's holder stopped renewing its hold; taking the lock over",
		zap.Duration("unchanged_for", now-w.since), zap.Bool("owner_record", raw != ""))
	w.raw, w.since, w.last = "", 0, 0
	if err := s.Storage().Unlock(ctx, journalLock); err != nil {
		s.log.Debug("releasing a stale journal lock", zap.Error(err))
	}
}

// rawOwner returns the owner record as stored, "" if there is none.
func (s *Store) rawOwner(ctx context.Context) (string, error) {
	b, err := s.Storage().Load(ctx, ownerKey)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return string(b), err
}

// readOwner reads the owner record; errNoEntry if there is none or it
// cannot be decoded.
func (s *Store) readOwner(ctx context.Context) (ownerRecord, error) {
	var rec ownerRecord
	b, err := s.Storage().Load(ctx, ownerKey)
	if errors.Is(err, fs.ErrNotExist) {
		return rec, errNoEntry
	}
	if err != nil {
		return rec, err
	}
	if json.Unmarshal(b, &rec) != nil {
		return rec, errNoEntry
	}
	return rec, nil
}

func (s *Store) writeOwner(ctx context.Context, token string) error {
	b, err := json.Marshal(ownerRecord{Token: token, Heartbeat: time.Now().UTC()})
	if err != nil {
		return err
	}
	return s.Storage().Store(ctx, ownerKey, b)
}
