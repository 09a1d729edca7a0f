package domainstore

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// setLease shortens the journal lock's lease and heartbeat for a test.
func setLease(t *testing.T, lease, heartbeat time.Duration) {
	t.Helper()
	oldLease, oldBeat := lockLease, ownerHeartbeat
	lockLease, ownerHeartbeat = lease, heartbeat
	t.Cleanup(func() { lockLease, ownerHeartbeat = oldLease, oldBeat })
}

// journalLockFile is where file_system storage rooted at root keeps the
// journal lock.
func journalLockFile(root string) string {
	return filepath.Join(root, "locks", journalLock+".lock")
}

// TestStaleJournalLockTakenOver has the journal lock held by an instance
// that no longer renews its hold (dead, or paused), while its lock file is
// kept fresh, as CertMagic's file_system storage keeps it fresh from the
// refreshing goroutines of earlier holders. Another instance takes the
// lock over once the holder's owner record is older than the lease (or,
// from a holder that writes none, after three leases), and writes. A
// holder that renews its record keeps the lock.
func TestStaleJournalLockTakenOver(t *testing.T) {
	setLease(t, time.Second, 300*time.Millisecond)
	for _, tc := range []struct {
		name      string
		owner     func(ctx context.Context, st certmagic.Storage, stop <-chan struct{})
		takenOver bool
	}{
		{"holder stopped renewing", func(ctx context.Context, st certmagic.Storage, _ <-chan struct{}) {
			b, _ := json.Marshal(ownerRecord{Token: "dead", Heartbeat: time.Now().Add(-time.Hour)})
			_ = st.Store(ctx, ownerKey, b)
		}, true},
		{"holder writes no owner record", func(ctx context.Context, st certmagic.Storage, _ <-chan struct{}) {
			_ = st.Delete(ctx, ownerKey) // an earlier release's holder
		}, true},
		{"holder renews", func(ctx context.Context, st certmagic.Storage, stop <-chan struct{}) {
			renew := func() {
				b, _ := json.Marshal(ownerRecord{Token: "alive", Heartbeat: time.Now()})
				_ = st.Store(ctx, ownerKey, b)
			}
			renew()
			go func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
						renew()
					}
				}
			}()
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			holder := &certmagic.FileStorage{Path: root}
			stop := make(chan struct{})
			t.Cleanup(func() {
				close(stop)
				_ = holder.Unlock(ctx, journalLock)
			})
			core, logs := observer.New(zap.WarnLevel)
			s := openWith(t, &certmagic.FileStorage{Path: root}, Options{SyncInterval: time.Hour, Timeout: 5 * time.Second, Logger: zap.New(core)})
			<-s.Reconciled()
			if err := holder.Lock(ctx, journalLock); err != nil {
				t.Fatal(err)
			}
			tc.owner(ctx, holder, stop)

			start := time.Now()
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "after.example.test"})
			took := time.Since(start)
			takeovers := logs.FilterMessage("the journal lock's holder stopped renewing its hold; taking the lock over").Len()
			if !tc.takenOver {
				if dcerr.CodeOf(err) != dcerr.StorageUnavailable || takeovers != 0 {
					t.Fatalf("with the holder renewing: write answered %v, %d takeovers; want STORAGE_UNAVAILABLE and none", err, takeovers)
				}
				if _, err := os.Stat(journalLockFile(root)); err != nil {
					t.Fatalf("the holder's lock file: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("write after %s: %v; want the stale lock taken over", took, err)
			}
			if takeovers != 1 || took < lockLease || (tc.name == "holder writes no owner record" && took < 3*lockLease) {
				t.Fatalf("the write took %s with %d takeovers; want one, after the lease (%s)", took, takeovers, lockLease)
			}
			if _, ok := s.Lookup("after.example.test"); !ok {
				t.Fatal("the write is not served")
			}
		})
	}
}

// ownerWritesFail is file_system storage whose writes of the journal
// lock's owner record fail once fail is set, as for an instance that can
// no longer renew its hold (its storage fails, or it is paused).
type ownerWritesFail struct {
	*certmagic.FileStorage
	fail atomic.Bool
}

func (o *ownerWritesFail) Store(ctx context.Context, key string, v []byte) error {
	if key == ownerKey && o.fail.Load() {
		return errors.New("storage write failed")
	}
	return o.FileStorage.Store(ctx, key, v)
}

// TestTakenOverHolderLeavesTheLock has instance a hold the journal lock
// and stop renewing its hold in the middle of a write, and instance b
// take the lock over and start a write of its own. When a goes on, its
// write fails with STORAGE_UNAVAILABLE and changes nothing, and it does
// not release the lock b now holds (file_system's Unlock removes the lock
// file whoever holds it); b's write then succeeds and every instance has
// b's domain, not a's.
func TestTakenOverHolderLeavesTheLock(t *testing.T) {
	setLease(t, 500*time.Millisecond, 100*time.Millisecond)
	ctx := context.Background()
	root := t.TempDir()
	opts := Options{SyncInterval: time.Hour, Timeout: 5 * time.Second}
	aStorage := &ownerWritesFail{FileStorage: &certmagic.FileStorage{Path: root}}
	a := openWith(t, aStorage, opts)
	b := openWith(t, &certmagic.FileStorage{Path: root}, opts)
	<-a.Reconciled()
	<-b.Reconciled()

	held := func(s *Store, name string) (running chan struct{}, release func(), result chan error) {
		running, result = make(chan struct{}), make(chan error, 1)
		gate := make(chan struct{})
		var once sync.Once
		release = func() { once.Do(func() { close(gate) }) }
		t.Cleanup(release)
		go func() {
			result <- s.submit(ctx, func(tx *txn) error {
				close(running)
				<-gate
				ts := now()
				tx.putDomain(&Domain{ID: newID(DomainPrefix), CreatedAt: ts, UpdatedAt: ts, Domain: name}, nil)
				return nil
			})
		}()
		return running, release, result
	}
	runningA, releaseA, resultA := held(a, "a.example.test")
	<-runningA
	aStorage.fail.Store(true) // a can no longer renew its hold
	runningB, releaseB, resultB := held(b, "b.example.test")
	select {
	case <-runningB: // b took the lock over
	case err := <-resultB:
		t.Fatalf("b could not take the lock over: %v", err)
	}

	releaseA()
	if err := <-resultA; dcerr.CodeOf(err) != dcerr.StorageUnavailable || strings.Contains(err.Error(), "may or may not") {
		t.Fatalf("a's write after its lock was taken over answered %v; want STORAGE_UNAVAILABLE saying nothing changed", err)
	}
	if err := a.Sync(ctx); err != nil { // a's session has ended
		t.Fatal(err)
	}
	if _, err := os.Stat(journalLockFile(root)); err != nil {
		t.Fatalf("b's lock file after a's session: %v; a must leave it", err)
	}
	releaseB()
	if err := <-resultB; err != nil {
		t.Fatalf("b's write: %v", err)
	}
	aStorage.fail.Store(false)
	c := openWith(t, &certmagic.FileStorage{Path: root}, opts)
	<-c.Reconciled()
	for i, s := range []*Store{a, b, c} {
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.Lookup("b.example.test"); !ok {
			t.Errorf("instance %d does not have b's domain", i)
		}
		if e, ok := s.Lookup("a.example.test"); ok {
			t.Errorf("instance %d has a's failed write's domain %+v", i, e)
		}
		checkConsistent(t, s)
	}
	// a writes again, and releases the lock afterwards
	mustCreate(t, a, DomainInput{Domain: "a2.example.test"})
	if err := a.Sync(ctx); err != nil { // the session has ended
		t.Fatal(err)
	}
	if _, err := os.Stat(journalLockFile(root)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the lock file after a's next write: %v; want it released", err)
	}
}
