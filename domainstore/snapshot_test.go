package domainstore

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// countingStorage counts loads of domain records and of journal entries.
type countingStorage struct {
	certmagic.Storage
	domainLoads, entryLoads atomic.Int64
}

func (c *countingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	switch {
	case strings.HasPrefix(key, domainsDir+"/"):
		c.domainLoads.Add(1)
	case strings.HasPrefix(key, journalDir+"/") && key != headKey:
		c.entryLoads.Add(1)
	}
	return c.Storage.Load(ctx, key)
}

func openOn(t testing.TB, st certmagic.Storage) *Store {
	t.Helper()
	return openWith(t, st, Options{})
}

func openWith(t testing.TB, st certmagic.Storage, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), st, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// abandon stops a store without its closing snapshot, as a crash would.
func abandon(s *Store) {
	s.closeOnce.Do(func() {
		close(s.closing)
		<-s.done
		<-s.snapDone
	})
}

func TestSnapshotStartup(t *testing.T) {
	ctx := context.Background()
	st := &countingStorage{Storage: new(memstorage.Storage)}
	s := openOn(t, st)
	ca := testpki.NewCA(t, "Snapshot CA")
	leaf := ca.Issue(t, "*.example.test")
	c, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < 20; i++ {
		d, err := s.CreateDomain(ctx, DomainInput{Domain: fmt.Sprintf("d%d.example.test", i), CertificateID: c.ID})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.ID)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	t.Run("snapshot current: no record read", func(t *testing.T) {
		st.domainLoads.Store(0)
		st.entryLoads.Store(0)
		s2 := openOn(t, st)
		<-s2.Reconciled()
		if n := st.domainLoads.Load(); n != 0 {
			t.Fatalf("start-up read %d domain records; want 0", n)
		}
		if n := st.entryLoads.Load(); n != 1 {
			t.Fatalf("start-up read %d journal entries; want 1 (to find there is none past the snapshot)", n)
		}
		if d, n := s2.Len(); d != 20 || n != 1 {
			t.Fatalf("%d domains, %d certificates; want 20, 1", d, n)
		}
		if e, ok := s2.Lookup("d7.example.test"); !ok || e.CertificateID != c.ID {
			t.Fatalf("Lookup = %+v, %v", e, ok)
		}
	})

	t.Run("changes after the snapshot: read from the journal", func(t *testing.T) {
		other := openOn(t, st) // another instance on the same storage
		<-other.Reconciled()
		if err := other.DetachCertificate(ctx, ids[3]); err != nil {
			t.Fatal(err)
		}
		if err := other.DeleteDomain(ctx, ids[4]); err != nil {
			t.Fatal(err)
		}
		abandon(other) // no closing snapshot
		st.domainLoads.Store(0)
		s3 := openOn(t, st)
		<-s3.Reconciled()
		if n := st.domainLoads.Load(); n != 0 {
			t.Fatalf("catching up read %d domain records; want 0 (the journal has them)", n)
		}
		if e, ok := s3.Lookup("d3.example.test"); !ok || e.CertificateID != "" {
			t.Fatalf("changed record not seen: %+v, %v", e, ok)
		}
		if _, ok := s3.Lookup("d4.example.test"); ok {
			t.Fatal("deleted domain still indexed")
		}
	})

	t.Run("no snapshot: records listed, newer version wins", func(t *testing.T) {
		d, err := s.GetDomain(ctx, ids[5])
		if err != nil {
			t.Fatal(err)
		}
		// a record version left behind as if the delete after a write failed
		old := *d
		old.CertificateID = ""
		if err := st.Store(ctx, domainRecordKey(ids[5], 1), []byte(mustJSON(&old))); err != nil {
			t.Fatal(err)
		}
		if err := st.Delete(ctx, snapshotsDir); err != nil {
			t.Fatal(err)
		}
		st.domainLoads.Store(0)
		s4 := openOn(t, st)
		<-s4.Reconciled()
		if e, _ := s4.Lookup("d5.example.test"); e == nil || e.CertificateID != c.ID {
			t.Fatalf("older version won: %+v", e)
		}
		if _, err := st.Storage.Load(ctx, domainRecordKey(ids[5], 1)); err == nil {
			t.Fatal("stale version not deleted")
		}
		if d, _ := s4.Len(); d != 19 || st.domainLoads.Load() != 19 {
			t.Fatalf("%d domains, %d records read; want 19, 19", d, st.domainLoads.Load())
		}
	})

	t.Run("corrupt snapshot: an older one, else every record", func(t *testing.T) {
		s5 := openOn(t, st)
		<-s5.Reconciled()
		if err := s5.writeSnapshot(ctx, false); err != nil {
			t.Fatal(err)
		}
		seqs, err := s5.listSnapshots(ctx)
		if err != nil || len(seqs) != 1 {
			t.Fatalf("snapshots %v, %v", seqs, err)
		}
		if err := st.Store(ctx, snapshotKey(seqs[0]), []byte(snapshotHeader+" 1\nd rd_x 1 a.test - m\n")); err != nil {
			t.Fatal(err)
		}
		st.domainLoads.Store(0)
		s6 := openOn(t, st)
		if d, _ := s6.Len(); d != 19 || st.domainLoads.Load() != 19 {
			t.Fatalf("%d domains, %d records read; want 19, 19", d, st.domainLoads.Load())
		}
	})
}

// TestLegacyLayout starts on storage written by an earlier version of the
// plugin (per-record version counters, the old snapshot, no journal): the
// records are listed once and the journal starts past their versions.
func TestLegacyLayout(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	legacy := []*Domain{
		{ID: "rd_01m8djch0z1t3s0se2ynhqbc0m", Domain: "a.example.test"},
		{ID: "rd_01m8djch11e8wy11by9eertygf", Domain: "b.example.test"},
		// a duplicate name, as the earlier version could leave behind
		{ID: "rd_01m8djch22e8wy11by9eertygf", Domain: "a.example.test"},
	}
	for i, d := range legacy {
		if err := st.Store(ctx, domainRecordKey(d.ID, uint64(i+5)), []byte(mustJSON(d))); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Store(ctx, legacySnapshotKey, []byte("domaincerts-index 1\n")); err != nil {
		t.Fatal(err)
	}
	s := openOn(t, st)
	// of two records with one name, the higher version keeps it (as when
	// the journal applies a later write), the other is listed as damaged
	if e, ok := s.Lookup("a.example.test"); !ok || e.DomainID != legacy[2].ID {
		t.Fatalf("a.example.test = %+v; want the record at the higher version", e)
	}
	if _, err := s.GetDomain(ctx, legacy[0].ID); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("the duplicate reads as %v; want RECORD_DAMAGED", err)
	}
	list, _, err := s.ListDomains(ctx, 10, "")
	if err != nil || len(list) != 3 || list[2].Damage == nil {
		t.Fatalf("list %v, %v; want 3 items, the oldest damaged", list, err)
	}
	if err := s.DeleteDomain(ctx, legacy[0].ID); err != nil {
		t.Fatalf("deleting the duplicate: %v", err)
	}
	d, err := s.CreateDomain(ctx, DomainInput{Domain: "c.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Lookup("c.example.test"); e.Version <= 7 {
		t.Fatalf("new record at version %d; want past the legacy versions", e.Version)
	}
	if _, err := st.Load(ctx, legacySnapshotKey); err == nil {
		t.Fatal("the legacy snapshot was not removed")
	}
	s.Close()
	s2 := openOn(t, st)
	if got, err := s2.GetDomain(ctx, d.ID); err != nil || got.Domain != "c.example.test" {
		t.Fatalf("after restart: %v, %v", got, err)
	}
	if n, _ := s2.Len(); n != 3 {
		t.Fatalf("%d domains after restart; want 3", n)
	}
}

func TestDecodeSnapshot(t *testing.T) {
	const (
		d1 = "rd_01m8djch0z1t3s0se2ynhqbc0m"
		d2 = "rd_01m8djch11e8wy11by9eertygf"
		c1 = "cert_01m8djch0ss9fesqghxx6mv9mk"
	)
	h := snapshotHeader + " 2a\n"
	tests := []struct {
		name, text string
		ok         bool
		domains    int
	}{
		{"empty", h, true, 0},
		{"two domains and a certificate", h + "d " + d2 + " 1 b.test - m\nd " + d1 + " 3 a.test " + c1 + " u\nc " + c1 + " 2\n", true, 2},
		{"damaged record", h + "x " + d1 + " 3 a.test reason with spaces\n", true, 0},
		{"damaged record without name", h + "x " + c1 + " 3 - gone\n", true, 0},
		{"old format", "domaincerts-index 1\n", false, 0},
		{"no position", snapshotHeader + "\n", false, 0},
		{"bad position", snapshotHeader + " zz\n", false, 0},
		{"unknown kind", h + "q " + d1 + "\n", false, 0},
		{"bad domain id", h + "d rd_x 1 a.test - m\n", false, 0},
		{"bad version", h + "d " + d1 + " x a.test - m\n", false, 0},
		{"bad name", h + "d " + d1 + " 1 A..test - m\n", false, 0},
		{"bad managed flag", h + "d " + d1 + " 1 a.test - y\n", false, 0},
		{"bad certificate id", h + "d " + d1 + " 1 a.test cert_x m\n", false, 0},
		{"short line", h + "d " + d1 + " 1 a.test\n", false, 0},
		{"same domain twice", h + "d " + d1 + " 1 a.test - m\nd " + d1 + " 2 b.test - m\n", false, 0},
		{"same name twice", h + "d " + d1 + " 1 a.test - m\nd " + d2 + " 2 a.test - m\n", false, 0},
		{"same certificate twice", h + "c " + c1 + " 1\nc " + c1 + " 2\n", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, err := decodeSnapshot([]byte(tt.text))
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v; want ok=%v", err, tt.ok)
			}
			if err == nil {
				if snap.seq != 0x2a {
					t.Fatalf("seq = %d", snap.seq)
				}
				if len(snap.domains) != tt.domains {
					t.Fatalf("%d domains; want %d", len(snap.domains), tt.domains)
				}
				for i := 1; i < len(snap.domains); i++ {
					if snap.domains[i-1].DomainID >= snap.domains[i].DomainID {
						t.Fatal("domains not sorted")
					}
				}
			}
		})
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	f.Add([]byte(snapshotHeader + " 0\n"))
	f.Add((&snapshot{seq: 9, domains: []*Entry{
		{DomainID: "rd_01m8djch0z1t3s0se2ynhqbc0m", Version: 3, Name: "a.example.test", CertificateID: "cert_01m8djch0ss9fesqghxx6mv9mk"},
		{DomainID: "rd_01m8djch11e8wy11by9eertygf", Version: 1, Name: "*.example.test", Managed: true},
	}, certs: []certVersion{{"cert_01m8djch0ss9fesqghxx6mv9mk", certMeta{version: 2, notBefore: 1700000000, notAfter: 1707776000}},
		{"cert_01m8djch0ss9fesqghxx6mv9mz", certMeta{version: 5}},
		{"cert_01m8djch0ss9fesqghxx6mv9n0", certMeta{version: 6, notBefore: -5, notAfter: 1707776000, managed: true}}},
		damaged: []*Damaged{{ID: "rd_01m8djch22e8wy11by9eertygf", Name: "b.example.test", Reason: "truncated", version: 4}},
	}).encode())
	f.Add([]byte("domaincerts-index 1\nrd_x 1 a.test - m\n"))
	f.Add([]byte("domaincerts-index 2 5\nc cert_01m8djch0ss9fesqghxx6mv9mk 3\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		snap, err := decodeSnapshot(b)
		if err != nil {
			return
		}
		for _, d := range snap.damaged {
			if strings.Contains(d.Reason, "\n") {
				t.Fatalf("reason %q holds a newline", d.Reason)
			}
		}
		again, err := decodeSnapshot(snap.encode())
		if err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if again.seq != snap.seq || len(again.domains) != len(snap.domains) || len(again.certs) != len(snap.certs) || len(again.damaged) != len(snap.damaged) {
			t.Fatalf("round trip changed the counts")
		}
		for i, e := range snap.domains {
			if *again.domains[i] != *e {
				t.Fatalf("round trip changed %+v to %+v", e, again.domains[i])
			}
		}
		for i, c := range snap.certs {
			if again.certs[i] != c {
				t.Fatalf("round trip changed %+v to %+v", c, again.certs[i])
			}
		}
	})
}

// benchDomains are the store sizes of BenchmarkOpen and
// BenchmarkIndexMemory.
var benchDomains = []int{100_000, 1_000_000}

// storageWithDomains returns memory storage holding n domains, their
// journal and the index snapshot a clean shutdown writes.
func storageWithDomains(b *testing.B, n int) *memstorage.Storage {
	b.Helper()
	return storageFilledBy(b, func(s *Store) { createDomains(b, s, n, "customer-%d.example.test") })
}

// storageFilledBy returns memory storage after fill wrote to a store on
// it and the store shut down cleanly (leaving its index snapshot).
func storageFilledBy(b *testing.B, fill func(*Store)) *memstorage.Storage {
	b.Helper()
	st := new(memstorage.Storage)
	s, err := Open(context.Background(), st, Options{})
	if err != nil {
		b.Fatal(err)
	}
	fill(s)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	return st
}

// createDomains creates n managed domains named by format, many writes at
// a time as an API under load would.
func createDomains(tb testing.TB, s *Store, n int, format string) {
	tb.Helper()
	inParallel(tb, n, func(i int) error {
		_, err := s.CreateDomain(context.Background(), DomainInput{Domain: fmt.Sprintf(format, i)})
		return err
	})
}

// inParallel calls fn for 0..n-1 from 64 goroutines and fails tb on the
// first error.
func inParallel(tb testing.TB, n int, fn func(i int) error) {
	tb.Helper()
	const workers = 64
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := w; i < n; i += workers {
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			tb.Fatal(err)
		}
	}
}

// storageWithUploads is storageWithDomains with an uploaded certificate
// attached to each domain, as an edge of customer-uploaded certificates
// has.
func storageWithUploads(b *testing.B, n int) *memstorage.Storage {
	b.Helper()
	ca := testpki.NewCA(b, "Uploads CA")
	return storageFilledBy(b, func(s *Store) {
		ctx := context.Background()
		inParallel(b, n, func(i int) error {
			name := fmt.Sprintf("upload-%d.example.test", i)
			leaf := ca.Issue(b, name)
			c, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
			if err != nil {
				return err
			}
			_, err = s.CreateDomain(ctx, DomainInput{Domain: name, CertificateID: c.ID})
			return err
		})
	})
}

// BenchmarkOpen measures start-up with 100,000 and 1,000,000 domains in
// memory storage, with a current snapshot and without one.
func BenchmarkOpen(b *testing.B) {
	ctx := context.Background()
	for _, n := range benchDomains {
		var st *memstorage.Storage // built by the first sub-benchmark that runs
		storage := func(b *testing.B) *memstorage.Storage {
			if st == nil {
				st = storageWithDomains(b, n)
			}
			return st
		}
		b.Run(fmt.Sprintf("domains=%d/snapshot", n), func(b *testing.B) {
			st := storage(b)
			for b.Loop() {
				s, err := Open(ctx, st, Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				<-s.Reconciled()
				abandon(s)
				b.StartTimer()
			}
		})
		b.Run(fmt.Sprintf("domains=%d/no-snapshot", n), func(b *testing.B) {
			st := storage(b)
			snaps := map[string][]byte{}
			keys, _ := st.List(ctx, snapshotsDir, false)
			for _, k := range keys {
				snaps[k], _ = st.Load(ctx, k)
			}
			_ = st.Delete(ctx, snapshotsDir)
			defer func() {
				for k, v := range snaps {
					_ = st.Store(ctx, k, v)
				}
			}()
			for b.Loop() {
				s, err := Open(ctx, st, Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				abandon(s)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkIndexMemory reports the heap bytes per domain that a loaded
// store keeps (index entry, maps, sorted IDs) at 100,000 and 1,000,000
// domains, and at 100,000 domains with an uploaded certificate each, and
// how many of them the garbage collector scans in every
// cycle (scan-bytes/domain: memory that holds pointers), which is what a
// large store costs a busy server in GC work.
func BenchmarkIndexMemory(b *testing.B) {
	ctx := context.Background()
	type variant struct {
		name    string
		n       int
		storage func(*testing.B, int) *memstorage.Storage
	}
	var variants []variant
	for _, n := range benchDomains {
		variants = append(variants, variant{fmt.Sprintf("domains=%d", n), n, storageWithDomains})
	}
	// each domain with its own uploaded certificate (the records, the
	// maps and the expiry index of a certificate per domain)
	variants = append(variants, variant{"domains=100000/uploaded", 100_000, storageWithUploads})
	for _, v := range variants {
		n := v.n
		b.Run(v.name, func(b *testing.B) {
			st := v.storage(b, n) // b.Loop starts the timer afresh
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				scanBefore := scannableHeap()
				s, err := Open(ctx, st, Options{})
				if err != nil {
					b.Fatal(err)
				}
				<-s.Reconciled() // as a running server holds it
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(n), "bytes/domain")
				b.ReportMetric(float64(int64(scannableHeap())-int64(scanBefore))/float64(n), "scan-bytes/domain")
				abandon(s)
				runtime.KeepAlive(s)
			}
		})
	}
}

// scannableHeap returns the bytes of the heap that the garbage collector
// scans (after the last cycle).
func scannableHeap() uint64 {
	sample := []metrics.Sample{{Name: "/gc/scan/heap:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}
