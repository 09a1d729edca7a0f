package certsource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/seal"
	"github.com/domaincerts/caddy-domaincerts/sealedstorage"
)

// TestStatusMsg checks that a provisioning_job msg built from a storage
// failure names the operation but no storage key or file path, and that
// other failures keep their text.
func TestStatusMsg(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	certKey := certmagic.StorageKeys.SiteCert("acme-v02.example-directory", "shop.test")
	privKey := certmagic.StorageKeys.SitePrivateKey("acme-v02.example-directory", "shop.test")

	// file_system: a value whose file cannot be read
	fsys := &certmagic.FileStorage{Path: root}
	if err := os.MkdirAll(filepath.Join(root, certKey), 0o700); err != nil {
		t.Fatal(err)
	}
	_, fsErr := fsys.Load(ctx, certKey)

	// sealed: a private key found unsealed, and one sealed for another path
	key, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := sealedstorage.New(fsys, sealedstorage.Config{Keys: [][]byte{key}})
	if err != nil {
		t.Fatal(err)
	}
	unsealedKey := certmagic.StorageKeys.SitePrivateKey("acme-v02.example-directory", "unsealed.test")
	if err := fsys.Store(ctx, unsealedKey, []byte("-----BEGIN EC PRIVATE KEY-----")); err != nil {
		t.Fatal(err)
	}
	_, unsealedErr := sealed.Load(ctx, unsealedKey)
	if err := sealed.Store(ctx, privKey, []byte("key")); err != nil {
		t.Fatal(err)
	}
	raw, err := fsys.Load(ctx, privKey)
	if err != nil {
		t.Fatal(err)
	}
	movedKey := certmagic.StorageKeys.SitePrivateKey("acme-v02.example-directory", "moved.test")
	if err := fsys.Store(ctx, movedKey, raw); err != nil {
		t.Fatal(err)
	}
	_, movedErr := sealed.Load(ctx, movedKey)

	// the provisioning lock, taken in a storage whose lock directory is
	// a file
	lockRoot := t.TempDir()
	store, err := domainstore.Open(ctx, &certmagic.FileStorage{Path: lockRoot}, domainstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	if err := os.RemoveAll(filepath.Join(lockRoot, "locks")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lockRoot, "locks"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, lockErr := (&ACME{store: store}).lockJob(ctx, "rd_statusmsg")

	for name, err := range map[string]error{"file_system": fsErr, "unsealed": unsealedErr, "moved": movedErr, "lock": lockErr} {
		if err == nil {
			t.Fatalf("%s: the storage did not fail; the test needs a failure", name)
		}
		t.Logf("%s: %v", name, err)
	}

	problem := fmt.Errorf("obtaining a certificate for shop.test from letsencrypt: %w",
		&acme.Problem{Type: "urn:ietf:params:acme:error:caa", Detail: "CAA record for shop.test prevents issuance"})
	tests := []struct {
		name   string
		err    error
		wantOp string // "" when the msg is the error's text
	}{
		{"file_system error loading the stored certificate", &storageError{"loading stored certificate", fsErr}, "loading stored certificate"},
		{"unsealed key loading the stored certificate", &storageError{"loading stored certificate", unsealedErr}, "loading stored certificate"},
		{"sealed value moved, while obtaining", fmt.Errorf("obtaining a certificate for shop.test from letsencrypt: %w", movedErr), "obtaining a certificate for shop.test from letsencrypt"},
		{"unsealed key after obtaining", &storageError{"loading obtained certificate", unsealedErr}, "loading obtained certificate"},
		{"provisioning lock", lockErr, "taking the provisioning lock"},
		{"another storage's error without a path, loading the stored certificate", &storageError{"loading stored certificate", errors.New("redis: connection reset by peer")}, "loading stored certificate"},
		{"a storage error alone", fsErr, "reading or writing the storage"},
		{"a storage key in another storage's error", errors.New(`saving "certificates/acme-v02/shop.test/shop.test.crt": redis: connection reset`), "reading or writing the storage"},
		{"a lock file's path in CertMagic's text", errors.New("obtaining a certificate for shop.test from letsencrypt: unable to acquire lock 'issue_cert_shop.test': creating lock file: open /var/lib/caddy/locks/issue_cert_shop.test.lock: permission denied"), "obtaining a certificate for shop.test from letsencrypt"},
		{"CertMagic's account error, its file error wrapped with %v", errors.New("obtaining a certificate for shop.test from letsencrypt: getting ACME account: open /var/lib/caddy/acme/acme-v02.api.letsencrypt.org-directory/users/ops@example.com/ops.json: permission denied"), "obtaining a certificate for shop.test from letsencrypt"},
		{"an unquoted storage key", errors.New("saving key certificates/acme-v02/shop.test/shop.test.key: consul: 500"), "reading or writing the storage"},
		{"ACME problem", problem, ""},
		{"ACME problem with a documentation URL", fmt.Errorf("obtaining a certificate for shop.test from letsencrypt: %w",
			&acme.Problem{Type: "urn:ietf:params:acme:error:rateLimited", Detail: "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-12-01 00:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-hostnames"}), ""},
		{"domain store", &dcerr.Error{Code: dcerr.StorageUnavailable, Msg: "the storage failed or did not answer while reading the domain; retry later", Err: fsErr}, ""},
		{"CA unreachable", errors.New(`obtaining a certificate for shop.test from letsencrypt: Post "https://acme-v02.api.letsencrypt.org/acme/new-order": dial tcp 172.65.32.248:443: connect: connection refused`), ""},
		{"DNS check", errors.New("shop.test has no CNAME to x.cname.operator.test; add it"), ""},
		{"resolver", errors.New("looking up the CNAME of shop.test: resolver 10.0.0.53:53 timed out"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := statusMsg(tt.err)
			if tt.wantOp == "" {
				if msg != tt.err.Error() {
					t.Errorf("msg = %q, want the error's text %q", msg, tt.err.Error())
				}
				return
			}
			if want := "storage unavailable: " + tt.wantOp + ";"; !strings.HasPrefix(msg, want) {
				t.Errorf("msg = %q, want it to begin with %q", msg, want)
			}
			for _, internal := range []string{root, lockRoot, "/var/lib", "certificates/", "locks", ".key", ".crt", `"`, "ops@example.com"} {
				if strings.Contains(msg, internal) {
					t.Errorf("msg = %q names storage internals (%q); the error was %q", msg, internal, tt.err)
				}
			}
		})
	}
}
