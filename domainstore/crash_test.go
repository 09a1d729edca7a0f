package domainstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// crashStorage stands for a process that dies after a number of storage
// writes: the write past its budget and everything after it fail, as if
// the process had been killed before making them. The locks it held stay
// held until release, as a dead instance's locks do until they expire.
type crashStorage struct {
	*memstorage.Storage
	mu     sync.Mutex
	budget int // writes left; negative: no limit
	writes int
	dead   bool
	held   map[string]bool
}

var errDead = errors.New("the process is dead")

func newCrashStorage() *crashStorage {
	return &crashStorage{Storage: new(memstorage.Storage), budget: -1, held: map[string]bool{}}
}

func (c *crashStorage) write() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return errDead
	}
	if c.budget == 0 {
		c.dead = true
		return errDead
	}
	if c.budget > 0 {
		c.budget--
	}
	c.writes++
	return nil
}

func (c *crashStorage) alive() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return errDead
	}
	return nil
}

func (c *crashStorage) Store(ctx context.Context, key string, v []byte) error {
	if err := c.write(); err != nil {
		return err
	}
	return c.Storage.Store(ctx, key, v)
}

func (c *crashStorage) Delete(ctx context.Context, key string) error {
	if err := c.write(); err != nil {
		return err
	}
	return c.Storage.Delete(ctx, key)
}

func (c *crashStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := c.alive(); err != nil {
		return nil, err
	}
	return c.Storage.Load(ctx, key)
}

func (c *crashStorage) List(ctx context.Context, p string, r bool) ([]string, error) {
	if err := c.alive(); err != nil {
		return nil, err
	}
	return c.Storage.List(ctx, p, r)
}

func (c *crashStorage) Lock(ctx context.Context, name string) error {
	if err := c.alive(); err != nil {
		return err
	}
	if err := c.Storage.Lock(ctx, name); err != nil {
		return err
	}
	c.mu.Lock()
	c.held[name] = true
	c.mu.Unlock()
	return nil
}

func (c *crashStorage) Unlock(ctx context.Context, name string) error {
	if err := c.alive(); err != nil {
		return err // a dead process releases nothing
	}
	c.mu.Lock()
	delete(c.held, name)
	c.mu.Unlock()
	return c.Storage.Unlock(ctx, name)
}

// crashAfter sets the budget of writes before the process dies.
func (c *crashStorage) crashAfter(n int) {
	c.mu.Lock()
	c.budget, c.writes = n, 0
	c.mu.Unlock()
}

func (c *crashStorage) written() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// release lets the dead process's locks expire.
func (c *crashStorage) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name := range c.held {
		_ = c.Storage.Unlock(context.Background(), name)
	}
	c.held = map[string]bool{}
}

// crashScenario is one API call that a crash may interrupt. setup runs on
// a healthy store and returns the call and a check of its effect on the
// store after the restart: done (the whole effect is there) or not (none
// of it); it fails the test for anything in between.
type crashScenario struct {
	name  string
	setup func(t *testing.T, s *Store, ca *testpki.CA) (call func() error, done func(t *testing.T, s *Store) bool)
}

var crashScenarios = []crashScenario{
	{"create domain", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		return func() error {
				_, err := s.CreateDomain(context.Background(), DomainInput{Domain: "new.example.test"})
				return err
			}, func(t *testing.T, s *Store) bool {
				_, ok := s.Lookup("new.example.test")
				return ok
			}
	}},
	{"upload", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		leaf := ca.Issue(t, "upload.example.test")
		var id string
		return func() error {
				c, err := s.CreateCertificate(context.Background(), CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
				if err == nil {
					id = c.ID
				}
				return err
			}, func(t *testing.T, s *Store) bool {
				_, n := s.Len()
				if n == 0 {
					return false
				}
				list, _, err := s.ListCertificates(context.Background(), 10, "")
				if err != nil || len(list) != 1 {
					t.Fatalf("certificates %v, %v", list, err)
				}
				if id != "" && list[0].ID != id {
					t.Fatalf("certificate %s; the upload answered %s", list[0].ID, id)
				}
				if _, err := s.LoadKeyPair(context.Background(), list[0].ID); err != nil {
					t.Fatalf("the certificate record exists but cannot be served: %v", err)
				}
				return true
			}
	}},
	{"attach", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		c1, c2 := upload(t, s, ca.Issue(t, "attach.example.test")), upload(t, s, ca.Issue(t, "attach.example.test"))
		d := mustCreate(t, s, DomainInput{Domain: "attach.example.test", CertificateID: c1.ID})
		return func() error {
				_, err := s.UpdateDomain(context.Background(), d.ID, DomainPatch{CertificateID: &c2.ID})
				return err
			}, func(t *testing.T, s *Store) bool {
				return certOf(t, s, d.ID, c1.ID, c2.ID) == c2.ID
			}
	}},
	{"detach", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		c := upload(t, s, ca.Issue(t, "detach.example.test"))
		d := mustCreate(t, s, DomainInput{Domain: "detach.example.test", CertificateID: c.ID})
		return func() error { return s.DetachCertificate(context.Background(), d.ID) },
			func(t *testing.T, s *Store) bool { return certOf(t, s, d.ID, c.ID, "") == "" }
	}},
	{"delete domain", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		d := mustCreate(t, s, DomainInput{Domain: "delete.example.test"})
		return func() error { return s.DeleteDomain(context.Background(), d.ID) },
			func(t *testing.T, s *Store) bool {
				_, ok := s.Lookup("delete.example.test")
				return !ok
			}
	}},
	{"delete certificate", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		c := upload(t, s, ca.Issue(t, "gone.example.test"))
		return func() error { return s.DeleteCertificate(context.Background(), c.ID) },
			func(t *testing.T, s *Store) bool {
				if s.CertificateExists(c.ID) {
					if _, err := s.LoadKeyPair(context.Background(), c.ID); err != nil {
						t.Fatalf("the certificate is listed but its key or record is gone: %v", err)
					}
					return false
				}
				return true
			}
	}},
	{"re-create a name deleted since the snapshot", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		ctx := context.Background()
		c := upload(t, s, ca.Issue(t, "again.example.test"))
		old := mustCreate(t, s, DomainInput{Domain: "again.example.test", CertificateID: c.ID})
		if err := s.writeSnapshot(ctx, false); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteDomain(ctx, old.ID); err != nil {
			t.Fatal(err)
		}
		return func() error {
				_, err := s.CreateDomain(ctx, DomainInput{Domain: "again.example.test", CertificateID: c.ID})
				return err
			}, func(t *testing.T, s *Store) bool {
				e, ok := s.Lookup("again.example.test")
				if ok && e.DomainID == old.ID {
					t.Fatalf("the deleted domain came back")
				}
				return ok
			}
	}},
	{"patch", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		d := mustCreate(t, s, DomainInput{Domain: "patch.example.test", Description: "before"})
		desc := "after"
		return func() error {
				_, err := s.UpdateDomain(context.Background(), d.ID, DomainPatch{Description: &desc})
				return err
			}, func(t *testing.T, s *Store) bool {
				got, err := s.GetDomain(context.Background(), d.ID)
				if err != nil {
					t.Fatal(err)
				}
				return got.Description == "after"
			}
	}},
	{"record a renewed certificate", func(t *testing.T, s *Store, ca *testpki.CA) (func() error, func(*testing.T, *Store) bool) {
		ctx := context.Background()
		d := mustCreate(t, s, DomainInput{Domain: "renew.example.test"})
		l1, l2 := ca.Issue(t, "renew.example.test"), ca.Issue(t, "renew.example.test")
		if err := s.SetManagedState(ctx, d.ID, *d.Policy, &Status{}, &IssuedCertificate{CertificatePEM: l1.CertPEM, KeyStorageKey: "k"}); err != nil {
			t.Fatal(err)
		}
		d, _ = s.GetDomain(ctx, d.ID)
		first := d.CertificateID
		return func() error {
				return s.SetManagedState(ctx, d.ID, *d.Policy, &Status{}, &IssuedCertificate{CertificatePEM: l2.CertPEM, KeyStorageKey: "k"})
			}, func(t *testing.T, s *Store) bool {
				got, err := s.GetDomain(ctx, d.ID)
				if err != nil {
					t.Fatal(err)
				}
				_, n := s.Len()
				if got.CertificateID == first {
					if n != 1 {
						t.Fatalf("%d certificate records; want 1", n)
					}
					return false
				}
				c, err := s.GetCertificate(ctx, got.CertificateID)
				if err != nil || c.SerialNumber != l2.Serial || n != 1 {
					t.Fatalf("renewed certificate %+v, %v, %d records; want serial %s and the old record gone", c, err, n, l2.Serial)
				}
				return true
			}
	}},
}

func mustCreate(t *testing.T, s *Store, in DomainInput) *Domain {
	t.Helper()
	d, err := s.CreateDomain(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// certOf returns the certificate of domain id, failing unless it is one of
// the allowed ones.
func certOf(t *testing.T, s *Store, id string, allowed ...string) string {
	t.Helper()
	d, err := s.GetDomain(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range allowed {
		if d.CertificateID == a {
			return a
		}
	}
	t.Fatalf("domain has certificate %q; want one of %q", d.CertificateID, allowed)
	return ""
}

// TestCrashPoints kills the store after every storage write of every API
// call (and of the work that follows the answer), restarts it on the same
// storage, and checks that every acknowledged change is there, that an
// interrupted one is there entirely or not at all, and that the index and
// the records agree: after one write on the restarted store, the records
// alone (the journal up to the head and the snapshots deleted) say the
// same as the journal did.
func TestCrashPoints(t *testing.T) {
	for _, sc := range crashScenarios {
		t.Run(sc.name, func(t *testing.T) {
			// a dry run counts the writes of the call and what follows it
			n := crashRun(t, sc, -1)
			if n == 0 {
				t.Fatal("the call wrote nothing")
			}
			for k := 0; k <= n; k++ {
				t.Run(fmt.Sprintf("after %d of %d writes", k, n), func(t *testing.T) { crashRun(t, sc, k) })
			}
		})
	}
}

// crashRun runs a scenario with the process dying after k writes of the
// call (never, when k is negative) and checks the store after a restart.
// It returns how many writes the call made.
func crashRun(t *testing.T, sc crashScenario, k int) int {
	ctx := context.Background()
	st := newCrashStorage()
	s, err := Open(ctx, st, Options{SyncInterval: time.Hour, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	call, done := sc.setup(t, s, testpki.NewCA(t, "Crash CA"))
	_ = s.Sync(ctx) // the set-up's writes are finished
	st.crashAfter(k)
	callErr := call()
	// let the work after the answer run (or fail: a dead process's store
	// may wait for storage that never answers again)
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	_ = s.Sync(sctx)
	cancel()
	writes := st.written()
	abandon(s)
	st.release()

	s2 := openWith(t, st.Storage, Options{SyncInterval: time.Hour})
	<-s2.Reconciled()
	took := done(t, s2)
	if callErr == nil && !took {
		t.Fatalf("acknowledged, but not there after the restart")
	}
	if k < 0 && !took {
		t.Fatal("without a crash the change is not there")
	}
	checkConsistent(t, s2)

	// a write session on the restarted store applies to the records what
	// the dead one left in the journal and moves the head; after that the
	// records alone (no journal up to the head, no snapshot) say the same
	mustCreate(t, s2, DomainInput{Domain: "after-restart.example.test"})
	if err := s2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := s2.readHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	abandon(s2)
	for seq := uint64(1); seq <= h.Seq; seq++ {
		_ = st.Storage.Delete(ctx, entryKey(seq))
	}
	if err := st.Storage.Store(ctx, headKey, []byte(fmt.Sprintf(`{"format":1,"seq":%d,"base":%d}`, h.Seq, h.Seq+1))); err != nil {
		t.Fatal(err)
	}
	if err := st.Storage.Delete(ctx, snapshotsDir); err != nil {
		t.Fatal(err)
	}
	s3 := openWith(t, st.Storage, Options{SyncInterval: time.Hour})
	<-s3.Reconciled()
	if done(t, s3) != took {
		t.Fatalf("the records alone say done=%v, the journal %v", !took, took)
	}
	if _, ok := s3.Lookup("after-restart.example.test"); !ok {
		t.Fatal("the records lack the write made after the restart")
	}
	checkConsistent(t, s3)
	return writes
}

// checkConsistent checks a store's invariants: every indexed domain has a
// readable record that says the same, names are unique, and every
// certificate a domain points to exists.
func checkConsistent(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	names := map[string]string{}
	var states [numDomainStates]int
	for _, e := range s.Entries() {
		d, err := s.GetDomain(ctx, e.DomainID)
		if err != nil {
			t.Fatalf("indexed domain %s: %v", e.DomainID, err)
		}
		if want := entryFor(d, e.Version); d.Domain != e.Name || d.CertificateID != e.CertificateID || *want != *e {
			t.Fatalf("index %+v, record %+v", e, d)
		}
		states[e.State()]++
		if other, dup := names[e.Name]; dup {
			t.Fatalf("%s and %s share the name %s", other, e.DomainID, e.Name)
		}
		names[e.Name] = e.DomainID
		if e.CertificateID != "" && !s.CertificateExists(e.CertificateID) {
			t.Fatalf("domain %s points to missing certificate %s", e.DomainID, e.CertificateID)
		}
	}
	if got := s.Stats().States; got != states {
		t.Fatalf("domains by state %v; the index says %v", got, states)
	}
	list, _, err := s.ListDomains(ctx, 100, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range list {
		if d.Damage != nil {
			t.Fatalf("damaged record after a crash: %+v", d.Damage)
		}
	}
}

var _ certmagic.Storage = (*crashStorage)(nil)
