package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

func write(t *testing.T, dir, name, data string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestScanDir matches certificates with keys by the key itself, whatever
// the files are called, keeps the longest chain of a leaf found twice,
// orders pairs by end date, and reports what cannot be used by file.
func TestScanDir(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewChain(t, "Scan")
	late := ca.LeafWith(t, testpki.LeafOptions{NotAfter: time.Now().Add(60 * 24 * time.Hour)}, "late.scan.test")
	early := ca.LeafWith(t, testpki.LeafOptions{NotAfter: time.Now().Add(10 * 24 * time.Hour)}, "early.scan.test")
	write(t, dir, "a/fullchain.pem", late.ChainPEM)
	write(t, dir, "a/cert.pem", late.CertPEM)
	write(t, dir, "a/chain.pem", ca.InterPEM) // a CA bundle: no key needed
	// the key only behind a link, as certbot's live/ directory has it
	keyTarget := filepath.Join(t.TempDir(), "privkey1.pem")
	if err := os.WriteFile(keyTarget, []byte(late.KeyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "z"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(keyTarget, filepath.Join(dir, "z", "private.txt")); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "combined.pem", early.KeyPEM+early.ChainPEM)
	orphan := ca.Leaf(t, "orphan.scan.test")
	write(t, dir, "orphan.crt", orphan.CertPEM)
	write(t, dir, "enc.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
	write(t, dir, "bad.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	write(t, dir, "notes.txt", "hello")

	stray := ca.Leaf(t, "stray.scan.test")
	write(t, dir, "stray.key", stray.KeyPEM)
	write(t, dir, "huge.pem", strings.Repeat("x", maxImportFile+1))
	if err := os.Symlink(filepath.Join(dir, "archive", "cert1.pem"), filepath.Join(dir, "dangling.pem")); err != nil {
		t.Fatal(err)
	}
	found, err := scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	pairs, problems := found.pairs, found.problems
	skipped := map[string]string{}
	for _, s := range found.skipped {
		skipped[filepath.Base(s.File)] = s.Reason
	}
	for f, reason := range map[string]string{"notes.txt": "not PEM", "stray.key": "no certificate for this key", "huge.pem": "too large"} {
		if !strings.HasPrefix(skipped[f], reason) {
			t.Errorf("skip reason of %s: %q, want %q (all %v)", f, skipped[f], reason, found.skipped)
		}
	}
	if len(found.skipped) != 3 {
		t.Errorf("skipped %v; want notes.txt, stray.key, huge.pem", found.skipped)
	}
	if len(pairs) != 2 {
		t.Fatalf("%d pairs; want 2", len(pairs))
	}
	if pairs[0].leaf.Subject.CommonName != "early.scan.test" || pairs[1].leaf.Subject.CommonName != "late.scan.test" {
		t.Errorf("pairs in the order %s, %s; want the earlier end first", pairs[0].leaf.Subject.CommonName, pairs[1].leaf.Subject.CommonName)
	}
	if filepath.Base(pairs[1].certFile) != "fullchain.pem" || len(pairs[1].certs) != 2 || filepath.Base(pairs[1].keyFile) != "private.txt" {
		t.Errorf("late pair from %s (%d certificates) with key %s; want fullchain.pem, 2, private.txt", pairs[1].certFile, len(pairs[1].certs), pairs[1].keyFile)
	}
	if pairs[0].certFile != pairs[0].keyFile {
		t.Errorf("combined file: certificate from %s, key from %s", pairs[0].certFile, pairs[0].keyFile)
	}
	got := map[string]string{}
	for _, p := range problems {
		got[filepath.Base(p.File)] = p.Code
	}
	want := map[string]string{"orphan.crt": "KEY_MISSING", "enc.key": "KEY_ENCRYPTED", "bad.pem": "CERT_PEM_INVALID", "dangling.pem": "UNREADABLE"}
	for f, code := range want {
		if got[f] != code {
			t.Errorf("problem of %s: %q, want %s (all %v)", f, got[f], code, problems)
		}
	}
	if len(problems) != len(want) {
		t.Errorf("problems %v; want only %v", problems, want)
	}
	for _, p := range problems {
		if strings.Contains(p.Msg, "PRIVATE KEY-----") {
			t.Errorf("a problem quotes key material: %v", p)
		}
	}
}
