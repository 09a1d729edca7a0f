package integration

// End-to-end tests of issue 2: uploaded certificates are served by SNI and
// managed live through the Caddy admin API. Every assertion about serving is
// a real TLS handshake against Caddy, compared by serial number.

import (
	"encoding/pem"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestUploadAttachServes: upload + attach, and the next handshake gets the
// leaf, with no reload; the objects carry the contract's fields.
func TestUploadAttachServes(t *testing.T) {
	ca := testpki.NewChain(t, "Upload")
	c := startCaddy(t, caddyOpts{})

	const name = "shop.example.test"
	l := ca.Leaf(t, name, "www.shop.example.test")
	expectFails(t, c, name)

	obj := c.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/tls_certificates", map[string]any{
		"certificate_pem": l.ChainPEM,
		"private_key_pem": l.KeyPEM,
		"description":     "shop cert",
		"metadata":        `{"customer":"42"}`,
	})
	certID := checkCertObject(t, obj, l, ca, "ecdsa")
	if obj["description"] != "shop cert" || obj["metadata"] != `{"customer":"42"}` {
		t.Errorf("description/metadata not echoed: %v %v", obj["description"], obj["metadata"])
	}

	domainID, dobj := c.createDomain(t, name, certID)
	checkDomainObject(t, dobj, name, certID)

	// The very next handshake, no sleep, no reload.
	expectServes(t, c, name, l, ca.Roots())
	expectServes(t, c, "SHOP.Example.TEST", l, nil) // SNI is case-insensitive
	expectFails(t, c, "www.shop.example.test")      // covered by the cert, but no Domain

	// GET returns the same objects; lists contain them.
	if got := c.getCert(t, certID); !reflect.DeepEqual(got, obj) {
		t.Errorf("GET certificate differs from the create response:\n got %v\nwant %v", got, obj)
	}
	if got := c.getDomain(t, domainID); !reflect.DeepEqual(got, dobj) {
		t.Errorf("GET domain differs from the create response:\n got %v\nwant %v", got, dobj)
	}
	if certs := c.listAll(t, "/domaincerts/tls_certificates", "tls_certificates"); len(certs) != 1 || !reflect.DeepEqual(certs[0], obj) {
		t.Errorf("certificate list = %v, want [the certificate]", certs)
	}
	if doms := c.listAll(t, "/domaincerts/domains", "domains"); len(doms) != 1 || !reflect.DeepEqual(doms[0], dobj) {
		t.Errorf("domain list = %v, want [the domain]", doms)
	}

	// An RSA upload is served too and reports its key type.
	lr := ca.LeafWith(t, testpki.LeafOptions{RSA: true}, "rsa.example.test")
	rid, robj := c.uploadCert(t, lr.ChainPEM, lr.KeyPEM)
	checkCertObject(t, robj, lr, ca, "rsa")
	c.createDomain(t, "rsa.example.test", rid)
	expectServes(t, c, "rsa.example.test", lr, ca.Roots())
	expectServes(t, c, name, l, nil)

	assertNoKeyInLog(t, c, l, lr)
	c.assertNoIssuance(t)
}

// TestSwapCertificate: PATCH certificate_id switches the served leaf at once.
func TestSwapCertificate(t *testing.T) {
	ca := testpki.NewChain(t, "Swap")
	c := startCaddy(t, caddyOpts{})
	const name = "swap.example.test"
	a, b := ca.Leaf(t, name), ca.Leaf(t, name)

	aID := c.uploadLeaf(t, a)
	dID, _ := c.createDomain(t, name, aID)
	expectServes(t, c, name, a, ca.Roots())

	bID := c.uploadLeaf(t, b)
	expectServes(t, c, name, a, nil) // uploading alone changes nothing
	got := c.patchDomain(t, dID, map[string]any{"certificate_id": bID})
	checkDomainObject(t, got, name, bID)
	expectServes(t, c, name, b, ca.Roots())

	// And back: the cache must not keep serving b.
	c.patchDomain(t, dID, map[string]any{"certificate_id": aID})
	expectServes(t, c, name, a, nil)
	c.patchDomain(t, dID, map[string]any{"certificate_id": bID})
	expectServes(t, c, name, b, nil)

	// a is free now, b is in use.
	c.deleteCert(t, aID)
	status, resp := c.api(t, "DELETE", "/domaincerts/tls_certificates/"+bID, nil)
	assertAPIError(t, status, resp, http.StatusConflict, "CERT_IN_USE")
	expectServes(t, c, name, b, nil)
	if d := c.getDomain(t, dID); certRef(d) != bID {
		t.Errorf("domain certificate = %v, want %s", d["certificate"], bID)
	}
	c.assertNoIssuance(t)
}

// TestDetachCertificate: after DELETE .../certificate the name is not served
// and nothing is obtained from a CA instead.
func TestDetachCertificate(t *testing.T) {
	ca := testpki.NewChain(t, "Detach")
	c := startCaddy(t, caddyOpts{})
	const name = "detach.example.test"
	l := ca.Leaf(t, name)
	certID := c.uploadLeaf(t, l)
	dID, _ := c.createDomain(t, name, certID)
	expectServes(t, c, name, l, nil)

	c.detachCert(t, dID)
	d := c.getDomain(t, dID)
	if d["certificate"] != nil {
		t.Errorf("certificate after detach = %v, want null", d["certificate"])
	}
	if d["certificate_management_policy"] != nil {
		t.Errorf("detaching an upload gave the domain a policy: %v", d["certificate_management_policy"])
	}
	expectFails(t, c, name)
	time.Sleep(500 * time.Millisecond) // give a wrong background order a moment to show
	expectFails(t, c, name)

	// The certificate itself stays, and is no longer in use.
	c.getCert(t, certID)
	c.deleteCert(t, certID)
	c.assertNoIssuance(t)
}

// TestDeleteDomainAndCertificate: DELETE of a domain stops serving; a
// certificate in use cannot be deleted; deleted records are 404.
func TestDeleteDomainAndCertificate(t *testing.T) {
	ca := testpki.NewChain(t, "Delete")
	c := startCaddy(t, caddyOpts{})
	const name = "delete.example.test"
	l := ca.Leaf(t, name)
	certID := c.uploadLeaf(t, l)
	dID, _ := c.createDomain(t, name, certID)
	expectServes(t, c, name, l, nil)

	status, resp := c.api(t, "DELETE", "/domaincerts/tls_certificates/"+certID, nil)
	assertAPIError(t, status, resp, http.StatusConflict, "CERT_IN_USE")
	expectServes(t, c, name, l, nil)
	c.getCert(t, certID)

	c.deleteDomain(t, dID)
	expectFails(t, c, name)
	status, resp = c.api(t, "GET", "/domaincerts/domains/"+dID, nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
	status, resp = c.api(t, "DELETE", "/domaincerts/domains/"+dID, nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")

	c.deleteCert(t, certID)
	status, resp = c.api(t, "GET", "/domaincerts/tls_certificates/"+certID, nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
	status, resp = c.api(t, "DELETE", "/domaincerts/tls_certificates/"+certID, nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")

	if n := c.count(t, "domains"); n != 0 {
		t.Errorf("%d domains left", n)
	}
	if n := c.count(t, "tls_certificates"); n != 0 {
		t.Errorf("%d certificates left", n)
	}
	// The name can be registered again.
	l2 := ca.Leaf(t, name)
	c.createDomain(t, name, c.uploadLeaf(t, l2))
	expectServes(t, c, name, l2, nil)
	c.assertNoIssuance(t)
}

// TestRestartKeepsRecords: after a restart on the same storage the same
// leaves are served and the API returns the same records.
func TestRestartKeepsRecords(t *testing.T) {
	ca := testpki.NewChain(t, "Restart")
	c := startCaddy(t, caddyOpts{})
	leaves := map[string]*testpki.ChainLeaf{
		"one.example.test":    ca.Leaf(t, "one.example.test"),
		"two.example.test":    ca.LeafWith(t, testpki.LeafOptions{RSA: true}, "two.example.test"),
		"*.wild.example.test": ca.Leaf(t, "*.wild.example.test"),
	}
	domainIDs := map[string]string{}
	certIDs := map[string]string{}
	for _, name := range sortedKeys(leaves) {
		certIDs[name] = c.uploadLeaf(t, leaves[name])
		domainIDs[name], _ = c.createDomain(t, name, certIDs[name])
	}
	unused := ca.Leaf(t, "unused.example.test")
	unusedID := c.uploadLeaf(t, unused)
	sniOf := func(name string) string { return strings.Replace(name, "*", "x", 1) }
	for name, l := range leaves {
		expectServes(t, c, sniOf(name), l, nil)
	}

	before := map[string]map[string]any{}
	for name := range leaves {
		before[domainIDs[name]] = c.getDomain(t, domainIDs[name])
		before[certIDs[name]] = c.getCert(t, certIDs[name])
	}
	before[unusedID] = c.getCert(t, unusedID)
	domainsBefore := c.listAll(t, "/domaincerts/domains", "domains")
	certsBefore := c.listAll(t, "/domaincerts/tls_certificates", "tls_certificates")

	c.Restart()

	for name, l := range leaves {
		expectServes(t, c, sniOf(name), l, ca.Roots())
	}
	expectFails(t, c, "unused.example.test")
	for id, want := range before {
		var got map[string]any
		if strings.HasPrefix(id, "rd_") {
			got = c.getDomain(t, id)
		} else {
			got = c.getCert(t, id)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s changed across restart:\n got %v\nwant %v", id, got, want)
		}
	}
	if got := c.listAll(t, "/domaincerts/domains", "domains"); !reflect.DeepEqual(got, domainsBefore) {
		t.Errorf("domain list changed across restart:\n got %v\nwant %v", got, domainsBefore)
	}
	if got := c.listAll(t, "/domaincerts/tls_certificates", "tls_certificates"); !reflect.DeepEqual(got, certsBefore) {
		t.Errorf("certificate list changed across restart:\n got %v\nwant %v", got, certsBefore)
	}
	// Still writable after the restart.
	l4 := ca.Leaf(t, "four.example.test")
	c.createDomain(t, "four.example.test", c.uploadLeaf(t, l4))
	expectServes(t, c, "four.example.test", l4, nil)
	c.assertNoIssuance(t)
}

// TestWildcardVersusExact: the exact name wins over the wildcard one label
// up; the wildcard covers exactly one label.
func TestWildcardVersusExact(t *testing.T) {
	ca := testpki.NewChain(t, "Wildcard")
	c := startCaddy(t, caddyOpts{})
	a := ca.Leaf(t, "*.example.test")
	b := ca.Leaf(t, "a.example.test")
	c.createDomain(t, "*.example.test", c.uploadLeaf(t, a))
	c.createDomain(t, "a.example.test", c.uploadLeaf(t, b))

	expectServes(t, c, "a.example.test", b, ca.Roots())
	expectServes(t, c, "b.example.test", a, ca.Roots())
	expectServes(t, c, "zz-9.example.test", a, nil)
	expectFails(t, c, "example.test")
	expectFails(t, c, "x.y.example.test")
	expectFails(t, c, "a.example.test.other")
	c.assertNoIssuance(t)
}

// TestUnknownAndMissingSNI: no matching Domain, or no SNI at all, fails at
// once and starts no issuance.
func TestUnknownAndMissingSNI(t *testing.T) {
	ca := testpki.NewChain(t, "Unknown")
	c := startCaddy(t, caddyOpts{})
	l := ca.Leaf(t, "known.example.test")
	c.createDomain(t, "known.example.test", c.uploadLeaf(t, l))
	// An uploaded certificate that no Domain uses is not served either.
	c.uploadLeaf(t, ca.Leaf(t, "orphan.example.test"))

	for _, sni := range []string{"unknown.example.test", "orphan.example.test", "localhost", "known.example.test.evil", ""} {
		expectFails(t, c, sni)
	}
	expectServes(t, c, "known.example.test", l, nil)
	time.Sleep(500 * time.Millisecond)
	c.assertNoIssuance(t)
}

// TestAPIErrors: representative error codes end to end, each leaving the
// state unchanged.
func TestAPIErrors(t *testing.T) {
	ca := testpki.NewChain(t, "Errors")
	c := startCaddy(t, caddyOpts{})
	l := ca.Leaf(t, "err.example.test", "err2.example.test")
	other := ca.Leaf(t, "other.example.test")
	certID := c.uploadLeaf(t, l)
	otherID := c.uploadLeaf(t, other)
	domainID, _ := c.createDomain(t, "err.example.test", certID)
	domainBefore := c.getDomain(t, domainID)
	certBefore := c.getCert(t, certID)

	reversed := ca.InterPEM + l.CertPEM
	big := `{"certificate_pem": "` + strings.Repeat("A", 300<<10) + `", "private_key_pem": "x"}`
	policy := map[string]any{"authority": "letsencrypt", "private_key_type": "ecdsa"}

	cases := []struct {
		name       string
		method     string
		path       string
		body       any
		wantStatus int
		wantCode   string
	}{
		{"reversed chain", "POST", "/domaincerts/tls_certificates",
			map[string]any{"certificate_pem": reversed, "private_key_pem": l.KeyPEM}, 400, "CHAIN_ORDER"},
		{"reversed chain, wrong key", "POST", "/domaincerts/tls_certificates",
			map[string]any{"certificate_pem": reversed, "private_key_pem": other.KeyPEM}, 400, "CHAIN_ORDER"},
		{"key of another leaf", "POST", "/domaincerts/tls_certificates",
			map[string]any{"certificate_pem": l.ChainPEM, "private_key_pem": other.KeyPEM}, 400, "KEY_MISMATCH"},
		{"no certificate_pem", "POST", "/domaincerts/tls_certificates",
			map[string]any{"private_key_pem": l.KeyPEM}, 400, "CERT_PEM_MISSING"},
		{"no private_key_pem", "POST", "/domaincerts/tls_certificates",
			map[string]any{"certificate_pem": l.ChainPEM}, 400, "KEY_MISSING"},
		{"description over 255 bytes", "POST", "/domaincerts/tls_certificates",
			map[string]any{"certificate_pem": l.ChainPEM, "private_key_pem": l.KeyPEM, "description": strings.Repeat("d", 256)}, 400, "FIELD_TOO_LARGE"},
		{"body over 256 KiB", "POST", "/domaincerts/tls_certificates", big, 413, "BODY_TOO_LARGE"},
		{"unknown field", "POST", "/domaincerts/tls_certificates",
			map[string]any{"certificate_pem": l.ChainPEM, "private_key_pem": l.KeyPEM, "bogus": true}, 400, "BAD_REQUEST"},
		{"malformed JSON", "POST", "/domaincerts/domains", `{"domain": `, 400, "BAD_REQUEST"},
		{"wrong type", "POST", "/domaincerts/domains", map[string]any{"domain": 7, "certificate_id": certID}, 400, "BAD_REQUEST"},
		{"underscore", "POST", "/domaincerts/domains", map[string]any{"domain": "bad_name.example.test", "certificate_id": certID}, 400, "DOMAIN_INVALID"},
		{"IP address", "POST", "/domaincerts/domains", map[string]any{"domain": "127.0.0.1", "certificate_id": certID}, 400, "DOMAIN_INVALID"},
		{"empty label", "POST", "/domaincerts/domains", map[string]any{"domain": "a..example.test", "certificate_id": certID}, 400, "DOMAIN_INVALID"},
		{"bad wildcard", "POST", "/domaincerts/domains", map[string]any{"domain": "*.*.example.test", "certificate_id": certID}, 400, "DOMAIN_INVALID"},
		{"existing domain", "POST", "/domaincerts/domains", map[string]any{"domain": "err.example.test", "certificate_id": certID}, 409, "DOMAIN_EXISTS"},
		{"certificate and policy", "POST", "/domaincerts/domains",
			map[string]any{"domain": "err2.example.test", "certificate_id": certID, "certificate_management_policy": policy}, 400, "CERT_AND_POLICY"},
		{"certificate not covering", "POST", "/domaincerts/domains", map[string]any{"domain": "other.example.test", "certificate_id": certID}, 400, "CERT_DOMAIN_MISMATCH"},
		{"unknown certificate", "POST", "/domaincerts/domains",
			map[string]any{"domain": "err2.example.test", "certificate_id": "cert_doesnotexist0000000000"}, 400, "CERT_NOT_FOUND"},
		{"patch to an unknown certificate", "PATCH", "/domaincerts/domains/" + domainID,
			map[string]any{"certificate_id": "cert_doesnotexist0000000000"}, 400, "CERT_NOT_FOUND"},
		{"patch to a certificate not covering", "PATCH", "/domaincerts/domains/" + domainID,
			map[string]any{"certificate_id": otherID}, 400, "CERT_DOMAIN_MISMATCH"},
		{"patch domain name", "PATCH", "/domaincerts/domains/" + domainID, map[string]any{"domain": "err2.example.test"}, 400, "DOMAIN_IMMUTABLE"},
		{"patch certificate PEM", "PATCH", "/domaincerts/tls_certificates/" + certID, map[string]any{"certificate_pem": other.ChainPEM}, 400, "BAD_REQUEST"},
		{"PUT on the collection", "PUT", "/domaincerts/tls_certificates", map[string]any{}, 405, "METHOD_NOT_ALLOWED"},
		{"DELETE on the collection", "DELETE", "/domaincerts/domains", nil, 405, "METHOD_NOT_ALLOWED"},
		{"POST on a record", "POST", "/domaincerts/domains/" + domainID, map[string]any{}, 405, "METHOD_NOT_ALLOWED"},
		{"unknown domain", "GET", "/domaincerts/domains/rd_doesnotexist0000000000", nil, 404, "NOT_FOUND"},
		{"unknown certificate GET", "GET", "/domaincerts/tls_certificates/cert_doesnotexist0000000000", nil, 404, "NOT_FOUND"},
		{"patch unknown domain", "PATCH", "/domaincerts/domains/rd_doesnotexist0000000000", map[string]any{"description": "x"}, 404, "NOT_FOUND"},
		{"unknown path", "GET", "/domaincerts/nothing_here", nil, 404, "NOT_FOUND"},
		{"empty certificate_id on create", "POST", "/domaincerts/domains", map[string]any{"domain": "err2.example.test", "certificate_id": ""}, 400, "BAD_REQUEST"},
		{"empty certificate_id on patch", "PATCH", "/domaincerts/domains/" + domainID, map[string]any{"certificate_id": ""}, 400, "BAD_REQUEST"},
		{"duplicate key", "POST", "/domaincerts/domains",
			`{"domain": "err2.example.test", "certificate_id": "` + certID + `", "domain": "other.example.test"}`, 400, "BAD_REQUEST"},
		{"duplicate key in a patch", "PATCH", "/domaincerts/domains/" + domainID, `{"description": "a", "description": "b"}`, 400, "BAD_REQUEST"},
		{"duplicate key in an upload", "POST", "/domaincerts/tls_certificates",
			`{"certificate_pem": ` + jsonString(l.ChainPEM) + `, "private_key_pem": ` + jsonString(l.KeyPEM) + `, "private_key_pem": "x"}`, 400, "BAD_REQUEST"},
		{"invalid UTF-8 in description", "POST", "/domaincerts/domains",
			[]byte("{\"domain\": \"err2.example.test\", \"certificate_id\": \"" + certID + "\", \"description\": \"caf\xe9\"}"), 400, "BAD_REQUEST"},
		{"invalid UTF-8 in metadata", "PATCH", "/domaincerts/domains/" + domainID, []byte("{\"metadata\": \"\xff\xfe\"}"), 400, "BAD_REQUEST"},
		{"unpaired surrogate in description", "PATCH", "/domaincerts/domains/" + domainID, `{"description": "\ud800"}`, 400, "BAD_REQUEST"},
		{"invalid A-label", "POST", "/domaincerts/domains", map[string]any{"domain": "xn--zz.example.test", "certificate_id": certID}, 400, "DOMAIN_INVALID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, resp := c.api(t, tc.method, tc.path, tc.body)
			assertAPIError(t, status, resp, tc.wantStatus, tc.wantCode)
		})
	}

	if n := c.count(t, "tls_certificates"); n != 2 {
		t.Errorf("%d certificates after rejected requests, want 2", n)
	}
	if n := c.count(t, "domains"); n != 1 {
		t.Errorf("%d domains after rejected requests, want 1", n)
	}
	if got := c.getDomain(t, domainID); !reflect.DeepEqual(got, domainBefore) {
		t.Errorf("domain changed by rejected requests:\n got %v\nwant %v", got, domainBefore)
	}
	if got := c.getCert(t, certID); !reflect.DeepEqual(got, certBefore) {
		t.Errorf("certificate changed by rejected requests:\n got %v\nwant %v", got, certBefore)
	}
	expectServes(t, c, "err.example.test", l, nil)
	expectFails(t, c, "err2.example.test")
	expectFails(t, c, "other.example.test")
	assertNoKeyInLog(t, c, l, other)
	c.assertNoIssuance(t)
}

// TestPagination: seven certificates, limit=3, next_page_uri until null:
// newest first, each seen once.
func TestPagination(t *testing.T) {
	ca := testpki.NewChain(t, "Pages")
	c := startCaddy(t, caddyOpts{})
	var ids []string
	for i := range 7 {
		ids = append(ids, c.uploadLeaf(t, ca.Leaf(t, fmt.Sprintf("p%d.example.test", i))))
	}

	var pages []int
	var got []string
	path := "/domaincerts/tls_certificates?limit=3"
	for n := 0; path != ""; n++ {
		if n > 10 {
			t.Fatalf("more than 10 pages")
		}
		resp := c.mustAPI(t, http.StatusOK, "GET", path, nil)
		list, _ := resp["tls_certificates"].([]any)
		pages = append(pages, len(list))
		for _, it := range list {
			m, _ := it.(map[string]any)
			id, _ := m["id"].(string)
			got = append(got, id)
		}
		switch next := resp["next_page_uri"].(type) {
		case nil:
			path = ""
		case string:
			path = strings.TrimPrefix(next, "http://"+c.AdminAddr)
		default:
			t.Fatalf("next_page_uri = %#v", next)
		}
	}
	want := make([]string, len(ids))
	for i, id := range ids {
		want[len(ids)-1-i] = id
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("paged IDs = %v, want newest first %v", got, want)
	}
	if !reflect.DeepEqual(pages, []int{3, 3, 1}) {
		t.Errorf("page sizes = %v, want [3 3 1]", pages)
	}
	// before_id on its own.
	resp := c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/tls_certificates?limit=2&before_id="+ids[3], nil)
	list, _ := resp["tls_certificates"].([]any)
	if len(list) != 2 || list[0].(map[string]any)["id"] != ids[2] || list[1].(map[string]any)["id"] != ids[1] {
		t.Errorf("before_id=%s&limit=2 gave %v, want [%s %s]", ids[3], list, ids[2], ids[1])
	}
	// The default limit returns all seven on one page.
	resp = c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/tls_certificates", nil)
	if list, _ := resp["tls_certificates"].([]any); len(list) != 7 || resp["next_page_uri"] != nil {
		t.Errorf("default page: %d items, next_page_uri %v", len(list), resp["next_page_uri"])
	}
}

// TestConcurrentUploadsAndHandshakes: writers upload and attach distinct
// domains while readers handshake existing ones; nothing is lost or mixed.
func TestConcurrentUploadsAndHandshakes(t *testing.T) {
	const writers, perWriter, readers, existing = 8, 10, 4, 4
	ca := testpki.NewChain(t, "Concurrent")
	c := startCaddy(t, caddyOpts{})

	leaves := map[string]*testpki.ChainLeaf{}
	var stable []string
	for i := range existing {
		name := fmt.Sprintf("stable%d.example.test", i)
		leaves[name] = ca.Leaf(t, name)
		c.createDomain(t, name, c.uploadLeaf(t, leaves[name]))
		stable = append(stable, name)
	}
	var fresh []string
	for w := range writers {
		for i := range perWriter {
			name := fmt.Sprintf("w%d-%d.example.test", w, i)
			leaves[name] = ca.Leaf(t, name)
			fresh = append(fresh, name)
		}
	}

	var stop atomic.Bool
	var handshakes atomic.Int64
	errs := make(chan error, 1000)
	var rwg, wwg sync.WaitGroup
	for r := range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for i := r; !stop.Load(); i++ {
				name := stable[i%len(stable)]
				state, err := handshakeState(c.HTTPSAddr(), name)
				if err != nil {
					errs <- fmt.Errorf("reader handshake %s: %v", name, err)
					return
				}
				if got := testpki.SerialHex(state.PeerCertificates[0].SerialNumber); got != leaves[name].Serial {
					errs <- fmt.Errorf("reader handshake %s: serial %s, want %s", name, got, leaves[name].Serial)
					return
				}
				handshakes.Add(1)
			}
		}()
	}
	start := time.Now()
	for w := range writers {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for i := range perWriter {
				name := fmt.Sprintf("w%d-%d.example.test", w, i)
				l := leaves[name]
				res, err := c.do("POST", "/domaincerts/tls_certificates", map[string]any{
					"certificate_pem": l.ChainPEM, "private_key_pem": l.KeyPEM})
				if err != nil || res.Status != http.StatusCreated {
					errs <- fmt.Errorf("upload %s: %d %v %s", name, res.Status, err, truncate(res.Raw, 300))
					return
				}
				res, err = c.do("POST", "/domaincerts/domains", map[string]any{
					"domain": name, "certificate_id": res.Body["id"]})
				if err != nil || res.Status != http.StatusCreated {
					errs <- fmt.Errorf("create %s: %d %v %s", name, res.Status, err, truncate(res.Raw, 300))
					return
				}
				// The writer's own next handshake sees it.
				state, err := handshakeState(c.HTTPSAddr(), name)
				if err != nil {
					errs <- fmt.Errorf("handshake %s right after create: %v", name, err)
					return
				}
				if got := testpki.SerialHex(state.PeerCertificates[0].SerialNumber); got != l.Serial {
					errs <- fmt.Errorf("handshake %s right after create: serial %s, want %s", name, got, l.Serial)
					return
				}
			}
		}()
	}
	wwg.Wait()
	writeTime := time.Since(start)
	stop.Store(true)
	rwg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d uploads+attaches by %d writers in %s, %d concurrent reader handshakes",
		writers*perWriter, writers, writeTime.Round(time.Millisecond), handshakes.Load())
	if handshakes.Load() == 0 {
		t.Errorf("readers made no handshake")
	}

	for _, name := range append(stable, fresh...) {
		expectServes(t, c, name, leaves[name], nil)
	}
	seen := map[string]int{}
	for _, d := range c.listAll(t, "/domaincerts/domains?limit=17", "domains") {
		name, _ := d["domain"].(string)
		seen[name]++
	}
	for name := range leaves {
		if seen[name] != 1 {
			t.Errorf("domain %s listed %d times, want once", name, seen[name])
		}
	}
	if len(seen) != len(leaves) {
		t.Errorf("list has %d distinct domains, want %d", len(seen), len(leaves))
	}
	if n := c.count(t, "tls_certificates"); n != len(leaves) {
		t.Errorf("%d certificates listed, want %d", n, len(leaves))
	}
	c.assertNoIssuance(t)
}

// TestOpenSSLAndCurl: the real openssl and curl see the uploaded certificate.
func TestOpenSSLAndCurl(t *testing.T) {
	requireTool(t, "/usr/bin/openssl")
	requireTool(t, "/usr/bin/curl")
	ca := testpki.NewChain(t, "Tools")
	c := startCaddy(t, caddyOpts{})
	const name = "tools.example.test"
	l := ca.Leaf(t, name)
	c.createDomain(t, name, c.uploadLeaf(t, l))
	// A second name with another cert, so the tools must pick by SNI.
	l2 := ca.Leaf(t, "other-tools.example.test")
	c.createDomain(t, "other-tools.example.test", c.uploadLeaf(t, l2))

	rootFile := ca.RootFile(t, t.TempDir())
	opensslExpect(t, c, name, rootFile)
	opensslExpect(t, c, "other-tools.example.test", rootFile)
	curlExpectOK(t, c, name, rootFile)
	c.assertNoIssuance(t)
}

// certFields are the fields of a TLS certificate object: the contract's,
// and managed_domain_id for a certificate that ACME issued.
var certFields = []string{"id", "uri", "created_at", "updated_at", "description", "metadata", "certificate_pem",
	"subject_common_name", "subject_alternative_names", "issued_at", "not_before", "not_after", "key_usages",
	"extended_key_usages", "private_key_type", "issuer_common_name", "serial_number", "subject_organization",
	"subject_organizational_unit", "subject_locality", "subject_province", "subject_country", "fingerprint"}

// checkCertFields checks that a TLS certificate object has exactly the
// contract's fields (and managed_domain_id when managed): nothing the
// store keeps about the record, such as where a key lives, is shown.
func checkCertFields(t *testing.T, obj map[string]any, managed bool) {
	t.Helper()
	want := map[string]bool{}
	for _, f := range certFields {
		want[f] = true
		if _, ok := obj[f]; !ok {
			t.Errorf("certificate object has no %q", f)
		}
	}
	if managed {
		want["managed_domain_id"] = true
		if id, _ := obj["managed_domain_id"].(string); !strings.HasPrefix(id, "rd_") {
			t.Errorf("managed_domain_id = %v, want the domain's ID", obj["managed_domain_id"])
		}
	}
	for f := range obj {
		if !want[f] {
			t.Errorf("certificate object has %q, which is not an API field (value %v)", f, obj[f])
		}
	}
}

// checkCertObject checks a TLS certificate object against the leaf it was
// uploaded from and returns its ID.
func checkCertObject(t *testing.T, obj map[string]any, l *testpki.ChainLeaf, ca *testpki.Chain, keyType string) string {
	t.Helper()
	checkCertFields(t, obj, false)
	id := checkID(t, "certificate id", obj["id"], "cert_")
	if obj["uri"] != "/domaincerts/tls_certificates/"+id {
		t.Errorf("uri = %v", obj["uri"])
	}
	if ts := checkTimestamp(t, "created_at", obj["created_at"]); !ts.IsZero() && time.Since(ts).Abs() > 5*time.Minute {
		t.Errorf("created_at %v is not now", ts)
	}
	if s, _ := obj["certificate_pem"].(string); !pemHasLeaf(s, l) {
		t.Errorf("certificate_pem does not start with the uploaded leaf: %.200q", obj["certificate_pem"])
	}
	if obj["subject_common_name"] != l.Cert.Subject.CommonName {
		t.Errorf("subject_common_name = %v, want %s", obj["subject_common_name"], l.Cert.Subject.CommonName)
	}
	san, _ := obj["subject_alternative_names"].(map[string]any)
	if !reflect.DeepEqual(san["dns_names"], toAny(l.Cert.DNSNames)) {
		t.Errorf("subject_alternative_names.dns_names = %#v, want %v", san["dns_names"], l.Cert.DNSNames)
	}
	if ips, ok := san["ips"].([]any); !ok || len(ips) != 0 {
		t.Errorf("subject_alternative_names.ips = %#v, want []", san["ips"])
	}
	if v, ok := obj["issued_at"]; !ok || v != nil {
		t.Errorf("issued_at = %#v (present %v), want null for an upload", v, ok)
	}
	if ts := checkTimestamp(t, "not_before", obj["not_before"]); !ts.Equal(l.Cert.NotBefore) {
		t.Errorf("not_before = %v, want %v", ts, l.Cert.NotBefore)
	}
	if ts := checkTimestamp(t, "not_after", obj["not_after"]); !ts.Equal(l.Cert.NotAfter) {
		t.Errorf("not_after = %v, want %v", ts, l.Cert.NotAfter)
	}
	if ku, _ := obj["key_usages"].([]any); !containsAny(ku, "digital_signature") {
		t.Errorf("key_usages = %#v, want digital_signature in it", obj["key_usages"])
	}
	if !reflect.DeepEqual(obj["extended_key_usages"], []any{"server_auth"}) {
		t.Errorf("extended_key_usages = %#v, want [server_auth]", obj["extended_key_usages"])
	}
	if obj["private_key_type"] != keyType {
		t.Errorf("private_key_type = %v, want %s", obj["private_key_type"], keyType)
	}
	if obj["issuer_common_name"] != ca.Inter.Subject.CommonName {
		t.Errorf("issuer_common_name = %v, want %s", obj["issuer_common_name"], ca.Inter.Subject.CommonName)
	}
	if s, _ := obj["serial_number"].(string); s != l.Serial || !hexRE.MatchString(s) {
		t.Errorf("serial_number = %v, want %s", obj["serial_number"], l.Serial)
	}
	for _, k := range []string{"subject_organization", "subject_organizational_unit", "subject_locality", "subject_province", "subject_country"} {
		if obj[k] != "" {
			t.Errorf("%s = %#v, want \"\"", k, obj[k])
		}
	}
	for _, k := range []string{"description", "metadata"} {
		if _, ok := obj[k].(string); !ok {
			t.Errorf("%s = %#v, want a string", k, obj[k])
		}
	}
	for k := range obj {
		if strings.Contains(strings.ToLower(k), "private_key") && k != "private_key_type" {
			t.Errorf("certificate object has key field %q", k)
		}
	}
	return id
}

// checkDomainObject checks a Domain object with an uploaded certificate.
func checkDomainObject(t *testing.T, obj map[string]any, name, certID string) string {
	t.Helper()
	id := checkID(t, "domain id", obj["id"], "rd_")
	if obj["uri"] != "/domaincerts/domains/"+id {
		t.Errorf("uri = %v", obj["uri"])
	}
	checkTimestamp(t, "created_at", obj["created_at"])
	if obj["domain"] != name {
		t.Errorf("domain = %v, want %s", obj["domain"], name)
	}
	want := map[string]any{"id": certID, "uri": "/domaincerts/tls_certificates/" + certID}
	if !reflect.DeepEqual(obj["certificate"], want) {
		t.Errorf("certificate = %#v, want %v", obj["certificate"], want)
	}
	if v, ok := obj["certificate_management_policy"]; !ok || v != nil {
		t.Errorf("certificate_management_policy = %#v (present %v), want null with an upload", v, ok)
	}
	for _, k := range []string{"description", "metadata", "cname_target", "certificate_management_status", "acme_challenge_cname_target"} {
		if _, ok := obj[k]; !ok {
			t.Errorf("domain object has no %q", k)
		}
	}
	return id
}

// certRef returns the ID of a domain's certificate reference.
func certRef(d map[string]any) string {
	ref, _ := d["certificate"].(map[string]any)
	id, _ := ref["id"].(string)
	return id
}

// pemHasLeaf reports whether the first CERTIFICATE block of s is l's leaf.
func pemHasLeaf(s string, l *testpki.ChainLeaf) bool {
	b, _ := pem.Decode([]byte(s))
	return b != nil && b.Type == "CERTIFICATE" && string(b.Bytes) == string(l.Cert.Raw)
}

// assertNoKeyInLog fails if Caddy's log holds a private key or a piece of
// one of the leaves' keys.
func assertNoKeyInLog(t *testing.T, c *caddyProc, leaves ...*testpki.ChainLeaf) {
	t.Helper()
	log := c.Log()
	if strings.Contains(log, "PRIVATE KEY") {
		t.Errorf("caddy log contains a PRIVATE KEY block")
	}
	for _, l := range leaves {
		lines := strings.Split(l.KeyPEM, "\n")
		if len(lines) > 2 && strings.Contains(log, lines[1][:40]) {
			t.Errorf("caddy log contains key material of %v", l.Cert.DNSNames)
		}
	}
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func containsAny(list []any, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// TestInternationalizedNames: a name given in Unicode is registered, shown
// and served as its A-label; IDNA maps compatibility forms (the KELVIN SIGN
// is a k) and refuses what it does not allow, with DOMAIN_INVALID.
func TestInternationalizedNames(t *testing.T) {
	ca := testpki.NewChain(t, "IDNA")
	c := startCaddy(t, caddyOpts{})
	const alabel = "xn--bcher-kva.example.test"
	l := ca.Leaf(t, alabel, "kelvin.example.test")
	certID := c.uploadLeaf(t, l)

	id, obj := c.createDomain(t, "BÜCHER.example.test", certID)
	if obj["domain"] != alabel {
		t.Errorf("domain = %v, want the A-label %s", obj["domain"], alabel)
	}
	expectServes(t, c, alabel, l, ca.Roots())
	status, resp := c.api(t, "POST", "/domaincerts/domains", map[string]any{"domain": alabel, "certificate_id": certID})
	assertAPIError(t, status, resp, http.StatusConflict, "DOMAIN_EXISTS")
	if d, _ := resp["details"].(map[string]any); d["domain_id"] != id {
		t.Errorf("DOMAIN_EXISTS details = %v, want domain_id %s", resp["details"], id)
	}

	_, obj = c.createDomain(t, "\u212aelvin.example.test", certID)
	if obj["domain"] != "kelvin.example.test" {
		t.Errorf("domain = %v, want kelvin.example.test (IDNA maps the KELVIN SIGN to k)", obj["domain"])
	}
	expectServes(t, c, "kelvin.example.test", l, ca.Roots())

	for _, name := range []string{"a\u200db.example.test", "xn--a.example.test", "bü_cher.example.test"} {
		status, resp := c.api(t, "POST", "/domaincerts/domains", map[string]any{"domain": name, "certificate_id": certID})
		assertAPIError(t, status, resp, http.StatusBadRequest, "DOMAIN_INVALID")
	}
	if n := c.count(t, "domains"); n != 2 {
		t.Errorf("%d domains, want 2", n)
	}
}
