package sniindex

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
)

func TestLookup(t *testing.T) {
	ix := New[string]()
	ix.Set("a.example.com", "exact-a")
	ix.Set("*.example.com", "wild")
	ix.Set("Example.NET.", "net")
	ix.Set("*.b.example.com", "wild-b")

	tests := []struct {
		sni    string
		want   string
		wantOK bool
	}{
		{"a.example.com", "exact-a", true},
		{"A.EXAMPLE.COM", "exact-a", true},
		{"a.example.com.", "exact-a", true},
		{"c.example.com", "wild", true},
		{"example.com", "", false},
		{"x.y.example.com", "", false},
		{"x.b.example.com", "wild-b", true},
		{"b.example.com", "wild", true},
		{"example.net", "net", true},
		{"", "", false},
		{".", "", false},
		{"com", "", false},
		{".example.com", "", false},
		{"*.example.com", "wild", true}, // a literal "*" label is just a label
	}
	for _, tt := range tests {
		t.Run(tt.sni, func(t *testing.T) {
			got, ok := ix.Lookup(tt.sni)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Lookup(%q) = %q, %v; want %q, %v", tt.sni, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestSetGetDelete(t *testing.T) {
	ix := New[int]()
	ix.Set("*.example.com", 1)
	ix.Set("example.com", 2)
	if v, ok := ix.Get("*.example.com"); !ok || v != 1 {
		t.Fatalf("Get wildcard = %d, %v", v, ok)
	}
	if v, ok := ix.Get("example.com"); !ok || v != 2 {
		t.Fatalf("Get exact = %d, %v", v, ok)
	}
	if ix.Len() != 2 {
		t.Fatalf("Len = %d, want 2", ix.Len())
	}
	ix.Set("example.com", 3)
	if v, _ := ix.Get("example.com"); v != 3 {
		t.Fatalf("replaced value = %d, want 3", v)
	}
	ix.Delete("*.example.com")
	ix.Delete("missing.example.com")
	if _, ok := ix.Lookup("a.example.com"); ok {
		t.Fatal("wildcard still matches after Delete")
	}
	if ix.Len() != 1 {
		t.Fatalf("Len = %d, want 1", ix.Len())
	}
}

func TestConcurrentReadWrite(t *testing.T) {
	ix := New[int]()
	const n = 2000
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				ix.Set(fmt.Sprintf("d%d.example.com", i), i)
			}
		}(w)
	}
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				if v, ok := ix.Lookup(fmt.Sprintf("d%d.example.com", i)); ok && v != i {
					t.Errorf("Lookup d%d = %d", i, v)
				}
			}
		}()
	}
	wg.Wait()
	if ix.Len() != n {
		t.Fatalf("Len = %d, want %d", ix.Len(), n)
	}
}

func TestLookupHitDoesNotAllocate(t *testing.T) {
	ix := New[*int]()
	v := 1
	ix.Set("a.example.com", &v)
	ix.Set("*.example.com", &v)
	for _, sni := range []string{"a.example.com", "b.example.com"} {
		allocs := testing.AllocsPerRun(100, func() { ix.Lookup(sni) })
		if allocs != 0 {
			t.Errorf("Lookup(%q) allocates %v times; want 0", sni, allocs)
		}
	}
}

func fill(b *testing.B, n int) (*Index[*int], []string) {
	ix := New[*int]()
	names := make([]string, n)
	v := 1
	for i := range names {
		names[i] = fmt.Sprintf("customer-%d.example.com", i)
		ix.Set(names[i], &v)
	}
	return ix, names
}

// BenchmarkLookup measures a hit among 100,000 exact names, as the
// handshake path does it.
func BenchmarkLookup(b *testing.B) {
	ix, names := fill(b, 100_000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := ix.Lookup(names[i%len(names)]); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkLookupWildcard measures a wildcard hit (exact miss first).
func BenchmarkLookupWildcard(b *testing.B) {
	ix, _ := fill(b, 100_000)
	v := 2
	ix.Set("*.tenant.example.com", &v)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := ix.Lookup("app.tenant.example.com"); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkLookupParallel measures hits from all cores.
func BenchmarkLookupParallel(b *testing.B) {
	ix, names := fill(b, 100_000)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			ix.Lookup(names[i%len(names)])
			i++
		}
	})
}

// BenchmarkSet measures replacing one entry in a 1,000,000-name index.
func BenchmarkSet(b *testing.B) {
	ix, names := fill(b, 1_000_000)
	v := 3
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ix.Set(names[i%len(names)], &v)
	}
}

// BenchmarkMemory reports the heap bytes per name at 100,000 names.
func BenchmarkMemory(b *testing.B) {
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		ix, names := fill(b, 100_000)
		runtime.GC()
		runtime.ReadMemStats(&after)
		// names are counted: the index keeps the key strings
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(len(names)), "bytes/name")
		runtime.KeepAlive(ix)
	}
}

func TestNormalizeFoldsASCIIOnly(t *testing.T) {
	for in, want := range map[string]string{
		"App.Example.COM.":      "app.example.com",
		"app.example.com":       "app.example.com",
		"\u212aelvin.example":   "\u212aelvin.example", // the KELVIN SIGN is not a K
		"ÄPFEL.example":         "Äpfel.example",
		"xn--bcher-kva.EXAMPLE": "xn--bcher-kva.example",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
	ix := New[int]()
	ix.Set("kelvin.example", 1)
	if _, ok := ix.Lookup("\u212aelvin.example"); ok {
		t.Errorf("a server name with the KELVIN SIGN matched kelvin.example")
	}
}
