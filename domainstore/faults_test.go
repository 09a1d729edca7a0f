package domainstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// faultStorage injects storage faults: errors, hangs (an operation blocks
// until its context ends), latency, and listings interrupted by a record
// that vanishes while the directory is walked.
type faultStorage struct {
	certmagic.Storage
	mu         sync.Mutex
	failAll    bool          // every operation fails
	failWrites bool          // Store and Delete fail
	hang       bool          // every operation blocks until its context ends
	vanish     int           // so many listings of a non-empty directory fail part way
	latency    time.Duration // added to every operation
}

var errInjected = errors.New("injected storage failure")

func (f *faultStorage) set(fn func(f *faultStorage)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

// before applies the faults for one operation.
func (f *faultStorage) before(ctx context.Context, write bool) error {
	f.mu.Lock()
	failAll, failWrites, hang, latency := f.failAll, f.failWrites, f.hang, f.latency
	f.mu.Unlock()
	if latency > 0 {
		time.Sleep(latency)
	}
	if hang {
		<-ctx.Done()
		return ctx.Err()
	}
	if failAll || (write && failWrites) {
		return errInjected
	}
	return nil
}

func (f *faultStorage) Store(ctx context.Context, key string, v []byte) error {
	if err := f.before(ctx, true); err != nil {
		return err
	}
	return f.Storage.Store(ctx, key, v)
}

func (f *faultStorage) Delete(ctx context.Context, key string) error {
	if err := f.before(ctx, true); err != nil {
		return err
	}
	return f.Storage.Delete(ctx, key)
}

func (f *faultStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := f.before(ctx, false); err != nil {
		return nil, err
	}
	return f.Storage.Load(ctx, key)
}

func (f *faultStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if err := f.before(ctx, false); err != nil {
		return certmagic.KeyInfo{}, err
	}
	return f.Storage.Stat(ctx, key)
}

func (f *faultStorage) List(ctx context.Context, p string, r bool) ([]string, error) {
	if err := f.before(ctx, false); err != nil {
		return nil, err
	}
	keys, err := f.Storage.List(ctx, p, r)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && len(keys) > 0 && f.vanish > 0 {
		f.vanish--
		// as file_system reports a file removed during its walk
		return keys[:len(keys)/2], &fs.PathError{Op: "lstat", Path: keys[len(keys)/2], Err: fs.ErrNotExist}
	}
	return keys, err
}

func (f *faultStorage) Lock(ctx context.Context, name string) error {
	if err := f.before(ctx, false); err != nil {
		return err
	}
	return f.Storage.Lock(ctx, name)
}

func (f *faultStorage) String() string { return "faults" }

func wantUnavailable(t *testing.T, err error) {
	t.Helper()
	if dcerr.CodeOf(err) != dcerr.StorageUnavailable {
		t.Fatalf("got %v (%s); want STORAGE_UNAVAILABLE", err, dcerr.CodeOf(err))
	}
	if strings.Contains(err.Error(), "domaincerts/") {
		t.Fatalf("the message names a storage key: %q", err.Error())
	}
}

// TestStorageFaults checks that a failing or hanging storage makes writes
// fail with STORAGE_UNAVAILABLE within the timeout, changing nothing,
// while lookups go on from memory, and that everything works again once
// the storage does, without a restart.
func TestStorageFaults(t *testing.T) {
	modes := []struct {
		name  string
		fault func(f *faultStorage)
	}{
		{"every operation fails", func(f *faultStorage) { f.failAll = true }},
		{"writes fail", func(f *faultStorage) { f.failWrites = true }},
		{"storage hangs", func(f *faultStorage) { f.hang = true }},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			st := &faultStorage{Storage: new(memstorage.Storage)}
			s := openWith(t, st, Options{Timeout: 300 * time.Millisecond, SyncInterval: 20 * time.Millisecond})
			ca := testpki.NewCA(t, "Faults CA")
			c := upload(t, s, ca.Issue(t, "up.example.test"))
			d := mustCreate(t, s, DomainInput{Domain: "up.example.test", CertificateID: c.ID})
			leaf := ca.Issue(t, "new.example.test")
			before := s.Stats().StorageErrors

			st.set(m.fault)
			start := time.Now()
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "new.example.test"})
			wantUnavailable(t, err)
			_, err = s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
			wantUnavailable(t, err)
			wantUnavailable(t, s.DeleteDomain(ctx, d.ID))
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("three failing writes took %s with a 300ms timeout", took)
			}
			time.Sleep(100 * time.Millisecond) // a few failed looks at the journal
			if e, ok := s.Lookup("up.example.test"); !ok || e.CertificateID != c.ID {
				t.Fatalf("lookup during the outage: %+v, %v", e, ok)
			}
			if s.Stats().StorageErrors == before {
				t.Fatal("no storage error counted")
			}

			st.set(func(f *faultStorage) { f.failAll, f.failWrites, f.hang = false, false, false })
			if _, ok := s.Lookup("new.example.test"); ok {
				t.Fatal("a failed create is served")
			}
			if _, err := s.GetDomain(ctx, d.ID); err != nil {
				t.Fatalf("after the outage: %v", err)
			}
			if _, err := s.CreateDomain(ctx, DomainInput{Domain: "new.example.test"}); err != nil {
				t.Fatalf("create after the outage: %v", err)
			}
			if _, n := s.Len(); n != 1 {
				t.Fatalf("%d certificates; the failed upload left one behind", n)
			}
			s.Close()
			s2 := openOn(t, st.Storage)
			if d, n := s2.Len(); d != 2 || n != 1 {
				t.Fatalf("after restart: %d domains, %d certificates; want 2, 1", d, n)
			}
			checkConsistent(t, s2)
		})
	}
}

// TestSlowStorage runs writers against a storage that takes 5 ms per
// operation (a networked store far away): every write succeeds, none
// waits for long, and the writes of concurrent clients share journal
// entries.
func TestSlowStorage(t *testing.T) {
	ctx := context.Background()
	st := &faultStorage{Storage: new(memstorage.Storage)}
	s := openWith(t, st, Options{Timeout: 5 * time.Second})
	st.set(func(f *faultStorage) { f.latency = 5 * time.Millisecond })
	before := s.position()
	createDomains(t, s, 200, "slow-%d.example.test")
	if d, _ := s.Len(); d != 200 {
		t.Fatalf("%d domains; want 200", d)
	}
	if entries := s.position() - before; entries >= 200 {
		t.Fatalf("200 concurrent creates took %d journal entries; want them batched", entries)
	}
	checkConsistent(t, s)
	if _, err := s.GetDomain(ctx, s.Entries()[0].DomainID); err != nil {
		t.Fatal(err)
	}
}

// TestInterruptedListings makes listings fail part way, as file_system's
// do when a record is replaced during the walk: start-up and recovery
// retry, and never take a partial listing for an empty directory.
func TestInterruptedListings(t *testing.T) {
	ctx := context.Background()
	st := &faultStorage{Storage: new(memstorage.Storage)}
	s := openOn(t, st)
	createDomains(t, s, 50, "vanish-%d.example.test")
	s.Close()
	if err := st.Storage.Delete(ctx, snapshotsDir); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, listingRetries, 2*listingRetries - 1} {
		t.Run(fmt.Sprintf("%d interrupted listings", n), func(t *testing.T) {
			st.set(func(f *faultStorage) { f.vanish = n })
			s := openOn(t, st)
			if d, _ := s.Len(); d != 50 {
				t.Fatalf("%d domains after start-up; want 50", d)
			}
			s.Close()
			if err := st.Storage.Delete(ctx, snapshotsDir); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("a listing that keeps failing", func(t *testing.T) {
		st.set(func(f *faultStorage) { f.vanish = 1000 })
		defer st.set(func(f *faultStorage) { f.vanish = 0 })
		if _, err := Open(ctx, st, Options{}); err == nil || !errors.Is(err, errPartialListing) {
			t.Fatalf("Open = %v; want the listing error, not an empty store", err)
		}
	})
}

// TestDamagedRecords truncates records: a damaged record is listed as an
// item, reads of it say RECORD_DAMAGED, it can be deleted, and it never
// takes the lists or the start-up down.
func TestDamagedRecords(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	s := openOn(t, st)
	ca := testpki.NewCA(t, "Damage CA")
	c := upload(t, s, ca.Issue(t, "good.example.test"))
	good := mustCreate(t, s, DomainInput{Domain: "good.example.test", CertificateID: c.ID})
	bad := mustCreate(t, s, DomainInput{Domain: "bad.example.test"})
	badCert := upload(t, s, ca.Issue(t, "other.example.test"))
	s.Close()

	truncate := func(key string) {
		t.Helper()
		b, err := st.Load(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Store(ctx, key, b[:len(b)/2]); err != nil {
			t.Fatal(err)
		}
	}
	badVersion := s.domains[bad.ID].Version
	truncate(domainRecordKey(bad.ID, badVersion))
	truncate(certRecordKey(badCert.ID))

	t.Run("the journal still holds it: read from there", func(t *testing.T) {
		s := openOn(t, st)
		if got, err := s.GetDomain(ctx, bad.ID); err != nil || got.Domain != "bad.example.test" {
			t.Fatalf("GetDomain = %v, %v", got, err)
		}
		s.Close()
	})

	// the journal entries are compacted away, the snapshot is gone
	for seq := uint64(1); seq <= s.pos; seq++ {
		_ = st.Delete(ctx, entryKey(seq))
	}
	if err := st.Store(ctx, headKey, []byte(fmt.Sprintf(`{"format":1,"seq":%d,"base":%d}`, s.pos, s.pos+1))); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, snapshotsDir); err != nil {
		t.Fatal(err)
	}

	s2 := openOn(t, st)
	if d, n := s2.Len(); d != 2 || n != 2 {
		t.Fatalf("%d domains, %d certificates; want 2, 2 (damaged ones listed)", d, n)
	}
	if st := s2.Stats(); st.Damaged != 1 || st.Domains != 1 {
		t.Fatalf("stats %+v; want 1 damaged domain, 1 live", st)
	}
	if _, ok := s2.Lookup("good.example.test"); !ok {
		t.Fatal("the good domain is not served")
	}
	if _, err := s2.GetDomain(ctx, bad.ID); dcerr.CodeOf(err) != dcerr.RecordDamaged {
		t.Fatalf("GetDomain(damaged) = %v; want RECORD_DAMAGED", err)
	}
	if _, err := s2.GetCertificate(ctx, badCert.ID); dcerr.CodeOf(err) != dcerr.RecordDamaged {
		t.Fatalf("GetCertificate(damaged) = %v; want RECORD_DAMAGED", err)
	}
	domains, _, err := s2.ListDomains(ctx, 10, "")
	if err != nil || len(domains) != 2 {
		t.Fatalf("ListDomains = %d, %v", len(domains), err)
	}
	var damaged *Domain
	for _, d := range domains {
		if d.Damage != nil {
			damaged = d
		}
	}
	if damaged == nil || damaged.ID != bad.ID || damaged.Damage.Reason == "" {
		t.Fatalf("the damaged domain is not listed as such: %+v", domains)
	}
	certs, _, err := s2.ListCertificates(ctx, 10, "")
	if err != nil || len(certs) != 2 {
		t.Fatalf("ListCertificates = %d, %v", len(certs), err)
	}

	// the damaged records can be deleted, and the name reused
	if err := s2.DeleteDomain(ctx, bad.ID); err != nil {
		t.Fatalf("deleting the damaged domain: %v", err)
	}
	if err := s2.DeleteCertificate(ctx, badCert.ID); err != nil {
		t.Fatalf("deleting the damaged certificate: %v", err)
	}
	s2.Close()
	s3 := openOn(t, st)
	if d, n := s3.Len(); d != 1 || n != 1 || s3.Stats().Damaged != 0 {
		t.Fatalf("after deleting: %d domains, %d certificates, %d damaged", d, n, s3.Stats().Damaged)
	}
	if _, err := s3.GetDomain(ctx, good.ID); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedJournalEntry damages an entry that its writer applied and an
// instance has not read yet: the reader skips it, counts it, reads the
// records once, and ends up agreeing with the writer; once the entries are
// compacted, the domain can still be read and deleted everywhere.
func TestDamagedJournalEntry(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	fleet := openFleet(t, st, 2)
	a, b := fleet[0], fleet[1]
	d := mustCreate(t, a, DomainInput{Domain: "one.example.test"})
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	desc := "after"
	if _, err := a.UpdateDomain(ctx, d.ID, DomainPatch{Description: &desc}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, a, DomainInput{Domain: "two.example.test"})
	if err := a.Sync(ctx); err != nil { // a's session has ended: the records are written
		t.Fatal(err)
	}
	patched := a.domains[d.ID].Version
	if err := st.Store(ctx, entryKey(patched), []byte(`{"format":1,"seq":`)); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Lookup("two.example.test"); !ok {
		t.Fatal("the entry after the damaged one was not applied")
	}
	if b.stats.damagedEntries.Load() != 1 {
		t.Fatal("the damaged entry was not counted")
	}
	got, err := b.GetDomain(ctx, d.ID)
	if err != nil || got.Description != "after" {
		t.Fatalf("b reads %+v, %v; want the PATCH its writer applied", got, err)
	}
	// the entries are compacted away; the record of one.example.test is
	// lost too: it reads as damaged, and deleting it works on both
	for seq := uint64(1); seq <= a.position(); seq++ {
		_ = st.Delete(ctx, entryKey(seq))
	}
	_ = st.Delete(ctx, domainRecordKey(d.ID, patched))
	for _, s := range []*Store{a, b} {
		if _, err := s.GetDomain(ctx, d.ID); dcerr.CodeOf(err) != dcerr.RecordDamaged {
			t.Fatalf("GetDomain of a lost record: %v; want RECORD_DAMAGED", err)
		}
	}
	if err := b.DeleteDomain(ctx, d.ID); err != nil {
		t.Fatalf("deleting a domain whose record is lost: %v", err)
	}
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup("one.example.test"); ok {
		t.Fatal("a still serves the deleted domain")
	}
}

// lateStorage stands for a networked storage whose journal writes time
// out while it is stalled, yet execute later: it keeps the last value a
// stalled write carried, and land executes it.
type lateStorage struct {
	*memstorage.Storage
	mu       sync.Mutex
	stalled  bool
	key      string
	val      []byte
	attempts int
}

func (l *lateStorage) Store(ctx context.Context, key string, v []byte) error {
	l.mu.Lock()
	if l.stalled && strings.HasPrefix(key, journalDir+"/0") {
		l.key, l.val = key, v
		l.attempts++
		l.mu.Unlock()
		return context.DeadlineExceeded
	}
	l.mu.Unlock()
	return l.Storage.Store(ctx, key, v)
}

func (l *lateStorage) stall(on bool) {
	l.mu.Lock()
	l.stalled = on
	l.mu.Unlock()
}

// land executes the last stalled write, as the storage finally does.
func (l *lateStorage) land() {
	l.mu.Lock()
	key, val := l.key, l.val
	l.mu.Unlock()
	_ = l.Storage.Store(context.Background(), key, val)
}

// TestUnconfirmedJournalWrite has a journal write time out and land later.
// The writer says the outcome is unknown, keeps the journal lock until it
// knows, and the entry's number is never used twice: both instances end up
// agreeing, with both writes.
func TestUnconfirmedJournalWrite(t *testing.T) {
	ctx := context.Background()
	st := &lateStorage{Storage: new(memstorage.Storage)}
	opts := Options{SyncInterval: time.Hour, Timeout: 300 * time.Millisecond}
	a, b := openWith(t, st, opts), openWith(t, st, opts)
	<-a.Reconciled()
	<-b.Reconciled()

	st.stall(true)
	_, errA := a.CreateDomain(ctx, DomainInput{Domain: "x.example.test"})
	if dcerr.CodeOf(errA) != dcerr.StorageUnavailable || !strings.Contains(errA.Error(), "may or may not") {
		t.Fatalf("a's unconfirmed write answered %v; want STORAGE_UNAVAILABLE saying the outcome is unknown", errA)
	}
	if st.attempts < 2 {
		t.Fatalf("the journal write was tried %d times; want it retried", st.attempts)
	}
	// b cannot write meanwhile: a holds the journal lock until it knows
	_, errB := b.CreateDomain(ctx, DomainInput{Domain: "y.example.test"})
	if dcerr.CodeOf(errB) != dcerr.StorageUnavailable {
		t.Fatalf("b wrote while a's entry was unsettled: %v", errB)
	}
	st.stall(false)
	st.land() // the timed-out request executes after all
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := b.CreateDomain(ctx, DomainInput{Domain: "y.example.test"}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("b cannot write after a's entry settled: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, s := range []*Store{a, b} {
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"x.example.test", "y.example.test"} {
		ea, okA := a.Lookup(name)
		eb, okB := b.Lookup(name)
		if !okA || !okB || ea.DomainID != eb.DomainID {
			t.Fatalf("%s: a has %+v, b has %+v; want the same domain on both", name, ea, eb)
		}
	}
	checkConsistent(t, a)
	checkConsistent(t, b)
}

// lapsedLock stands for an instance whose journal lock lapsed while it
// was held up (a paused process or VM, past the lock's lease): it goes on
// as if it held the lock, which it never takes from the other instances.
type lapsedLock struct {
	*memstorage.Storage
}

func (lapsedLock) Lock(context.Context, string) error   { return nil }
func (lapsedLock) Unlock(context.Context, string) error { return nil }

// TestLapsedJournalLock holds up a write of instance a after it has taken
// the entry number, while instance b takes the journal lock and writes
// that entry. When a goes on, its write fails with STORAGE_UNAVAILABLE and
// changes nothing: b's entry stays, and every instance (a, b, one started
// afterwards) has b's domain and not a's. a writes again once it has read
// b's entry.
func TestLapsedJournalLock(t *testing.T) {
	ctx := context.Background()
	shared := new(memstorage.Storage)
	opts := Options{SyncInterval: time.Hour}
	a, b := openWith(t, lapsedLock{shared}, opts), openWith(t, shared, opts)
	<-a.Reconciled()
	<-b.Reconciled()

	running, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the stores close: a failed test must not hang
	errA := make(chan error, 1)
	go func() {
		errA <- a.submit(ctx, func(tx *txn) error {
			close(running)
			<-release
			ts := now()
			tx.putDomain(&Domain{ID: newID(DomainPrefix), CreatedAt: ts, UpdatedAt: ts, Domain: "stale.example.test"}, nil)
			return nil
		})
	}()
	<-running
	db := mustCreate(t, b, DomainInput{Domain: "b.example.test"})
	unblock()
	if err := <-errA; dcerr.CodeOf(err) != dcerr.StorageUnavailable || strings.Contains(err.Error(), "may or may not") {
		t.Errorf("a's write after its lock lapsed answered %v; want STORAGE_UNAVAILABLE saying nothing changed", err)
	}

	c := openWith(t, shared, opts)
	<-c.Reconciled()
	for i, s := range []*Store{a, b, c} {
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if e, ok := s.Lookup("b.example.test"); !ok || e.DomainID != db.ID {
			t.Errorf("instance %d: b.example.test is %+v (found %v); want b's domain %s", i, e, ok, db.ID)
		}
		if e, ok := s.Lookup("stale.example.test"); ok {
			t.Errorf("instance %d has the failed write's domain %+v", i, e)
		}
	}
	da := mustCreate(t, a, DomainInput{Domain: "a.example.test"})
	for i, s := range []*Store{a, b, c} {
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if e, ok := s.Lookup("a.example.test"); !ok || e.DomainID != da.ID {
			t.Errorf("instance %d: a.example.test is %+v (found %v); want a's domain %s", i, e, ok, da.ID)
		}
		checkConsistent(t, s)
	}
}

// racedEntry is lapsedLock whose journal entry writes fail, the way a
// storage that is failing fails them, while another writer's entry lands
// at the same number: storeFails entry writes fail, then loadFails reads
// of the entry, and meanwhile runs inside the last failing call.
type racedEntry struct {
	lapsedLock
	mu          sync.Mutex
	storeFails  int
	loadFails   int
	failedWrite bool
	meanwhile   func()
}

func isEntryKey(key string) bool { return strings.HasPrefix(key, journalDir+"/0") }

func (r *racedEntry) Store(ctx context.Context, key string, v []byte) error {
	r.mu.Lock()
	if isEntryKey(key) && r.storeFails > 0 {
		r.storeFails--
		r.failedWrite = true
		last := r.storeFails == 0 && r.loadFails == 0
		r.mu.Unlock()
		if last {
			r.meanwhile()
		}
		return errors.New("storage write failed")
	}
	r.mu.Unlock()
	return r.Storage.Store(ctx, key, v)
}

func (r *racedEntry) Load(ctx context.Context, key string) ([]byte, error) {
	r.mu.Lock()
	if isEntryKey(key) && r.failedWrite && r.loadFails > 0 {
		r.loadFails--
		last := r.loadFails == 0
		r.mu.Unlock()
		if last {
			r.meanwhile()
		}
		return nil, errors.New("storage read failed")
	}
	r.mu.Unlock()
	return r.Storage.Load(ctx, key)
}

// TestJournalWriteRacesAnotherWriter has instance a's journal write fail
// while instance b (a's lock having lapsed) writes the same entry: right
// away, while a cannot read the entry back either, or after a has given
// up and waits to learn whether its write landed. a never writes over b's
// entry, answers that the outcome is unknown (its failed write might
// still land), and logs the lapse; every instance has b's domain and not
// a's.
func TestJournalWriteRacesAnotherWriter(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		storeFails, loadFails int
		afterAnswer           bool // b writes after a's write was answered
	}{
		{"b writes while a's write fails", 1, 0, false},
		{"b writes while a cannot read the entry back", 1, 1, false},
		{"a's write fails twice, b writes during the second", 2, 0, false},
		{"b writes while a settles a write never confirmed", 1 << 30, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			shared := new(memstorage.Storage)
			opts := Options{SyncInterval: time.Hour, Timeout: time.Second}
			core, logs := observer.New(zap.ErrorLevel)
			aOpts := opts
			aOpts.Logger = zap.New(core)
			raced := &racedEntry{lapsedLock: lapsedLock{shared}, storeFails: tc.storeFails, loadFails: tc.loadFails}
			a, b := openWith(t, raced, aOpts), openWith(t, shared, opts)
			<-a.Reconciled()
			<-b.Reconciled()
			var db *Domain
			var errB error
			raced.meanwhile = func() { db, errB = b.CreateDomain(ctx, DomainInput{Domain: "b.example.test"}) }

			_, errA := a.CreateDomain(ctx, DomainInput{Domain: "a.example.test"})
			if tc.afterAnswer {
				raced.meanwhile()
			}
			if errB != nil || db == nil {
				t.Fatalf("b's write: %v (b wrote: %v)", errB, db != nil)
			}
			if dcerr.CodeOf(errA) != dcerr.StorageUnavailable || !strings.Contains(errA.Error(), "may or may not") {
				t.Errorf("a's write answered %v; want STORAGE_UNAVAILABLE saying the outcome is unknown", errA)
			}
			c := openWith(t, shared, opts)
			<-c.Reconciled()
			for i, s := range []*Store{a, b, c} {
				if err := s.Sync(ctx); err != nil { // a's sync waits for its settling
					t.Fatal(err)
				}
				if e, ok := s.Lookup("b.example.test"); !ok || e.DomainID != db.ID {
					t.Errorf("instance %d: b.example.test is %+v (found %v); want b's domain %s", i, e, ok, db.ID)
				}
				if e, ok := s.Lookup("a.example.test"); ok {
					t.Errorf("instance %d has a's failed write's domain %+v", i, e)
				}
				checkConsistent(t, s)
			}
			if n := logs.FilterMessage("journal lock lapsed: entry already written").Len(); n != 1 {
				t.Errorf("a logged the lapse %d times; want once", n)
			}
		})
	}
}

// TestDamagedHead damages the head after compaction: it is rebuilt from
// the entries, an instance that starts by listing follows the journal from
// there, and the writes of both instances reach each other.
func TestDamagedHead(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	a := openWith(t, st, Options{SyncInterval: time.Hour})
	for i := range 3 {
		mustCreate(t, a, DomainInput{Domain: fmt.Sprintf("d%d.example.test", i)})
	}
	if err := a.Sync(ctx); err != nil { // a's write session has ended
		t.Fatal(err)
	}
	// compacted up to the last entry, then the head is damaged
	_ = st.Delete(ctx, entryKey(1))
	_ = st.Delete(ctx, entryKey(2))
	_ = st.Store(ctx, headKey, []byte(`garbage`))

	b := openWith(t, st, Options{SyncInterval: time.Hour})
	<-b.Reconciled()
	if d, _ := b.Len(); d != 3 {
		t.Fatalf("b has %d domains; want 3", d)
	}
	// a look at the journal writes the rebuilt head back, with no write
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if h, err := b.readHead(ctx); err != nil || h.repaired || h.Base != 3 {
		t.Fatalf("head after b's look: %+v, %v; want it rebuilt from entry 3 and stored", h, err)
	}
	mustCreate(t, a, DomainInput{Domain: "later-a.example.test"})
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if h, err := a.readHead(ctx); err != nil || h.repaired || h.Seq != a.position() {
		t.Fatalf("head after a's write: %+v, %v; want it written back at %d", h, err, a.position())
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Lookup("later-a.example.test"); !ok {
		t.Fatalf("b does not see a's write (b at %d, a at %d)", b.position(), a.position())
	}
	mustCreate(t, b, DomainInput{Domain: "later-b.example.test"})
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup("later-b.example.test"); !ok {
		t.Fatalf("a does not see b's write (b wrote entry %d)", b.position())
	}
}

// TestAbandonedWriteNeverRuns: a write whose caller stopped waiting before
// the sequencer reached it (the caller was told nothing changed) is never
// run later; one that was running when its caller gave up is reported as
// of unknown outcome.
func TestAbandonedWriteNeverRuns(t *testing.T) {
	ctx := context.Background()
	s := openWith(t, new(memstorage.Storage), Options{Timeout: 100 * time.Millisecond})
	release, running := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // a failed assertion must not leave the sequencer stuck
	firstErr := make(chan error, 1)
	go func() {
		firstErr <- s.submit(ctx, func(*txn) error { close(running); <-release; return nil })
	}()
	<-running // the sequencer is stuck in the first write
	var ran atomic.Bool
	err := s.submit(ctx, func(*txn) error { ran.Store(true); return nil })
	if !errors.Is(err, errWaitedTooLong) {
		t.Fatalf("a write queued behind a stuck one: %v; want errWaitedTooLong", err)
	}
	if err := <-firstErr; !errors.Is(err, errOutcomeUnknown) {
		t.Fatalf("the stuck write: %v; want errOutcomeUnknown", err)
	}
	unblock()
	// the sequencer goes on: a later write runs, the abandoned one did not
	if _, err := s.CreateDomain(ctx, DomainInput{Domain: "after.abandon.test"}); err != nil {
		t.Fatal(err)
	}
	if ran.Load() {
		t.Fatal("the abandoned write ran after its caller was told it changed nothing")
	}
}
