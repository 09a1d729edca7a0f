package domainstore

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
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
// lock. An instance that has waited for the lock longer than lockLease
// and finds the heartbeat older than that (or, for a holder that writes
// no record, an older release, finds none for three leases) releases the
// lock for it and takes it. A holder checks the record before each
// journal entry it writes and before it releases the lock: when another
// instance has taken the lock over, its writes fail and it leaves the
// lock to the new holder.

// ownerKey is the storage key of the journal lock's owner record.
const ownerKey = prefix + "/locks/journal_owner.json"

// lockLease is how long a holder of the journal lock may go without
// renewing its owner record before another instance takes the lock over;
// ownerHeartbeat is how often a holder renews it.
var (
	lockLease      = 10 * time.Second
	ownerHeartbeat = 3 * time.Second
)

// ownerRecord is the content of the owner record.
type ownerRecord struct {
	Token     string    `json:"token"`
	Heartbeat time.Time `json:"heartbeat"`
}

// journalHold is this instance's holding of the journal lock.
type journalHold struct {
	token string
	stop  chan struct{}
	done  chan struct{}
	lost  atomic.Bool // another instance took the lock over
}

// errLockTaken means another instance took the journal lock over while
// this one held it (this one had stopped renewing its hold).
var errLockTaken = errors.New("another instance took the journal lock over")

// lockJournal takes the journal lock, trying until ctx ends, and takes it
// over from a holder that has stopped renewing its hold.
func (s *Store) lockJournal(ctx context.Context) error {
	for {
		ok, err := s.tryLock(ctx, journalLock, lockAttempt)
		if err != nil {
			return err
		}
		if ok {
			s.lockWaitSince.Store(0)
			return s.claimJournal(ctx)
		}
		s.breakStaleJournalLock(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(10+rand.IntN(30)) * time.Millisecond):
		}
	}
}

// claimJournal writes the owner record of a journal lock just taken and
// starts renewing it. If the record cannot be written, the lock is let go.
func (s *Store) claimJournal(ctx context.Context) error {
	var b [8]byte
	_, _ = crand.Read(b[:])
	h := &journalHold{token: hex.EncodeToString(b[:]), stop: make(chan struct{}), done: make(chan struct{})}
	if err := s.writeOwner(ctx, h.token); err != nil {
		s.stats.storageErrors.Add(1)
		s.unlock(journalLock)
		return storageFailed("claiming the journal lock", err)
	}
	s.hold.Store(h)
	go s.renewHold(h)
	return nil
}

// renewHold renews the owner record of hold h until h.stop is closed, or
// until it finds that another instance has taken the lock over.
func (s *Store) renewHold(h *journalHold) {
	defer close(h.done)
	tick := time.NewTicker(ownerHeartbeat)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), ownerHeartbeat)
		owns, err := s.ownsJournal(ctx, h)
		if err == nil && owns {
			err = s.writeOwner(ctx, h.token)
		}
		cancel()
		if err != nil {
			s.stats.storageErrors.Add(1) // try again at the next tick
		}
		if err == nil && !owns {
			s.log.Error("journal lock taken over by another instance while held; writes of this session fail")
			h.lost.Store(true)
			return
		}
	}
}

// checkHold reports errLockTaken if another instance has taken over the
// journal lock this one holds.
func (s *Store) checkHold(ctx context.Context) error {
	h := s.hold.Load()
	if h == nil {
		return errors.New("the journal lock is not held")
	}
	if h.lost.Load() {
		return errLockTaken
	}
	owns, err := s.ownsJournal(ctx, h)
	if err != nil {
		s.stats.storageErrors.Add(1)
		return err
	}
	if !owns {
		s.log.Error("journal lock taken over by another instance while held; writes of this session fail")
		h.lost.Store(true)
		return errLockTaken
	}
	return nil
}

// unlockJournal stops renewing the hold and releases the journal lock,
// unless another instance has taken it over: then its lock is left alone.
func (s *Store) unlockJournal() {
	h := s.hold.Swap(nil)
	if h != nil {
		close(h.stop)
		<-h.done
		if !h.lost.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
			owns, err := s.ownsJournal(ctx, h)
			cancel()
			if err == nil && !owns {
				h.lost.Store(true)
			}
		}
		if h.lost.Load() {
			s.log.Warn("leaving the journal lock to the instance that took it over")
			return
		}
	}
	s.unlock(journalLock)
}

// breakStaleJournalLock releases the journal lock for its holder when
// this instance has waited for it longer than lockLease and the holder's
// owner record is older than that (or missing for three leases).
func (s *Store) breakStaleJournalLock(ctx context.Context) {
	now := time.Now()
	since := s.lockWaitSince.Load()
	if since == 0 {
		s.lockWaitSince.Store(now.UnixNano())
		return
	}
	waited := now.Sub(time.Unix(0, since))
	if waited < lockLease || now.Sub(time.Unix(0, s.ownerChecked.Load())) < lockLease/10 {
		return
	}
	s.ownerChecked.Store(now.UnixNano())
	rec, err := s.readOwner(ctx)
	var age time.Duration
	switch {
	case err == nil:
		if age = now.Sub(rec.Heartbeat); age <= lockLease {
			return
		}
	case errors.Is(err, errNoEntry):
		if waited < 3*lockLease {
			return
		}
	default:
		return // the storage fails: taking the lock over can wait
	}
	s.log.Warn("the journal lock's holder stopped renewing its hold; taking the lock over",
		zap.Duration("waited", waited), zap.Duration("heartbeat_age", age))
	if err := s.Storage().Unlock(ctx, journalLock); err != nil {
		s.log.Debug("releasing a stale journal lock", zap.Error(err))
	}
}

// ownsJournal reports whether the owner record holds h's token.
func (s *Store) ownsJournal(ctx context.Context, h *journalHold) (bool, error) {
	rec, err := s.readOwner(ctx)
	if errors.Is(err, errNoEntry) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return rec.Token == h.token, nil
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
