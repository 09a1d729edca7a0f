package domainstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
)

type lockCounter struct {
	certmagic.Storage
	locks atomic.Int64
}

func (l *lockCounter) Lock(ctx context.Context, name string) error {
	if name == journalLock {
		l.locks.Add(1)
	}
	return l.Storage.Lock(ctx, name)
}

// TestDamagedHeadRepairedElsewhere: an instance that read the damaged head
// does not take the journal lock on its looks at the journal once another
// instance wrote the head back.
func TestDamagedHeadRepairedElsewhere(t *testing.T) {
	ctx := context.Background()
	mem := new(memstorage.Storage)
	a := openWith(t, mem, Options{SyncInterval: time.Hour})
	mustCreate(t, a, DomainInput{Domain: "one.example.test"})
	_ = a.Sync(ctx)
	bst := &lockCounter{Storage: mem}
	b := openWith(t, bst, Options{SyncInterval: time.Hour})
	<-b.Reconciled()
	_ = b.Sync(ctx)

	_ = mem.Store(ctx, headKey, []byte("garbage"))
	// b reads the damaged head (say its follow could not get the lock in time)
	if _, err := b.readHead(ctx); err != nil {
		t.Fatal(err)
	}
	// a writes: its session writes the rebuilt head back
	mustCreate(t, a, DomainInput{Domain: "two.example.test"})
	_ = a.Sync(ctx)
	if h, err := a.readHead(ctx); err != nil || h.repaired {
		t.Fatalf("head not written back: %+v %v", h, err)
	}
	bst.locks.Store(0)
	for range 5 {
		if err := b.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := bst.locks.Load(); n > 0 {
		t.Fatalf("idle b took the journal lock %d times in 5 syncs (headDamaged=%v)", n, b.headDamaged.Load())
	}
}

type listFail struct {
	certmagic.Storage
	mu   sync.Mutex
	fail bool
}

func (l *listFail) List(ctx context.Context, p string, r bool) ([]string, error) {
	l.mu.Lock()
	f := l.fail
	l.mu.Unlock()
	if f {
		return nil, errInjected
	}
	return l.Storage.List(ctx, p, r)
}

// TestSkippedEntryRecoveryRetried: when the listing that should follow a
// skipped damaged entry fails, it is tried again until it works.
func TestSkippedEntryRecoveryRetried(t *testing.T) {
	ctx := context.Background()
	mem := new(memstorage.Storage)
	a := openWith(t, mem, Options{SyncInterval: time.Hour})
	bst := &listFail{Storage: mem}
	b := openWith(t, bst, Options{SyncInterval: time.Hour})
	<-b.Reconciled()
	d := mustCreate(t, a, DomainInput{Domain: "one.example.test"})
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	desc := "after"
	if _, err := a.UpdateDomain(ctx, d.ID, DomainPatch{Description: &desc}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, a, DomainInput{Domain: "two.example.test"})
	_ = a.Sync(ctx)
	patched := a.domains[d.ID].Version
	_ = mem.Store(ctx, entryKey(patched), []byte(`{"format":1,"seq":`))

	bst.mu.Lock()
	bst.fail = true
	bst.mu.Unlock()
	if err := b.Sync(ctx); err == nil {
		t.Fatal("the sync whose recovery listing failed reported no error")
	}
	bst.mu.Lock()
	bst.fail = false
	bst.mu.Unlock()
	for range 3 {
		_ = b.Sync(ctx)
	}
	b.mu.RLock()
	va, vb := a.domains[d.ID].Version, b.domains[d.ID].Version
	b.mu.RUnlock()
	if va != vb {
		t.Fatalf("b has version %d of %s, a has %d: b never read the records after the failed recovery", vb, d.ID, va)
	}
}

type slowStorage struct {
	certmagic.Storage
	lat atomic.Int64
}

func (s *slowStorage) d(ctx context.Context) error {
	time.Sleep(time.Duration(s.lat.Load()))
	return ctx.Err() // as a networked storage honours its context
}
func (s *slowStorage) Load(ctx context.Context, k string) ([]byte, error) {
	if err := s.d(ctx); err != nil {
		return nil, err
	}
	return s.Storage.Load(ctx, k)
}
func (s *slowStorage) Store(ctx context.Context, k string, v []byte) error {
	if err := s.d(ctx); err != nil {
		return err
	}
	return s.Storage.Store(ctx, k, v)
}
func (s *slowStorage) Delete(ctx context.Context, k string) error {
	if err := s.d(ctx); err != nil {
		return err
	}
	return s.Storage.Delete(ctx, k)
}

// TestDamagedHeadLongJournal: a damaged head over a journal too long to
// apply again within one write's timeout (a storage a few milliseconds
// away) is repaired anyway, and writes go on.
func TestDamagedHeadLongJournal(t *testing.T) {
	ctx := context.Background()
	st := &slowStorage{Storage: new(memstorage.Storage)}
	a := openWith(t, st, Options{SyncInterval: time.Hour, Timeout: 500 * time.Millisecond})
	for i := range 300 {
		mustCreate(t, a, DomainInput{Domain: fmt.Sprintf("d%d.example.test", i)})
	}
	_ = a.Sync(ctx)
	_ = st.Store(ctx, headKey, []byte("garbage"))
	st.lat.Store(int64(2 * time.Millisecond)) // a storage a few ms away
	var lastErr error
	ok := false
	for i := range 10 {
		_, lastErr = a.CreateDomain(ctx, DomainInput{Domain: fmt.Sprintf("late%d.example.test", i)})
		if lastErr == nil {
			ok = true
			break
		}
	}
	h, herr := a.readHead(ctx)
	if !ok {
		t.Fatalf("10 writes failed after the head was damaged; last: %v; head now %+v %v", lastErr, h, herr)
	}
}

type journalDown struct {
	certmagic.Storage
	down  atomic.Bool
	armed atomic.Bool
}

func (j *journalDown) hit(k string) bool {
	return j.down.Load() && len(k) > len(journalDir)+2 && k[:len(journalDir)+2] == journalDir+"/0"
}
func (j *journalDown) Store(ctx context.Context, k string, v []byte) error {
	if j.armed.Load() && len(k) > len(journalDir)+2 && k[:len(journalDir)+2] == journalDir+"/0" {
		j.down.Store(true) // the storage goes away during the journal write
	}
	if j.hit(k) {
		return errInjected
	}
	return j.Storage.Store(ctx, k, v)
}
func (j *journalDown) Load(ctx context.Context, k string) ([]byte, error) {
	if j.hit(k) {
		return nil, errInjected
	}
	return j.Storage.Load(ctx, k)
}

// TestWritesAnsweredWhileUnsettled: while an unconfirmed journal write is
// being settled (the storage fails every read of the journal), every
// caller, the ones queued beyond the queue's size included, gets an answer
// within the bound.
func TestWritesAnsweredWhileUnsettled(t *testing.T) {
	st := &journalDown{Storage: new(memstorage.Storage)}
	a := openWith(t, st, Options{SyncInterval: time.Hour, Timeout: 100 * time.Millisecond})
	<-a.Reconciled()
	st.armed.Store(true)
	var answered atomic.Int64
	n := 1100
	for i := range n {
		go func() {
			_, _ = a.CreateDomain(context.Background(), DomainInput{Domain: fmt.Sprintf("q%d.example.test", i)})
			answered.Add(1)
		}()
	}
	time.Sleep(3 * time.Second) // 30 timeouts
	got := answered.Load()
	st.armed.Store(false)
	st.down.Store(false)
	if got != int64(n) {
		t.Fatalf("%d of %d writes answered 30 timeouts later (the rest wait to be queued)", got, n)
	}
}

type slowRecords struct {
	certmagic.Storage
	delay atomic.Int64
}

func (s *slowRecords) Store(ctx context.Context, k string, v []byte) error {
	if len(k) > len(domainsDir) && k[:len(domainsDir)] == domainsDir {
		time.Sleep(time.Duration(s.delay.Load()))
	}
	return s.Storage.Store(ctx, k, v)
}

type damagedFor struct {
	certmagic.Storage
	key atomic.Value
}

func (d *damagedFor) Load(ctx context.Context, k string) ([]byte, error) {
	if v, _ := d.key.Load().(string); v == k {
		return []byte(`{"format":1,"seq":`), nil
	}
	return d.Storage.Load(ctx, k)
}

// TestSkippedEntryWhileWriterApplies: b skips a damaged entry whose writer
// has not written its records yet; b's listing waits for the writer (it
// runs under the journal lock), so b ends with the writer's change.
func TestSkippedEntryWhileWriterApplies(t *testing.T) {
	ctx := context.Background()
	mem := new(memstorage.Storage)
	ast := &slowRecords{Storage: mem}
	a := openWith(t, ast, Options{SyncInterval: time.Hour})
	bst := &damagedFor{Storage: mem}
	b := openWith(t, bst, Options{SyncInterval: time.Hour})
	<-b.Reconciled()
	d := mustCreate(t, a, DomainInput{Domain: "one.example.test"})
	_ = a.Sync(ctx)
	_ = b.Sync(ctx)
	bst.key.Store(entryKey(a.position() + 1)) // b will read the next entry damaged
	ast.delay.Store(int64(300 * time.Millisecond))
	desc := "after"
	if _, err := a.UpdateDomain(ctx, d.ID, DomainPatch{Description: &desc}); err != nil {
		t.Fatal(err)
	}
	_ = b.Sync(ctx) // skips the entry, lists the records (a has not written them yet)
	time.Sleep(time.Second)
	_ = a.Sync(ctx)
	for range 3 {
		_ = b.Sync(ctx)
	}
	got, err := b.GetDomain(ctx, d.ID)
	if err != nil || got.Description != "after" {
		t.Fatalf("b reads %+v, %v; a wrote description %q", got, err, desc)
	}
}

// TestDamagedHeadWithoutEntries: a damaged head on a journal with no
// entries (just started over records of an earlier version) is rebuilt
// past the records' versions, the same on every instance, so that a fresh
// instance's writes reach one already at the old head.
func TestDamagedHeadWithoutEntries(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	for i, id := range []string{"rd_01m8djch0z1t3s0se2ynhqbc0m", "rd_01m8djch11e8wy11by9eertygf"} {
		d := &Domain{ID: id, Domain: fmt.Sprintf("l%d.example.test", i)}
		_ = st.Store(ctx, domainRecordKey(id, uint64(i+5)), []byte(mustJSON(d)))
	}
	a := openWith(t, st, Options{SyncInterval: time.Hour})
	_ = a.Sync(ctx)
	time.Sleep(50 * time.Millisecond) // a's first look at the journal is done
	_ = st.Store(ctx, headKey, []byte("garbage"))
	b := openWith(t, st, Options{SyncInterval: time.Hour})
	mustCreate(t, b, DomainInput{Domain: "new.example.test"})
	_ = b.Sync(ctx)
	_ = a.Sync(ctx)
	if _, ok := a.Lookup("new.example.test"); !ok {
		t.Fatalf("a (at %d) does not see b's write (b at %d)", a.position(), b.position())
	}
}
