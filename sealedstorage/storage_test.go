package sealedstorage

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, seal.KeySize) }

func mustNew(t testing.TB, inner certmagic.Storage, cfg Config) *Storage {
	t.Helper()
	if cfg.Keys == nil {
		cfg.Keys = [][]byte{key(1)}
	}
	s, err := New(inner, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestIsPrivateKeyPath(t *testing.T) {
	tests := []struct {
		key  string
		want bool
	}{
		{"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.key", true},
		{"certificates/acme-v02.api.letsencrypt.org-directory/wildcard_.example.com/wildcard_.example.com.key", true},
		{"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.key.compromised", true},
		{"acme/acme-v02.api.letsencrypt.org-directory/users/me@example.com/me.key", true},
		{"pki/authorities/local/root.key", true},
		{"pki/authorities/local/intermediate.key", true},
		{"ech/configs/123/key.bin", true},
		{"stek/stek.bin", true},
		{"domaincerts/certificates/cert_abc.key", true},
		{"/stek/stek.bin", true},
		{"a//b.key", true},
		{"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt", false},
		{"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.json", false},
		{"acme/acme-v02.api.letsencrypt.org-directory/users/me@example.com/me.json", false},
		{"pki/authorities/local/root.crt", false},
		{"ech/configs/123/config.bin", false},
		{"ech/configs/123/meta.json", false},
		{"ech/configs/key.bin", false},
		{"ech/configs/1/2/key.bin", false},
		{"stek/other.bin", false},
		{"ocsp/example.com-abc", false},
		{"last_clean.json", false},
		{"rw_test_123", false},
		{"keys/x.keys", false},
		{"x.KEY", false},
		{"domaincerts/index.json", false},
	}
	for _, tt := range tests {
		if got := IsPrivateKeyPath(tt.key); got != tt.want {
			t.Errorf("IsPrivateKeyPath(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
}

// TestOnDisk stores private keys through the sealed storage and scans every
// file under the storage root for them.
func TestOnDisk(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := mustNew(t, &certmagic.FileStorage{Path: dir}, Config{}).CertMagic()

	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	var ders [][]byte
	for i, k := range []any{ec, rk, ed} {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		ders = append(ders, der)
		p := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		for _, k := range []string{
			fmt.Sprintf("certificates/acme-v02.api.letsencrypt.org-directory/site%d.example/site%d.example.key", i, i),
			fmt.Sprintf("domaincerts/certificates/cert_%d.key", i),
			fmt.Sprintf("acme/ca/users/u%d@example.com/u%d.key", i, i),
		} {
			if err := st.Store(ctx, k, p); err != nil {
				t.Fatal(err)
			}
		}
	}
	ecDER, _ := x509.MarshalECPrivateKey(ec)
	ders = append(ders, ecDER)
	if err := st.Store(ctx, "pki/authorities/local/root.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})); err != nil {
		t.Fatal(err)
	}
	if err := st.Store(ctx, "stek/stek.bin", ders[0]); err != nil {
		t.Fatal(err)
	}
	// A control value that is not sealed, to show the scan reads the files.
	const control = "-----BEGIN CERTIFICATE-----\ncontrol\n-----END CERTIFICATE-----\n"
	if err := st.Store(ctx, "certificates/x/x.crt", []byte(control)); err != nil {
		t.Fatal(err)
	}

	var files, sawControl int
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(b, []byte(control)) {
			sawControl++
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("%s contains \"PRIVATE KEY\"", p)
		}
		for _, der := range ders {
			if bytes.Contains(b, der) || bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString(der)[:64])) {
				t.Errorf("%s contains the DER of a private key", p)
			}
		}
		if info, _ := d.Info(); info != nil && info.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v", p, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files != 12 || sawControl != 1 {
		t.Fatalf("scanned %d files (want 12), control seen %d times", files, sawControl)
	}
}

func TestMigration(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	const keyPath = "certificates/ca/example.com/example.com.key"
	plain := []byte("-----BEGIN EC PRIVATE KEY-----\nlegacy\n-----END EC PRIVATE KEY-----\n")
	if err := inner.Store(ctx, keyPath, plain); err != nil {
		t.Fatal(err)
	}
	if err := inner.Store(ctx, "certificates/ca/example.com/example.com.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}

	strict := mustNew(t, inner, Config{})
	_, err := strict.Load(ctx, keyPath)
	if !errors.Is(err, ErrUnsealed) {
		t.Fatalf("Load of unsealed key = %v, want ErrUnsealed", err)
	}
	for _, want := range []string{fmt.Sprintf("%q", keyPath), `"allow_unsealed": true`, "caddy seal-reseal"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "legacy") {
		t.Error("error contains the value")
	}
	if errors.Is(err, fs.ErrNotExist) {
		t.Error("refusal must not look like a missing key, or CertMagic would obtain a new certificate over it")
	}

	lax := mustNew(t, inner, Config{AllowUnsealed: true})
	got, err := lax.Load(ctx, keyPath)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("allow_unsealed Load = %q, %v", got, err)
	}

	r, err := lax.Reseal(ctx, ResealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Resealed, []string{keyPath}) {
		t.Fatalf("Resealed = %q", r.Resealed)
	}
	raw, _ := inner.Load(ctx, keyPath)
	if !seal.IsSealed(raw) {
		t.Fatal("value is still unsealed after Reseal")
	}
	if got, err := strict.Load(ctx, keyPath); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("strict Load after Reseal = %q, %v", got, err)
	}
	// Storing through the lax storage seals too.
	if err := inner.Store(ctx, "acme/ca/users/u/u.key", plain); err != nil {
		t.Fatal(err)
	}
	v, _ := lax.Load(ctx, "acme/ca/users/u/u.key")
	if err := lax.Store(ctx, "acme/ca/users/u/u.key", v); err != nil {
		t.Fatal(err)
	}
	if raw, _ := inner.Load(ctx, "acme/ca/users/u/u.key"); !seal.IsSealed(raw) {
		t.Fatal("Store at a sealed path did not seal")
	}
}

func TestSealedValueAtUnsealedPath(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	all := mustNew(t, inner, Config{SealAll: true})
	if err := all.Store(ctx, "certificates/ca/a/a.json", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if raw, _ := inner.Load(ctx, "certificates/ca/a/a.json"); !seal.IsSealed(raw) {
		t.Fatal("seal_all did not seal a .json value")
	}
	some := mustNew(t, inner, Config{})
	got, err := some.Load(ctx, "certificates/ca/a/a.json")
	if err != nil || string(got) != `{"a":1}` {
		t.Fatalf("Load without seal_all = %q, %v", got, err)
	}
	info, err := some.Stat(ctx, "certificates/ca/a/a.json")
	if err != nil || info.Size != 7 {
		t.Fatalf("Stat = %+v, %v; want size 7", info, err)
	}
	// A new write at that path is plain again.
	if err := some.Store(ctx, "certificates/ca/a/a.json", []byte(`{"a":2}`)); err != nil {
		t.Fatal(err)
	}
	if raw, _ := inner.Load(ctx, "certificates/ca/a/a.json"); string(raw) != `{"a":2}` {
		t.Fatalf("raw = %q, want plain", raw)
	}
}

func TestTransplant(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	st := mustNew(t, inner, Config{})
	if err := st.Store(ctx, "certificates/ca/a/a.key", []byte("key of a")); err != nil {
		t.Fatal(err)
	}
	raw, _ := inner.Load(ctx, "certificates/ca/a/a.key")
	if err := inner.Store(ctx, "certificates/ca/b/b.key", raw); err != nil {
		t.Fatal(err)
	}
	_, err := st.Load(ctx, "certificates/ca/b/b.key")
	if !errors.Is(err, seal.ErrAuth) || !strings.Contains(err.Error(), `"certificates/ca/b/b.key"`) {
		t.Fatalf("Load of transplanted value = %v, want ErrAuth naming the path", err)
	}
	// Spellings of one file name one binding.
	for _, alias := range []string{"/certificates/ca/a/a.key", "certificates//ca/a/a.key", "certificates/ca/./a/a.key"} {
		if got, err := st.Load(ctx, alias); err != nil || string(got) != "key of a" {
			t.Errorf("Load(%q) = %q, %v", alias, got, err)
		}
	}
}

func TestWrongKey(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	const p = "certificates/ca/example.com/example.com.key"
	if err := mustNew(t, inner, Config{Keys: [][]byte{key(1)}}).Store(ctx, p, []byte("secret")); err != nil {
		t.Fatal(err)
	}
	_, err := mustNew(t, inner, Config{Keys: [][]byte{key(2)}}).Load(ctx, p)
	want := fmt.Sprintf("opening sealed value at %q: no configured key has id %s; configure the key that sealed it (key or old_keys)", p, seal.KeyIDOf(key(1)))
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v\nwant    %s", err, want)
	}
	if !errors.Is(err, seal.ErrUnknownKey) || errors.Is(err, fs.ErrNotExist) {
		t.Fatal("wrong-key error has the wrong kind")
	}
}

func TestRotationAndReseal(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	oldOnly := mustNew(t, inner, Config{Keys: [][]byte{key(1)}, SealAll: true})
	values := map[string]string{
		"certificates/ca/a/a.key": "key a",
		"acme/ca/users/u/u.key":   "account key",
		"certificates/ca/a/a.crt": "cert a",
		"last_clean.json":         "{}",
	}
	for k, v := range values {
		if err := oldOnly.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	// Turn seal_all off and rotate: the .crt and .json stay sealed values
	// under the old key at paths that are no longer sealed.
	if err := inner.Store(ctx, "ocsp/plain", []byte("plain staple")); err != nil {
		t.Fatal(err)
	}
	rotated := mustNew(t, inner, Config{Keys: [][]byte{key(2), key(1)}})
	for k, v := range values {
		if got, err := rotated.Load(ctx, k); err != nil || string(got) != v {
			t.Fatalf("rotated Load(%q) = %q, %v", k, got, err)
		}
	}

	dry, err := rotated.Reseal(ctx, ResealOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Resealed) != 4 {
		t.Fatalf("dry run would reseal %q, want 4 values", dry.Resealed)
	}
	if _, err := mustNew(t, inner, Config{Keys: [][]byte{key(2)}}).Load(ctx, "certificates/ca/a/a.key"); !errors.Is(err, seal.ErrUnknownKey) {
		t.Fatal("dry run wrote")
	}

	r, err := rotated.Reseal(ctx, ResealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(r.Resealed)
	wantResealed := []string{"acme/ca/users/u/u.key", "certificates/ca/a/a.crt", "certificates/ca/a/a.key", "last_clean.json"}
	if !slices.Equal(r.Resealed, wantResealed) || len(r.Current) != 0 || len(r.Failed) != 0 {
		t.Fatalf("report = %+v", r)
	}
	if !slices.Contains(r.Skipped, "ocsp/plain") {
		t.Fatalf("Skipped = %q, want ocsp/plain", r.Skipped)
	}
	for _, k := range r.Skipped {
		if k != "ocsp/plain" && !strings.HasPrefix(k, "locks/") {
			t.Errorf("unexpected skipped path %q", k)
		}
	}

	newOnly := mustNew(t, inner, Config{Keys: [][]byte{key(2)}})
	for k, v := range values {
		if got, err := newOnly.Load(ctx, k); err != nil || string(got) != v {
			t.Fatalf("new key alone: Load(%q) = %q, %v", k, got, err)
		}
		raw, _ := inner.Load(ctx, k)
		if !seal.IsSealed(raw) {
			t.Errorf("%s was turned into plaintext", k)
		}
		if _, err := oldOnly.Load(ctx, k); !errors.Is(err, seal.ErrUnknownKey) {
			t.Errorf("old key alone still opens %s: %v", k, err)
		}
	}
	if raw, _ := inner.Load(ctx, "ocsp/plain"); string(raw) != "plain staple" {
		t.Error("a plain value at an unsealed path was changed")
	}

	again, err := rotated.Reseal(ctx, ResealOptions{})
	if err != nil || len(again.Resealed) != 0 || len(again.Current) != 4 {
		t.Fatalf("second Reseal = %+v, %v; want 4 current", again, err)
	}
}

func TestResealFailures(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	if err := mustNew(t, inner, Config{Keys: [][]byte{key(9)}}).Store(ctx, "a/unknown.key", []byte("x")); err != nil {
		t.Fatal(err)
	}
	st := mustNew(t, inner, Config{Keys: [][]byte{key(2), key(1)}})
	if err := mustNew(t, inner, Config{}).Store(ctx, "b/old.key", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if err := inner.Store(ctx, "c/tampered.key", []byte("\x89DCS\x01 truncated")); err != nil {
		t.Fatal(err)
	}
	r, err := st.Reseal(ctx, ResealOptions{})
	if err == nil || !strings.Contains(err.Error(), "2 values failed") {
		t.Fatalf("err = %v", err)
	}
	if !slices.Equal(r.Resealed, []string{"b/old.key"}) || len(r.Failed) != 2 {
		t.Fatalf("report = %+v", r)
	}
	for _, f := range r.Failed {
		if !strings.Contains(f.Err.Error(), fmt.Sprintf("%q", f.Path)) {
			t.Errorf("failure %v does not name its path", f.Err)
		}
	}
	if raw, _ := inner.Load(ctx, "c/tampered.key"); string(raw) != "\x89DCS\x01 truncated" {
		t.Error("a value that failed was changed")
	}
}

func TestResealSkipsLocks(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	st := mustNew(t, inner, Config{SealAll: true})
	if err := st.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	defer st.Unlock(ctx, "issue_cert_x")
	r, err := st.Reseal(ctx, ResealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Resealed) != 0 || !slices.Contains(r.Skipped, "locks/issue_cert_x.lock") {
		t.Fatalf("report = %+v", r)
	}
	raw, err := os.ReadFile(filepath.Join(inner.Path, "locks", "issue_cert_x.lock"))
	if err != nil || seal.IsSealed(raw) {
		t.Fatalf("lock file changed: %q, %v", raw, err)
	}
}

func TestStatSize(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	st := mustNew(t, inner, Config{AllowUnsealed: true})
	if err := st.Store(ctx, "k.key", make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	innerInfo, _ := inner.Stat(ctx, "k.key")
	info, err := st.Stat(ctx, "k.key")
	if err != nil {
		t.Fatal(err)
	}
	if innerInfo.Size != 1000+seal.Overhead || info.Size != 1000 {
		t.Fatalf("stored %d, reported %d; want %d and 1000", innerInfo.Size, info.Size, 1000+seal.Overhead)
	}
	if !info.Modified.Equal(innerInfo.Modified) {
		t.Fatal("Modified differs from the inner storage's")
	}
	// An unsealed value at a sealed path (allowed here) is its own size.
	if err := inner.Store(ctx, "legacy.key", make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if info, _ := st.Stat(ctx, "legacy.key"); info.Size != 10 {
		t.Fatalf("unsealed size = %d, want 10", info.Size)
	}
}

func TestCapabilities(t *testing.T) {
	fsInner := &certmagic.FileStorage{Path: t.TempDir()}
	tests := []struct {
		name           string
		inner          certmagic.Storage
		tryLock, renew bool
	}{
		{"neither", noTryLock{fsInner}, false, false},
		{"try lock", fsInner, true, false},
		{"renew", renewOnly{noTryLock{fsInner}}, false, true},
		{"both", tryAndRenew{fsInner}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustNew(t, tt.inner, Config{})
			st := s.CertMagic()
			if st != s.CertMagic() {
				t.Fatal("CertMagic returns different values")
			}
			if _, ok := st.(certmagic.TryLocker); ok != tt.tryLock {
				t.Errorf("TryLocker = %v, want %v", ok, tt.tryLock)
			}
			r, ok := st.(certmagic.LockLeaseRenewer)
			if ok != tt.renew {
				t.Errorf("LockLeaseRenewer = %v, want %v", ok, tt.renew)
			}
			if ok {
				if err := r.RenewLockLease(context.Background(), "x", time.Minute); err != errRenewed {
					t.Errorf("RenewLockLease did not reach the inner storage: %v", err)
				}
			}
			if back, ok := From(st); !ok || back != s {
				t.Error("From does not recover the *Storage")
			}
		})
	}
	if _, ok := From(fsInner); ok {
		t.Error("From accepted a plain FileStorage")
	}
}

var errRenewed = errors.New("renewed")

type renewOnly struct{ certmagic.Storage }

func (renewOnly) RenewLockLease(context.Context, string, time.Duration) error { return errRenewed }

type tryAndRenew struct{ *certmagic.FileStorage }

func (tryAndRenew) RenewLockLease(context.Context, string, time.Duration) error { return errRenewed }

// TestNoKeyInOutput formats and logs the storage every way we can think of
// and checks that no key material appears.
func TestNoKeyInOutput(t *testing.T) {
	k := key(0x41) // "AAAA..." in ASCII
	dir := t.TempDir()
	s := mustNew(t, &certmagic.FileStorage{Path: dir}, Config{Keys: [][]byte{k}})
	if got, want := s.String(), "sealed(FileStorage:"+dir+")"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}
	var out []string
	for _, v := range []any{s, s.CertMagic(), *s} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x"} {
			out = append(out, fmt.Sprintf(verb, v))
		}
		out = append(out, logged(zap.Any("storage", v)))
	}
	for _, o := range out {
		for _, secret := range []string{string(k), base64.StdEncoding.EncodeToString(k), fmt.Sprint(k), fmt.Sprintf("%x", k)} {
			if strings.Contains(o, secret) {
				t.Errorf("output reveals key material: %q", o)
			}
		}
	}
	if l := logged(zap.Any("storage", s.CertMagic())); !strings.Contains(l, "sealed(FileStorage:") {
		t.Errorf("zap.Any does not use String: %s", l)
	}
}

// logged encodes a zap field as JSON, as a production logger would.
func logged(f zap.Field) string {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	buf, err := enc.EncodeEntry(zapcore.Entry{Message: "m"}, []zap.Field{f})
	if err != nil {
		return "encode error: " + err.Error()
	}
	return buf.String()
}

// TestSealKeyNeverStored: a value that is one of the storage's own keys is
// never sealed into it (by a write, or by seal-reseal): a key sealed with
// itself is lost, and the storage must not hold the key that opens it.
func TestSealKeyNeverStored(t *testing.T) {
	ctx := context.Background()
	inner := &certmagic.FileStorage{Path: t.TempDir()}
	st := mustNew(t, inner, Config{Keys: [][]byte{key(2), key(1)}})
	for _, k := range [][]byte{key(2), key(1)} {
		// at a sealed path, and at one that is not (it would be stored as
		// it is)
		for _, path := range []string{"domaincerts/seal.key", "notes/seal.txt"} {
			err := st.Store(ctx, path, []byte(b64(k)+"\n"))
			if !errors.Is(err, ErrSealKeyInStorage) {
				t.Fatalf("storing a seal key at %s: %v; want ErrSealKeyInStorage", path, err)
			}
			if _, err := inner.Load(ctx, path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s: a refused value reached the storage (%v)", path, err)
			}
		}
	}
	// another key is just a value
	if err := st.Store(ctx, "other/x.key", []byte(b64(key(3)))); err != nil {
		t.Fatal(err)
	}

	// as an earlier version left it: the current key, unsealed, at a
	// sealed path (allow_unsealed, as during a migration)
	if err := inner.Store(ctx, "domaincerts/seal.key", []byte(b64(key(2))+"\n")); err != nil {
		t.Fatal(err)
	}
	st = mustNew(t, inner, Config{Keys: [][]byte{key(2), key(1)}, AllowUnsealed: true})
	r, err := st.Reseal(ctx, ResealOptions{})
	if err == nil || len(r.Failed) != 1 || r.Failed[0].Path != "domaincerts/seal.key" || !errors.Is(r.Failed[0].Err, ErrSealKeyInStorage) {
		t.Fatalf("reseal = %+v, %v; want the seal key refused", r, err)
	}
	if !strings.Contains(r.Failed[0].Err.Error(), "must never hold the key that opens it") {
		t.Fatalf("the refusal does not say why: %v", r.Failed[0].Err)
	}
	if raw, _ := inner.Load(ctx, "domaincerts/seal.key"); seal.IsSealed(raw) {
		t.Fatal("reseal sealed the key with itself")
	}
}
