package integration

import (
	"strings"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestLoaderLoadsIntoCaddysCache: the tls.certificates.domaincerts loader,
// with no manager in any policy, puts the selected uploads into Caddy's
// own cache at config load: by domain name (its attached upload) and by
// certificate ID, and with an empty list every attached upload. What it
// loaded serves until the next config load, as documented, even after a
// detach.
func TestLoaderLoadsIntoCaddysCache(t *testing.T) {
	ca := testpki.NewChain(t, "Loader")
	la := ca.Leaf(t, "a.loader.test")
	lb := ca.Leaf(t, "b.loader.test")
	lc := ca.Leaf(t, "c.loader.test")
	c := startCaddy(t, caddyOpts{})
	aCert, bCert, cCert := c.uploadLeaf(t, la), c.uploadLeaf(t, lb), c.uploadLeaf(t, lc)
	aID, _ := c.createDomain(t, "a.loader.test", aCert)
	c.createDomain(t, "b.loader.test", bCert)

	// only the loader: no get_certificate manager
	c.rewriteConfig(t, func(cfg map[string]any) {
		tlsApp := cfg["apps"].(map[string]any)["tls"].(map[string]any)
		delete(tlsApp, "automation")
		tlsApp["certificates"] = map[string]any{"domaincerts": []any{"a.loader.test", cCert}}
	})
	mark := c.logMark()
	c.Restart()
	if !strings.Contains(c.logSince(mark), `"msg":"loaded uploaded certificates into caddy's cache","count":2`) {
		t.Errorf("the loader did not log loading 2 certificates:\n%s", c.logSince(mark))
	}
	expectServes(t, c, "a.loader.test", la, ca.Roots())
	expectServes(t, c, "c.loader.test", lc, ca.Roots())
	expectFails(t, c, "b.loader.test") // not selected, and no manager
	// loaded certificates stay in Caddy's cache until the next load
	c.detachCert(t, aID)
	expectServes(t, c, "a.loader.test", la, ca.Roots())

	// an empty list: every attached upload (b now; a was detached)
	c.rewriteConfig(t, func(cfg map[string]any) {
		cfg["apps"].(map[string]any)["tls"].(map[string]any)["certificates"] = map[string]any{"domaincerts": []any{}}
	})
	c.Restart()
	expectServes(t, c, "b.loader.test", lb, ca.Roots())
	expectFails(t, c, "a.loader.test")
	expectFails(t, c, "c.loader.test")
}
