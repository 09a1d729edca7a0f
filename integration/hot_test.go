package integration

// Hot certificates: an uploaded certificate is served from Caddy's own
// certificate cache after its first handshake, and every change (a swap,
// a detach, a change on another instance, a config without the plugin)
// takes it out before the next handshake can see it.

import (
	"net/http"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

func TestHotCertificates(t *testing.T) {
	ca := testpki.NewChain(t, "Hot")
	c := startCaddy(t, caddyOpts{})
	a := ca.Leaf(t, "hot.example.test")
	domainID, _ := c.createDomain(t, "hot.example.test", c.uploadLeaf(t, a))
	for range 3 {
		expectServes(t, c, "hot.example.test", a, ca.Roots())
	}
	v := metricValues(t, c)
	if v["domaincerts_hot_certificates"] != 1 || v["domaincerts_cache_hits_total"] != 1 || v[`domaincerts_handshakes_total{result="served"}`] != 3 {
		t.Fatalf("after 3 handshakes: hot %v, cache hits %v, served %v; want 1, 1 (only the first reached the manager) and 3",
			v["domaincerts_hot_certificates"], v["domaincerts_cache_hits_total"], v[`domaincerts_handshakes_total{result="served"}`])
	}

	// a swap is served by the very next handshake
	b := ca.Leaf(t, "hot.example.test")
	c.patchDomain(t, domainID, map[string]any{"certificate_id": c.uploadLeaf(t, b)})
	expectServes(t, c, "hot.example.test", b, ca.Roots())
	expectServes(t, c, "hot.example.test", b, ca.Roots())

	// so is a detach
	c.detachCert(t, domainID)
	expectFails(t, c, "hot.example.test")
	if v := metricValues(t, c); v["domaincerts_hot_certificates"] != 0 {
		t.Fatalf("hot certificates after the detach: %v; want 0", v["domaincerts_hot_certificates"])
	}

	// a config without the plugin takes its certificates out of Caddy's
	// cache: the name is no longer served
	c.patchDomain(t, domainID, map[string]any{"certificate_id": c.uploadLeaf(t, a)})
	expectServes(t, c, "hot.example.test", a, ca.Roots())
	expectServes(t, c, "hot.example.test", a, ca.Roots())
	if v := metricValues(t, c); v["domaincerts_hot_certificates"] != 1 {
		t.Fatalf("hot certificates after re-attaching: %v; want 1", v["domaincerts_hot_certificates"])
	}
	plain := defaultConfig(c, caddyOpts{NoApp: true})
	c.mustAPI(t, http.StatusOK, "POST", "/load", plain)
	expectFails(t, c, "hot.example.test")
}

func TestHotCertificatesOff(t *testing.T) {
	ca := testpki.NewChain(t, "Hot Off")
	c := startCaddy(t, caddyOpts{App: map[string]any{"hot_certificates": -1}})
	a := ca.Leaf(t, "cold.example.test")
	c.createDomain(t, "cold.example.test", c.uploadLeaf(t, a))
	for range 3 {
		expectServes(t, c, "cold.example.test", a, ca.Roots())
	}
	v := metricValues(t, c)
	if v["domaincerts_hot_certificates"] != 0 || v["domaincerts_hot_certificates_capacity"] != 0 || v["domaincerts_cache_hits_total"] != 3 {
		t.Fatalf("hot_certificates -1: hot %v (capacity %v), cache hits %v; want 0, 0 and 3 (every handshake asks the manager)",
			v["domaincerts_hot_certificates"], v["domaincerts_hot_certificates_capacity"], v["domaincerts_cache_hits_total"])
	}
}

// TestHotCertificatesFleet swaps a certificate on one instance while
// another serves it from Caddy's cache: the other serves the new one
// within the fleet's bound.
func TestHotCertificatesFleet(t *testing.T) {
	ca := testpki.NewChain(t, "Hot Fleet")
	f := startFleet(t, 2, onFileSystem, nil)
	a := ca.Leaf(t, "fleet-hot.example.test")
	domainID, _ := f.nodes[0].createDomain(t, "fleet-hot.example.test", f.nodes[0].uploadLeaf(t, a))
	f.converge("the domain", time.Now(), func(c *caddyProc) bool {
		cert, err := handshake(t, c.HTTPSAddr(), "fleet-hot.example.test")
		return err == nil && testpki.SerialHex(cert.SerialNumber) == a.Serial
	})
	expectServes(t, f.nodes[1], "fleet-hot.example.test", a, ca.Roots())
	if v := metricValues(t, f.nodes[1]); v["domaincerts_hot_certificates"] != 1 {
		t.Fatalf("instance 1 hot certificates: %v; want 1", v["domaincerts_hot_certificates"])
	}
	b := ca.Leaf(t, "fleet-hot.example.test")
	f.nodes[0].patchDomain(t, domainID, map[string]any{"certificate_id": f.nodes[0].uploadLeaf(t, b)})
	f.converge("the swap", time.Now(), func(c *caddyProc) bool {
		cert, err := handshake(t, c.HTTPSAddr(), "fleet-hot.example.test")
		return err == nil && testpki.SerialHex(cert.SerialNumber) == b.Serial
	})
	// and keeps serving it (no stale copy comes back)
	for range 3 {
		expectServes(t, f.nodes[1], "fleet-hot.example.test", b, ca.Roots())
	}
}
