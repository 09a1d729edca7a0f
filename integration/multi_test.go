package integration

import (
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestTwoInstancesShareStorage runs two Caddy instances on one storage
// directory with sync_interval: a certificate uploaded and attached on one
// is served by the other within a few sync intervals, and a detach on the
// other reaches the first the same way.
func TestTwoInstancesShareStorage(t *testing.T) {
	app := map[string]any{"sync_interval": "500ms"}
	a := startCaddy(t, caddyOpts{App: app})
	b := startCaddy(t, caddyOpts{App: app, Storage: map[string]any{"module": "file_system", "root": a.StorageDir}})

	ca := testpki.NewChain(t, "Shared CA")
	l := ca.Leaf(t, "shared.example.test")
	certID := a.uploadLeaf(t, l)
	domainID, _ := a.createDomain(t, "shared.example.test", certID)
	expectServes(t, a, "shared.example.test", l, ca.Roots())

	waitFor(t, 15*time.Second, "instance b to serve a's certificate", func() bool {
		got, err := handshake(t, b.HTTPSAddr(), "shared.example.test")
		return err == nil && testpki.SerialHex(got.SerialNumber) == l.Serial
	})
	if d := b.getDomain(t, domainID); d["domain"] != "shared.example.test" {
		t.Fatalf("b's API does not show a's domain: %v", d)
	}

	b.detachCert(t, domainID)
	expectFails(t, b, "shared.example.test")
	waitFor(t, 15*time.Second, "instance a to see b's detach", func() bool {
		_, err := handshake(t, a.HTTPSAddr(), "shared.example.test")
		return err != nil
	})
}

// waitFor polls cond every 200 ms until it holds or the limit passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", limit, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
