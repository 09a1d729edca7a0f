package domainstore

import (
	"context"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
)

// lockAttempt bounds one attempt to take a storage lock. A storage's Lock
// blocks while the lock is held by someone else, and some storages look
// again only after a pause (file_system: a second); trying again sooner
// hands the lock over faster between instances.
var lockAttempt = 250 * time.Millisecond

// lock takes the storage lock name, shared by every instance on the
// storage, trying until ctx ends.
func (s *Store) lock(ctx context.Context, name string) error {
	return s.lockWith(ctx, name, nil)
}

// lockWith is lock, calling busy (if not nil) after each attempt that
// finds the lock held elsewhere.
func (s *Store) lockWith(ctx context.Context, name string, busy func(context.Context)) error {
	for {
		ok, err := s.tryLock(ctx, name, lockAttempt)
		if ok || err != nil {
			return err
		}
		if busy != nil {
			busy(ctx)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(10+rand.IntN(30)) * time.Millisecond):
		}
	}
}

// tryLock makes one attempt of at most wait to take the storage lock
// name. It reports false, with no error, when the lock is held elsewhere.
func (s *Store) tryLock(ctx context.Context, name string, wait time.Duration) (bool, error) {
	actx, cancel := context.WithTimeout(ctx, wait)
	err := s.Storage().Lock(actx, name)
	busy := actx.Err() != nil
	cancel()
	switch {
	case err == nil:
		return true, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	case busy:
		return false, nil
	default:
		s.stats.storageErrors.Add(1)
		return false, err
	}
}

// unlock releases the storage lock name.
func (s *Store) unlock(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	if err := s.Storage().Unlock(ctx, name); err != nil {
		s.stats.storageErrors.Add(1)
		s.log.Error("releasing storage lock", zap.String("lock", name), zap.Error(err))
	}
}

// TryLock makes one short attempt to take the storage lock name, which
// every instance on the storage shares; it reports whether it did. Unlock
// releases it.
func (s *Store) TryLock(ctx context.Context, name string) (bool, error) {
	return s.tryLock(ctx, name, lockAttempt)
}

// Unlock releases a lock taken with TryLock.
func (s *Store) Unlock(name string) { s.unlock(name) }
