package domainstore

import (
	"context"
	"fmt"

	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// fleetStorages are the storages the fleet tests run on: memory, and the
// file system with its lock files, as Caddy instances on one disk (or NFS)
// use it.
func fleetStorages(t *testing.T) map[string]func() certmagic.Storage {
	return map[string]func() certmagic.Storage{
		"memory": func() certmagic.Storage { return new(memstorage.Storage) },
		"file":   func() certmagic.Storage { return &certmagic.FileStorage{Path: t.TempDir()} },
	}
}

// openFleet opens n stores on one storage, as n Caddy instances would.
// They do not follow the journal on their own (a long sync interval), so
// that the tests show what the journal lock alone guarantees.
func openFleet(t *testing.T, st certmagic.Storage, n int) []*Store {
	t.Helper()
	fleet := make([]*Store, n)
	for i := range fleet {
		fleet[i] = openWith(t, st, Options{SyncInterval: time.Hour})
		<-fleet[i].Reconciled()
	}
	return fleet
}

// TestFleetNameUniqueness creates one name on three instances at once, 20
// times: exactly one create succeeds each time, and every instance ends up
// with the same domain for the name.
func TestFleetNameUniqueness(t *testing.T) {
	for kind, newStorage := range fleetStorages(t) {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			fleet := openFleet(t, newStorage(), 3)
			for round := range 20 {
				name := fmt.Sprintf("race-%d.example.test", round)
				var wg sync.WaitGroup
				ids := make([]string, len(fleet))
				errs := make([]error, len(fleet))
				for i, s := range fleet {
					wg.Add(1)
					go func() {
						defer wg.Done()
						d, err := s.CreateDomain(ctx, DomainInput{Domain: name})
						errs[i] = err
						if err == nil {
							ids[i] = d.ID
						}
					}()
				}
				wg.Wait()
				winner := ""
				for i, err := range errs {
					switch {
					case err == nil && winner != "":
						t.Fatalf("round %d: two creates of %s succeeded (%s, %s)", round, name, winner, ids[i])
					case err == nil:
						winner = ids[i]
					case dcerr.CodeOf(err) != dcerr.DomainExists:
						t.Fatalf("round %d: instance %d: %v; want DOMAIN_EXISTS", round, i, err)
					}
				}
				if winner == "" {
					t.Fatalf("round %d: no create succeeded: %v", round, errs)
				}
				for i, s := range fleet {
					if err := s.Sync(ctx); err != nil {
						t.Fatal(err)
					}
					if id, _ := s.DomainID(name); id != winner {
						t.Fatalf("round %d: instance %d has %q for %s; want %s", round, i, id, name, winner)
					}
				}
			}
		})
	}
}

// TestFleetCertInUse races a certificate's deletion on one instance with
// attaching it on another: never both succeed, so no domain points to a
// deleted certificate.
func TestFleetCertInUse(t *testing.T) {
	for kind, newStorage := range fleetStorages(t) {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			fleet := openFleet(t, newStorage(), 2)
			a, b := fleet[0], fleet[1]
			ca := testpki.NewCA(t, "Fleet CA")
			for round := range 10 {
				name := fmt.Sprintf("attach-%d.example.test", round)
				c := upload(t, a, ca.Issue(t, name))
				d, err := a.CreateDomain(ctx, DomainInput{Domain: name, CertificateID: c.ID})
				if err != nil {
					t.Fatal(err)
				}
				// b has not read the journal: its attach must still see c
				// (a created it) and d (ditto)
				if err := a.DetachCertificate(ctx, d.ID); err != nil {
					t.Fatal(err)
				}
				var attachErr, deleteErr error
				var wg sync.WaitGroup
				wg.Add(2)
				go func() {
					defer wg.Done()
					_, attachErr = b.UpdateDomain(ctx, d.ID, DomainPatch{CertificateID: &c.ID})
				}()
				go func() { defer wg.Done(); deleteErr = a.DeleteCertificate(ctx, c.ID) }()
				wg.Wait()
				switch {
				case attachErr == nil && deleteErr == nil:
					t.Fatalf("round %d: attach and delete both succeeded", round)
				case attachErr == nil && dcerr.CodeOf(deleteErr) != dcerr.CertInUse:
					t.Fatalf("round %d: delete: %v; want CERT_IN_USE", round, deleteErr)
				case deleteErr == nil && dcerr.CodeOf(attachErr) != dcerr.CertNotFound:
					t.Fatalf("round %d: attach: %v; want CERT_NOT_FOUND", round, attachErr)
				case attachErr != nil && deleteErr != nil:
					t.Fatalf("round %d: neither succeeded: attach %v, delete %v", round, attachErr, deleteErr)
				}
				for _, s := range fleet {
					if err := s.Sync(ctx); err != nil {
						t.Fatal(err)
					}
					e, _ := s.Lookup(name)
					if e.CertificateID != "" && !s.CertificateExists(e.CertificateID) {
						t.Fatalf("round %d: %s points to deleted certificate %s", round, name, e.CertificateID)
					}
				}
			}
		})
	}
}

// TestFleetPatchesConverge runs concurrent PATCHes of one domain on three
// instances: each applies to the record the one before left, and every
// instance ends with the same record.
func TestFleetPatchesConverge(t *testing.T) {
	ctx := context.Background()
	fleet := openFleet(t, new(memstorage.Storage), 3)
	d, err := fleet[0].CreateDomain(ctx, DomainInput{Domain: "patch.example.test", Metadata: "start"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, s := range fleet {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 10 {
				desc := fmt.Sprintf("instance %d, write %d", i, j)
				got, err := s.UpdateDomain(ctx, d.ID, DomainPatch{Description: &desc})
				if err != nil {
					t.Error(err)
					return
				}
				if got.Description != desc || got.Metadata != "start" {
					t.Errorf("PATCH answered %q / %q", got.Description, got.Metadata)
				}
			}
		}()
	}
	wg.Wait()
	var want string
	for i, s := range fleet {
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetDomain(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			want = got.Description
		} else if got.Description != want {
			t.Fatalf("instance %d says %q, instance 0 %q", i, got.Description, want)
		}
		if e, _ := s.Lookup("patch.example.test"); e.Version != fleet[0].domains[d.ID].Version {
			t.Fatalf("instance %d at version %d", i, e.Version)
		}
	}
}

// TestFleetFollow checks that instances pick up each other's changes on
// their own within the sync interval, and that reading an unknown domain
// or certificate by ID reads the journal first (read your writes through
// any instance).
func TestFleetFollow(t *testing.T) {
	ctx := context.Background()
	st := &opCounter{Storage: new(memstorage.Storage)}
	a := openWith(t, st, Options{SyncInterval: 50 * time.Millisecond})
	b := openWith(t, st, Options{SyncInterval: 50 * time.Millisecond})
	<-a.Reconciled()
	<-b.Reconciled()
	ca := testpki.NewCA(t, "Follow CA")
	c := upload(t, a, ca.Issue(t, "follow.example.test"))
	if _, err := b.GetCertificate(ctx, c.ID); err != nil {
		t.Fatalf("b cannot read a's new certificate: %v", err)
	}
	d, err := a.CreateDomain(ctx, DomainInput{Domain: "follow.example.test", CertificateID: c.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetDomain(ctx, d.ID); err != nil {
		t.Fatalf("b cannot read a's new domain: %v", err)
	}
	if err := b.DeleteDomain(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if _, ok := a.Lookup("follow.example.test"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a still serves the domain b deleted 2s ago")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// idle: a few small reads per look, no listing
	time.Sleep(100 * time.Millisecond)
	st.reset()
	time.Sleep(time.Second)
	loads, lists, writes := st.counts()
	looks := 2 * int64(time.Second/(50*time.Millisecond)) // two instances
	if lists != 0 || writes != 0 || loads > 2*looks+4 || loads < looks/2 {
		t.Fatalf("idle second: %d loads, %d lists, %d writes; want about %d loads (two per look) and nothing else", loads, lists, writes, 2*looks)
	}
}

// TestFleetGapRecovery lets an instance fall behind the compacted journal:
// it recovers with one listing and ends with the same state as the writer.
func TestFleetGapRecovery(t *testing.T) {
	defer func(r, c uint64) { journalRetain, compactStep = r, c }(journalRetain, compactStep)
	journalRetain, compactStep = 5, 100
	ctx := context.Background()
	st := new(memstorage.Storage)
	fleet := openFleet(t, st, 2)
	a, b := fleet[0], fleet[1]
	var ids []string
	for i := range 30 {
		d, err := a.CreateDomain(ctx, DomainInput{Domain: fmt.Sprintf("gap-%d.example.test", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.ID)
	}
	for _, id := range ids[:10] {
		if err := a.DeleteDomain(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.writeSnapshot(ctx, false); err != nil {
		t.Fatal(err)
	}
	// one more write compacts up to the snapshot
	if _, err := a.CreateDomain(ctx, DomainInput{Domain: "last.example.test"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(ctx); err != nil { // the session that wrote it has ended
		t.Fatal(err)
	}
	h, err := a.readHead(ctx)
	if err != nil || h.Base <= 2 {
		t.Fatalf("head %+v, %v; want entries compacted", h, err)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatalf("b's recovery: %v", err)
	}
	if got, want := b.Entries(), a.Entries(); len(got) != len(want) || len(got) != 21 {
		t.Fatalf("b has %d domains, a %d; want 21", len(got), len(want))
	}
	for _, id := range ids[:10] {
		if _, err := b.GetDomain(ctx, id); dcerr.CodeOf(err) != dcerr.NotFound {
			t.Fatalf("deleted %s: %v", id, err)
		}
	}
	if _, ok := b.Lookup("last.example.test"); !ok {
		t.Fatal("b lacks the newest domain")
	}
}

// opCounter counts storage operations.
type opCounter struct {
	certmagic.Storage
	loads, lists, writes atomic.Int64
}

func (c *opCounter) Load(ctx context.Context, key string) ([]byte, error) {
	c.loads.Add(1)
	return c.Storage.Load(ctx, key)
}

func (c *opCounter) List(ctx context.Context, p string, r bool) ([]string, error) {
	c.lists.Add(1)
	return c.Storage.List(ctx, p, r)
}

func (c *opCounter) Store(ctx context.Context, key string, v []byte) error {
	c.writes.Add(1)
	return c.Storage.Store(ctx, key, v)
}

func (c *opCounter) Delete(ctx context.Context, key string) error {
	c.writes.Add(1)
	return c.Storage.Delete(ctx, key)
}

func (c *opCounter) reset() { c.loads.Store(0); c.lists.Store(0); c.writes.Store(0) }

func (c *opCounter) counts() (loads, lists, writes int64) {
	return c.loads.Load(), c.lists.Load(), c.writes.Load()
}

func (c *opCounter) String() string { return "counter:" + fmt.Sprint(c.Storage) }
