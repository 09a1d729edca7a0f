package sealedstorage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// newFunc returns a fresh, empty storage under test and the storage it
// wraps (the storage itself when it wraps nothing).
type newFunc func(t *testing.T) (st, inner certmagic.Storage)

// TestContract runs the storage contract against plain FileStorage, to show
// the suite is right, and against the sealed storage over FileStorage in
// its configurations.
func TestContract(t *testing.T) {
	tests := []struct {
		name string
		new  newFunc
	}{
		{"FileStorage", func(t *testing.T) (certmagic.Storage, certmagic.Storage) {
			fs := &certmagic.FileStorage{Path: t.TempDir()}
			return fs, fs
		}},
		{"sealed", sealedOver(Config{})},
		{"sealed seal_all", sealedOver(Config{SealAll: true})},
		{"sealed allow_unsealed", sealedOver(Config{AllowUnsealed: true})},
		{"sealed rotated", sealedOver(Config{Keys: [][]byte{key(2), key(1)}})},
		{"sealed over storage without TryLock", func(t *testing.T) (certmagic.Storage, certmagic.Storage) {
			inner := noTryLock{&certmagic.FileStorage{Path: t.TempDir()}}
			return mustNew(t, inner, Config{}).CertMagic(), inner
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runContract(t, tt.new) })
	}
}

func sealedOver(cfg Config) newFunc {
	return func(t *testing.T) (certmagic.Storage, certmagic.Storage) {
		inner := &certmagic.FileStorage{Path: t.TempDir()}
		return mustNew(t, inner, cfg).CertMagic(), inner
	}
}

// noTryLock hides FileStorage's TryLock.
type noTryLock struct{ certmagic.Storage }

func runContract(t *testing.T, newStorage newFunc) {
	ctx := context.Background()

	t.Run("round trip", func(t *testing.T) {
		st, _ := newStorage(t)
		values := map[string][]byte{
			"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.key":  []byte("-----BEGIN EC PRIVATE KEY-----\nx\n-----END EC PRIVATE KEY-----\n"),
			"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt":  []byte("-----BEGIN CERTIFICATE-----\n"),
			"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.json": []byte(`{"sans":["example.com"]}`),
			"stek/stek.bin":                   bytes.Repeat([]byte{0xA5}, 96),
			"ech/configs/1/key.bin":           {1, 2, 3},
			"empty.key":                       {},
			"empty.json":                      {},
			"looks-sealed.json":               []byte("\x89DCS\x01 a value that begins like an envelope"),
			"short-magic.json":                {0x89},
			"rw_test_123":                     bytes.Repeat([]byte{7}, 10240),
			"domaincerts/certificates/c1.key": []byte("k"),
		}
		for k, v := range values {
			if err := st.Store(ctx, k, v); err != nil {
				t.Fatalf("Store(%q): %v", k, err)
			}
		}
		for k, v := range values {
			got, err := st.Load(ctx, k)
			if err != nil {
				t.Fatalf("Load(%q): %v", k, err)
			}
			if !bytes.Equal(got, v) {
				t.Fatalf("Load(%q) = %q, want %q", k, got, v)
			}
		}
	})

	t.Run("overwrite", func(t *testing.T) {
		st, _ := newStorage(t)
		for _, k := range []string{"a/b.key", "a/b.json"} {
			for _, v := range []string{"first", "second, longer", "3"} {
				if err := st.Store(ctx, k, []byte(v)); err != nil {
					t.Fatal(err)
				}
				got, err := st.Load(ctx, k)
				if err != nil || string(got) != v {
					t.Fatalf("Load(%q) = %q, %v; want %q", k, got, err, v)
				}
			}
		}
	})

	t.Run("missing", func(t *testing.T) {
		st, _ := newStorage(t)
		if err := st.Store(ctx, "present/x.key", []byte("x")); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"missing.key", "missing.json", "present/missing.key", "nodir/x/y.key"} {
			if _, err := st.Load(ctx, k); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Load(%q) error = %v, want fs.ErrNotExist", k, err)
			}
			if _, err := st.Stat(ctx, k); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Stat(%q) error = %v, want fs.ErrNotExist", k, err)
			}
			if st.Exists(ctx, k) {
				t.Errorf("Exists(%q) = true", k)
			}
			if err := st.Delete(ctx, k); err != nil {
				t.Errorf("Delete(%q) = %v, want nil", k, err)
			}
		}
		for _, recursive := range []bool{false, true} {
			if _, err := st.List(ctx, "nodir", recursive); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("List(nodir, %v) error = %v, want fs.ErrNotExist", recursive, err)
			}
		}
	})

	t.Run("delete", func(t *testing.T) {
		st, _ := newStorage(t)
		keys := []string{"d/a/x.key", "d/a/y.json", "d/a/sub/z.key", "d/b.key"}
		for _, k := range keys {
			if err := st.Store(ctx, k, []byte(k)); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Delete(ctx, "d/b.key"); err != nil {
			t.Fatal(err)
		}
		if st.Exists(ctx, "d/b.key") {
			t.Fatal("d/b.key exists after Delete")
		}
		if err := st.Delete(ctx, "d/a"); err != nil {
			t.Fatal(err)
		}
		for _, k := range append(keys, "d/a", "d/a/sub") {
			if st.Exists(ctx, k) {
				t.Errorf("%s exists after Delete of its prefix d/a", k)
			}
			if _, err := st.Load(ctx, k); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Load(%q) after Delete: %v", k, err)
			}
		}
		if err := st.Delete(ctx, "d/a"); err != nil {
			t.Fatalf("second Delete = %v, want nil", err)
		}
	})

	t.Run("list", func(t *testing.T) {
		st, _ := newStorage(t)
		for _, k := range []string{"l/x.key", "l/y.json", "l/sub/z.key", "l/sub/deeper/w.crt", "other/o.key"} {
			if err := st.Store(ctx, k, []byte("v")); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			prefix    string
			recursive bool
			want      []string
		}{
			{"l", false, []string{"l/sub", "l/x.key", "l/y.json"}},
			{"l", true, []string{"l/sub", "l/sub/deeper", "l/sub/deeper/w.crt", "l/sub/z.key", "l/x.key", "l/y.json"}},
			{"l/sub", false, []string{"l/sub/deeper", "l/sub/z.key"}},
		}
		for _, tt := range tests {
			got, err := st.List(ctx, tt.prefix, tt.recursive)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("List(%q, %v) = %q, want %q", tt.prefix, tt.recursive, got, tt.want)
			}
		}
	})

	t.Run("exists", func(t *testing.T) {
		st, _ := newStorage(t)
		if err := st.Store(ctx, "e/f/g.key", []byte("v")); err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]bool{"e/f/g.key": true, "e/f": true, "e": true, "e/f/h.key": false, "x": false} {
			if got := st.Exists(ctx, k); got != want {
				t.Errorf("Exists(%q) = %v, want %v", k, got, want)
			}
		}
	})

	t.Run("stat", func(t *testing.T) {
		st, _ := newStorage(t)
		before := time.Now().Add(-time.Minute)
		for _, tc := range []struct {
			key  string
			size int
		}{{"s/a.key", 0}, {"s/a.key", 1}, {"s/b.key", 4096}, {"s/c.json", 17}, {"s/d.json", 0}, {"stek/stek.bin", 96}} {
			if err := st.Store(ctx, tc.key, bytes.Repeat([]byte{'v'}, tc.size)); err != nil {
				t.Fatal(err)
			}
			info, err := st.Stat(ctx, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if info.Key != tc.key || info.Size != int64(tc.size) || !info.IsTerminal || info.Modified.Before(before) {
				t.Errorf("Stat(%q) = %+v, want size %d, terminal, recent", tc.key, info, tc.size)
			}
		}
		info, err := st.Stat(ctx, "s")
		if err != nil {
			t.Fatal(err)
		}
		if info.IsTerminal || info.Key != "s" {
			t.Errorf("Stat(dir) = %+v, want not terminal", info)
		}
	})

	t.Run("lock", func(t *testing.T) {
		st, _ := newStorage(t)
		const name = "issue_cert_example.com"
		if err := st.Lock(ctx, name); err != nil {
			t.Fatal(err)
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		if err := st.Lock(cancelled, name); err == nil {
			t.Fatal("second Lock with a cancelled context succeeded while the lock is held")
		}
		if err := st.Unlock(ctx, name); err != nil {
			t.Fatal(err)
		}
		if err := st.Lock(ctx, name); err != nil {
			t.Fatalf("Lock after Unlock: %v", err)
		}
		if err := st.Unlock(ctx, name); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("optional interfaces", func(t *testing.T) {
		st, inner := newStorage(t)
		_, got := st.(certmagic.TryLocker)
		_, want := inner.(certmagic.TryLocker)
		if got != want {
			t.Fatalf("TryLocker: storage %v, inner %v", got, want)
		}
		_, gotR := st.(certmagic.LockLeaseRenewer)
		_, wantR := inner.(certmagic.LockLeaseRenewer)
		if gotR != wantR {
			t.Fatalf("LockLeaseRenewer: storage %v, inner %v", gotR, wantR)
		}
		tl, ok := st.(certmagic.TryLocker)
		if !ok {
			return
		}
		const name = "ari_x"
		if ok, err := tl.TryLock(ctx, name); !ok || err != nil {
			t.Fatalf("TryLock = %v, %v", ok, err)
		}
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if ok, _ := tl.TryLock(short, name); ok {
			t.Fatal("TryLock succeeded while the lock is held")
		}
		if err := tl.Unlock(ctx, name); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		st, _ := newStorage(t)
		keys := []string{"c/a.key", "c/b.key", "c/c.json", "c/d.crt"}
		for _, k := range keys {
			if err := st.Store(ctx, k, []byte("v-init")); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := range 8 {
			wg.Go(func() {
				for i := range 25 {
					k := keys[(g+i)%len(keys)]
					if err := st.Store(ctx, k, fmt.Appendf(nil, "v-%d-%d-%s", g, i, strings.Repeat("p", i*10))); err != nil {
						errs <- err
						return
					}
					got, err := st.Load(ctx, keys[(g+i+1)%len(keys)])
					if err != nil {
						errs <- err
						return
					}
					if !bytes.HasPrefix(got, []byte("v-")) {
						errs <- fmt.Errorf("torn or garbled value %q", got)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}
