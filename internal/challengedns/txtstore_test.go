package challengedns

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// newStore returns a TXTStore over a FileStorage in a temporary directory,
// and that storage.
func newStore(t testing.TB) (*TXTStore, *certmagic.FileStorage) {
	t.Helper()
	fs := &certmagic.FileStorage{Path: t.TempDir()}
	return &TXTStore{Storage: func() certmagic.Storage { return fs }}, fs
}

func TestTXTStore(t *testing.T) {
	ctx := context.Background()
	type step struct {
		op    string // "add", "remove"
		name  string
		value string
	}
	tests := []struct {
		name   string
		steps  []step
		lookup string
		want   []string
	}{
		{name: "missing", lookup: "x.acme.example.net", want: nil},
		{
			name:   "one value",
			steps:  []step{{"add", "x.acme.example.net", "v1"}},
			lookup: "x.acme.example.net", want: []string{"v1"},
		},
		{
			name:   "several values coexist",
			steps:  []step{{"add", "x.acme.example.net", "v1"}, {"add", "x.acme.example.net", "v2"}},
			lookup: "x.acme.example.net", want: []string{"v1", "v2"},
		},
		{
			name:   "adding twice keeps one",
			steps:  []step{{"add", "x.acme.example.net", "v1"}, {"add", "x.acme.example.net", "v1"}},
			lookup: "x.acme.example.net", want: []string{"v1"},
		},
		{
			name: "remove one of two",
			steps: []step{
				{"add", "x.acme.example.net", "v1"}, {"add", "x.acme.example.net", "v2"},
				{"remove", "x.acme.example.net", "v1"},
			},
			lookup: "x.acme.example.net", want: []string{"v2"},
		},
		{
			name:   "remove the last",
			steps:  []step{{"add", "x.acme.example.net", "v1"}, {"remove", "x.acme.example.net", "v1"}},
			lookup: "x.acme.example.net", want: nil,
		},
		{
			name:   "remove missing",
			steps:  []step{{"remove", "x.acme.example.net", "v1"}},
			lookup: "x.acme.example.net", want: nil,
		},
		{
			name:   "names are normalized",
			steps:  []step{{"add", "X.Acme.Example.NET.", "v1"}},
			lookup: "x.acme.example.net", want: []string{"v1"},
		},
		{
			name:   "names are separate",
			steps:  []step{{"add", "x.acme.example.net", "v1"}, {"add", "y.acme.example.net", "v2"}},
			lookup: "y.acme.example.net.", want: []string{"v2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t)
			for _, st := range tt.steps {
				var err error
				switch st.op {
				case "add":
					err = s.Add(ctx, st.name, st.value)
				case "remove":
					err = s.Remove(ctx, st.name, st.value)
				}
				if err != nil {
					t.Fatalf("%s(%s, %s): %v", st.op, st.name, st.value, err)
				}
			}
			got, err := s.Lookup(ctx, tt.lookup)
			if err != nil {
				t.Fatalf("Lookup: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Lookup = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTXTStoreFormat(t *testing.T) {
	ctx := context.Background()
	s, fs := newStore(t)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	if err := s.Add(ctx, "x.acme.example.net.", "v1"); err != nil {
		t.Fatal(err)
	}
	data, err := fs.Load(ctx, "domaincerts/dns/txt/x.acme.example.net")
	if err != nil {
		t.Fatalf("loading the documented key: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"values": []any{"v1"}, "expires": "2026-05-01T13:00:00Z"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("stored %s, want %v", data, want)
	}

	if err := s.Remove(ctx, "x.acme.example.net", "v1"); err != nil {
		t.Fatal(err)
	}
	if fs.Exists(ctx, "domaincerts/dns/txt/x.acme.example.net") {
		t.Error("key still exists after its last value was removed")
	}
}

func TestTXTStoreExpiry(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	now := time.Now()
	s.now = func() time.Time { return now }
	const name = "x.acme.example.net"

	if err := s.Add(ctx, name, "old"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(59 * time.Minute)
	if got, _ := s.Lookup(ctx, name); !slices.Equal(got, []string{"old"}) {
		t.Fatalf("after 59m: Lookup = %q, want [old]", got)
	}
	now = now.Add(time.Minute)
	if got, err := s.Lookup(ctx, name); err != nil || got != nil {
		t.Fatalf("after 1h: Lookup = %q, %v; want nil, nil", got, err)
	}
	if _, exists, _ := s.lookup(ctx, name); !exists {
		t.Error("an expired record should still exist (NODATA, not NXDOMAIN)")
	}
	// Adding to an expired record starts afresh.
	if err := s.Add(ctx, name, "new"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Lookup(ctx, name); !slices.Equal(got, []string{"new"}) {
		t.Fatalf("after re-Add: Lookup = %q, want [new]", got)
	}
	// Adding renews the whole record.
	now = now.Add(30 * time.Minute)
	if err := s.Add(ctx, name, "newer"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(45 * time.Minute)
	if got, _ := s.Lookup(ctx, name); !slices.Equal(got, []string{"new", "newer"}) {
		t.Fatalf("after renewal: Lookup = %q, want [new newer]", got)
	}
	// Removing from an expired record deletes it.
	now = now.Add(2 * time.Hour)
	if err := s.Remove(ctx, name, "other"); err != nil {
		t.Fatal(err)
	}
	if _, exists, _ := s.lookup(ctx, name); exists {
		t.Error("expired record not deleted by Remove")
	}
}

func TestTXTStoreErrors(t *testing.T) {
	ctx := context.Background()
	s, fs := newStore(t)
	for _, name := range []string{"", ".", "../../etc/passwd", "a/b.example", `a\b.example`, "a..b", strings.Repeat("a", 64) + ".example"} {
		if err := s.Add(ctx, name, "v"); err == nil {
			t.Errorf("Add(%q) = nil, want an error", name)
		}
		if _, err := s.Lookup(ctx, name); err == nil {
			t.Errorf("Lookup(%q) = nil error, want an error", name)
		}
	}
	if err := s.Add(ctx, "x.example", ""); err == nil {
		t.Error("Add of an empty value = nil, want an error")
	}
	if err := fs.Store(ctx, "domaincerts/dns/txt/bad.example", []byte("{")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, "bad.example"); err == nil || !strings.Contains(err.Error(), "decoding TXT record") {
		t.Errorf("Lookup of corrupt record = %v, want a decoding error", err)
	}
	for _, st := range []*TXTStore{nil, {}, {Storage: func() certmagic.Storage { return nil }}} {
		if _, err := st.Lookup(ctx, "x.example"); err == nil {
			t.Error("Lookup without storage = nil error")
		}
	}
}

// Two stores on one storage stand for two Caddy instances; concurrent Adds
// must not lose values.
func TestTXTStoreConcurrent(t *testing.T) {
	ctx := context.Background()
	a, fs := newStore(t)
	b := &TXTStore{Storage: func() certmagic.Storage { return fs }}
	const name = "x.acme.example.net"
	var wg sync.WaitGroup
	var want []string
	for i := range 6 {
		s := a
		if i%2 == 1 {
			s = b
		}
		v := fmt.Sprintf("v%d", i)
		want = append(want, v)
		wg.Go(func() {
			if err := s.Add(ctx, name, v); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := a.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("Lookup = %q, want %q", got, want)
	}
}
