package integration

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestRandomTargets: cname_target and acme_challenge_cname_target are
// random per registration: two domains get unrelated ones, and a name
// deleted and registered again gets new ones, so the CNAME its former
// customer left in place does not validate the new registration.
func TestRandomTargets(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		app["retry_min_interval"], app["retry_max_interval"] = "1s", "2s"
	})
	pebbleMark := m.p.logMark()
	_, a := m.createManaged(t, "a.random.test", nil)
	_, b := m.createManaged(t, "b.random.test", nil)
	_, w := m.createManaged(t, "*.random.test", nil)
	ta, tb := a["cname_target"].(string), b["cname_target"].(string)
	tw, cw := w["cname_target"].(string), w["acme_challenge_cname_target"].(string)
	seen := map[string]bool{}
	for _, target := range []string{ta, tb, tw} {
		label, zone, _ := strings.Cut(target, ".")
		if zone != cnameZone || len(label) != 16 {
			t.Errorf("cname_target %q, want a 16-character label under %s", target, cnameZone)
		}
		if seen[target] {
			t.Errorf("cname_target %q given twice", target)
		}
		seen[target] = true
	}
	if label, zone, _ := strings.Cut(cw, "."); zone != challengeZone || len(label) != 16 {
		t.Errorf("acme_challenge_cname_target %q, want a 16-character label under %s", cw, challengeZone)
	}

	// the former customer of a.random.test set the CNAME, then left
	m.setCNAME(t, "a.random.test", ta)
	idA := a["id"].(string)
	m.waitIssued(t, idA)
	m.deleteDomain(t, idA)
	id2, a2 := m.createManaged(t, "a.random.test", nil)
	ta2 := a2["cname_target"].(string)
	if ta2 == ta || !strings.HasSuffix(ta2, "."+cnameZone) {
		t.Fatalf("cname_target after registering the name again = %q, want a new one (was %q)", ta2, ta)
	}
	m.waitJobError(t, id2, "DNS_ERROR", "create a DNS record: a.random.test CNAME "+ta2+" (found CNAME to "+ta+")")
	if d := m.getDomain(t, id2); d["certificate"] != nil {
		t.Errorf("the new registration got certificate %v through the former customer's CNAME", d["certificate"])
	}
	if n := pebbleOrders(m.p.LogSince(pebbleMark)); n != 1 {
		t.Errorf("pebble got %d orders, want 1 (the first registration's)", n)
	}
	status, resp := m.api(t, "GET", "/domaincerts/domains/"+idA, nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
}

// TestProvisionNow: a customer domain waiting on its CNAME, with retries an
// hour apart, is issued within seconds of the CNAME being added when
// provision is called. A domain without a policy is NOT_MANAGED; requests
// closer than the rate limit to the previous attempt start that much later.
func TestProvisionNow(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		app["retry_min_interval"], app["retry_max_interval"] = "1h", "1h"
	})
	const name = "now.provision.test"
	id, obj := m.createManaged(t, name, nil)
	target := obj["cname_target"].(string)
	d := m.waitJobError(t, id, "DNS_ERROR", "create a DNS record")
	if r := checkTimestamp(t, "retries_at", jobOf(d)["retries_at"]); time.Until(r) < 50*time.Minute {
		t.Fatalf("retries_at %s, want about an hour away", r)
	}

	// rate limit: the first attempt started moments ago
	before := time.Now()
	d = m.mustAPI(t, http.StatusAccepted, "POST", "/domaincerts/domains/"+id+"/provision", nil)
	if d["id"] != id {
		t.Fatalf("provision answered %v, want the domain", d)
	}
	r := checkTimestamp(t, "retries_at", jobOf(d)["retries_at"])
	if r.Before(before.Add(2*time.Second)) || r.After(before.Add(11*time.Second)) {
		t.Errorf("retries_at %s after a request right after an attempt; want up to 10 s after that attempt", r.Format(time.RFC3339))
	}
	// that attempt still finds no CNAME
	m.waitDomain(t, id, "failed again", 20*time.Second, func(d map[string]any) bool {
		rt, _ := jobOf(d)["retries_at"].(string)
		return jobCode(d) == "DNS_ERROR" && rt != "" && rt > time.Now().Add(50*time.Minute).UTC().Format(time.RFC3339)
	})
	if seen := time.Now(); seen.Before(r.Add(-time.Second)) {
		t.Errorf("the requested attempt had run by %s, before the retries_at %s it announced: the rate limit did not hold",
			seen.UTC().Format(time.RFC3339), r.Format(time.RFC3339))
	}

	// the customer fixes DNS and asks again: issued in seconds
	m.setCNAME(t, name, target)
	start := time.Now()
	m.mustAPI(t, http.StatusAccepted, "POST", "/domaincerts/domains/"+id+"/provision", map[string]any{})
	d = m.waitDomain(t, id, "issued after provision", 30*time.Second, isIssued)
	t.Logf("issued %s after the provision call", time.Since(start).Round(time.Millisecond))
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")
	m.expectServesManaged(t, name, cert)

	// no policy: NOT_MANAGED
	ca := testpki.NewChain(t, "Provision")
	l := ca.Leaf(t, "upload.provision.test")
	upID, _ := m.createDomain(t, "upload.provision.test", m.uploadLeaf(t, l))
	status, resp := m.api(t, "POST", "/domaincerts/domains/"+upID+"/provision", nil)
	assertAPIError(t, status, resp, http.StatusBadRequest, "NOT_MANAGED")
	status, resp = m.api(t, "POST", "/domaincerts/domains/rd_doesnotexist0000000000/provision", nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
	status, resp = m.api(t, "GET", "/domaincerts/domains/"+id+"/provision", nil)
	assertAPIError(t, status, resp, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
	status, resp = m.api(t, "POST", "/domaincerts/domains/"+id+"/provision", map[string]any{"now": true})
	assertAPIError(t, status, resp, http.StatusBadRequest, "BAD_REQUEST")
}

// TestProvisioningTimeout: a first issuance that keeps failing for
// provisioning_timeout stops retrying (retries_at null, the error kept, msg
// saying how to try again) and makes no more attempts; provision starts it
// again and it is issued, and so does a PATCH that gives the same policy
// again.
func TestProvisioningTimeout(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		app["retry_min_interval"], app["retry_max_interval"] = "1s", "1s"
		app["provisioning_timeout"] = "3s"
	})
	const name = "timeout.provision.test"
	id, obj := m.createManaged(t, name, nil)
	d := m.waitDomain(t, id, "stopped", 30*time.Second, func(d map[string]any) bool {
		job := jobOf(d)
		return jobCode(d) == "DNS_ERROR" && job["retries_at"] == nil
	})
	msg, _ := jobOf(d)["msg"].(string)
	for _, want := range []string{"create a DNS record", "POST /domaincerts/domains/" + id + "/provision"} {
		if !strings.Contains(msg, want) {
			t.Errorf("msg %q, want it to say %q", msg, want)
		}
	}
	mark := m.p.logMark()
	time.Sleep(3 * time.Second)
	if after := m.getDomain(t, id); after["updated_at"] != d["updated_at"] {
		t.Errorf("the stopped job still writes: updated_at %v then %v", d["updated_at"], after["updated_at"])
	}
	if strings.Contains(m.p.LogSince(mark), name) {
		t.Errorf("the stopped job still looks up %s:\n%s", name, m.p.LogSince(mark))
	}

	m.setCNAME(t, name, obj["cname_target"].(string))
	m.mustAPI(t, http.StatusAccepted, "POST", "/domaincerts/domains/"+id+"/provision", nil)
	d = m.waitDomain(t, id, "issued after provision", 30*time.Second, isIssued)
	m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")

	// the other way back: a PATCH that gives the same policy again
	const patched = "timeout-patch.provision.test"
	pid, pobj := m.createManaged(t, patched, nil)
	m.waitDomain(t, pid, "stopped", 30*time.Second, func(d map[string]any) bool {
		return jobCode(d) == "DNS_ERROR" && jobOf(d)["retries_at"] == nil
	})
	m.setCNAME(t, patched, pobj["cname_target"].(string))
	d = m.mustAPI(t, http.StatusOK, "PATCH", "/domaincerts/domains/"+pid,
		map[string]any{"certificate_management_policy": pobj["certificate_management_policy"]})
	if jobOf(d)["retries_at"] == nil && !isIssued(d) {
		t.Errorf("the PATCH answered %v; want the job started again (retries_at set) or issued", d)
	}
	d = m.waitDomain(t, pid, "issued after the PATCH", 30*time.Second, isIssued)
	m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), patched, "ecdsa")
}

// TestApexByEdgeAddresses: with edge_addresses configured, a customer's
// apex name (no CNAME possible) passes the DNS check when its A records
// are all edge addresses, and is issued; one record elsewhere keeps it at
// DNS_ERROR, naming that address.
func TestApexByEdgeAddresses(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		app["edge_addresses"] = []any{"127.0.0.1"}
		app["retry_min_interval"], app["retry_max_interval"] = "1s", "2s"
	})
	const good, bad = "apex-good.test", "apex-bad.test"
	m.p.DNS.SetA(good, "127.0.0.1")
	m.p.DNS.SetA(bad, "127.0.0.1", "127.0.0.3")
	t.Cleanup(func() { m.p.DNS.Delete(good); m.p.DNS.Delete(bad) })

	goodID, goodObj := m.createManaged(t, good, nil)
	badID, badObj := m.createManaged(t, bad, nil)
	d := m.waitIssued(t, goodID)
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), good, "ecdsa")
	m.expectServesManaged(t, good, cert)

	want := "create a DNS record: " + bad + " CNAME " + badObj["cname_target"].(string) +
		" (found no CNAME record); or, for a name that cannot be a CNAME (a zone apex), point " + bad +
		" at the edge: give it A/AAAA records with edge addresses only (127.0.0.1) (found A 127.0.0.3, which is not an edge address)"
	m.waitJobError(t, badID, "DNS_ERROR", want)
	expectFails(t, m.caddyProc, bad)

	// a CNAME that reaches the edge is not an apex: a former customer's
	// CNAME to their own target must not validate the name's next
	// registrant
	const leftover = "apex-leftover.test"
	goodTarget := goodObj["cname_target"].(string)
	m.setCNAME(t, leftover, goodTarget)
	leftID, _ := m.createManaged(t, leftover, nil)
	m.waitJobError(t, leftID, "DNS_ERROR", "(found a CNAME to "+goodTarget+", which is not this domain's target)")
	expectFails(t, m.caddyProc, leftover)
}

// TestCertificateBeforeTraffic: with delegate_dns01 "all", a customer
// domain that still points elsewhere (here an address where nothing
// answers) gets its certificate through DNS-01 once _acme-challenge CNAMEs
// to its acme_challenge_cname_target, with no traffic CNAME; until then
// the status names both ways.
func TestCertificateBeforeTraffic(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		app["delegate_dns01"] = "all"
		app["retry_min_interval"], app["retry_max_interval"] = "1s", "2s"
	})
	const name = "migrating.customer-c.test"
	m.p.DNS.SetA(name, "127.0.0.3") // the customer's current host
	t.Cleanup(func() { m.p.DNS.Delete(name) })
	id, obj := m.createManaged(t, name, nil)
	target, _ := obj["cname_target"].(string)
	acmeTarget, _ := obj["acme_challenge_cname_target"].(string)
	if !strings.HasSuffix(acmeTarget, "."+challengeZone) || !strings.HasSuffix(target, "."+cnameZone) {
		t.Fatalf("targets %q, %q; want one under %s and one under %s", target, acmeTarget, cnameZone, challengeZone)
	}
	want := "create a DNS record: _acme-challenge." + name + " CNAME " + acmeTarget +
		" (found no CNAME record) to get the certificate before traffic moves; or, to move traffic now, create a DNS record: " +
		name + " CNAME " + target
	m.waitJobError(t, id, "DNS_ERROR", want)

	m.setCNAME(t, "_acme-challenge."+name, acmeTarget)
	d := m.waitIssued(t, id)
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")
	// (the name's A record, 127.0.0.3, rules out HTTP-01 and TLS-ALPN-01)
	m.expectServesManaged(t, name, cert) // the edge is ready when traffic moves
}
