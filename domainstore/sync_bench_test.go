package domainstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// BenchmarkIdleSync measures what an idle instance pays per look at the
// journal (every sync_interval) with 1,000, 100,000 and 1,000,000 domains
// in memory storage, and 1,000 and 100,000 on the file system: storage
// operations and time. It must not grow with the domains.
func BenchmarkIdleSync(b *testing.B) {
	ctx := context.Background()
	cases := []struct {
		kind string
		n    int
	}{{"memory", 1000}, {"memory", 100_000}, {"memory", 1_000_000}, {"file", 1000}, {"file", 100_000}}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/domains=%d", c.kind, c.n), func(b *testing.B) {
			var base certmagic.Storage
			if c.kind == "memory" {
				base = storageWithDomains(b, c.n)
			} else {
				base = &certmagic.FileStorage{Path: b.TempDir()}
				w := openWith(b, base, Options{})
				createDomains(b, w, c.n, "d%d.example.test")
				w.Close()
			}
			st := &opCounter{Storage: base}
			s := openWith(b, st, Options{SyncInterval: time.Hour})
			<-s.Reconciled()
			st.reset()
			for b.Loop() {
				if err := s.Sync(ctx); err != nil {
					b.Fatal(err)
				}
			}
			loads, lists, writes := st.counts()
			b.ReportMetric(float64(loads)/float64(b.N), "loads/sync")
			b.ReportMetric(float64(lists)/float64(b.N), "lists/sync")
			b.ReportMetric(float64(writes)/float64(b.N), "writes/sync")
		})
	}
}

// BenchmarkCatchUp measures how long an instance takes to read 10,000
// changes that another instance made (one journal entry each, the worst
// case: writes that come one at a time), on memory storage and on the file
// system.
func BenchmarkCatchUp(b *testing.B) {
	const changes = 10_000
	storages := map[string]func(b *testing.B) certmagic.Storage{
		"memory": func(b *testing.B) certmagic.Storage { return storageWithDomains(b, 0) },
		"file":   func(b *testing.B) certmagic.Storage { return &certmagic.FileStorage{Path: b.TempDir()} },
	}
	for _, kind := range []string{"memory", "file"} {
		b.Run(kind, func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				b.StopTimer()
				st := storages[kind](b)
				writer := openWith(b, st, Options{SyncInterval: time.Hour})
				reader := openWith(b, st, Options{SyncInterval: time.Hour})
				<-reader.Reconciled()
				for i := range changes {
					if _, err := writer.CreateDomain(ctx, DomainInput{Domain: fmt.Sprintf("c%d.example.test", i)}); err != nil {
						b.Fatal(err)
					}
				}
				before := reader.position()
				b.StartTimer()
				if err := reader.Sync(ctx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if got := reader.position() - before; got < changes {
					b.Fatalf("read %d entries; want %d", got, changes)
				}
				if d, _ := reader.Len(); d != changes {
					b.Fatalf("%d domains after catching up", d)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkCreateDomain measures writes through the journal on the file
// system: one client at a time, and 8 clients at once (their writes share
// journal entries). ns/op is the time per write for the whole group.
func BenchmarkCreateDomain(b *testing.B) {
	for _, clients := range []int{1, 8} {
		b.Run(fmt.Sprintf("file/clients=%d", clients), func(b *testing.B) {
			s := openWith(b, &certmagic.FileStorage{Path: b.TempDir()}, Options{})
			ctx := context.Background()
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						if _, err := s.CreateDomain(ctx, DomainInput{Domain: fmt.Sprintf("d%d.example.test", i)}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}
