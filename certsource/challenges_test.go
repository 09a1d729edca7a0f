package certsource

import (
	"context"
	"errors"
	"io/fs"
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
)

func TestChallengeMirror(t *testing.T) {
	ctx := context.Background()
	mem := new(memstorage.Storage)
	// ours: a private CA; Caddy's policies: Let's Encrypt and another CA
	st := ChallengeMirror(mem, []string{"acme-v02.api.letsencrypt.org-directory", "ca.example:8443-acme-dir"})
	ours := "acme/127.0.0.1-14000-dir/challenge_tokens/shop.example.test.json"
	mirrors := []string{
		"acme/acme-v02.api.letsencrypt.org-directory/challenge_tokens/shop.example.test.json",
		"acme/ca.example-8443-acme-dir/challenge_tokens/shop.example.test.json",
	}
	if err := st.Store(ctx, ours, []byte(`{"token":"t"}`)); err != nil {
		t.Fatal(err)
	}
	for _, k := range append(mirrors, ours) {
		if b, err := mem.Load(ctx, k); err != nil || string(b) != `{"token":"t"}` {
			t.Fatalf("%s: %q, %v", k, b, err)
		}
	}
	// other keys are not mirrored
	other := "certificates/127.0.0.1-14000-dir/shop.example.test/shop.example.test.crt"
	if err := st.Store(ctx, other, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if keys, _ := mem.List(ctx, "", true); len(keys) != 4 {
		t.Fatalf("storage holds %v; want the challenge three times and the certificate", keys)
	}
	if err := st.Delete(ctx, ours); err != nil {
		t.Fatal(err)
	}
	for _, k := range append(mirrors, ours) {
		if _, err := mem.Load(ctx, k); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s after delete: %v", k, err)
		}
	}
	if _, ok := st.(certmagic.TryLocker); ok {
		t.Fatal("the mirror claims TryLock, which memory storage does not have")
	}
	if ChallengeMirror(mem, nil) != certmagic.Storage(mem) {
		t.Fatal("without keys to mirror to, the storage is not wrapped")
	}
}
