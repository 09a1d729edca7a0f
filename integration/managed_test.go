package integration

// End-to-end tests of issue 4: domains created without a certificate get
// one from an ACME CA (an in-process Pebble) and keep it: DNS
// preconditions, DNS-01 for wildcards through the built-in DNS server,
// failures and retries, uploads replacing managed certificates, restarts
// and renewals. Every assertion about serving is a real TLS handshake.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestManagedIssued: a domain inside the operator's zones created without
// a certificate gets one from the default authority (ECDSA P-256), and an
// "rsa" policy gets an RSA-4096 one; both are served by SNI.
func TestManagedIssued(t *testing.T) {
	m := startManaged(t, nil)
	const name, rsaName = "shop.operator.test", "rsa.operator.test"

	id, obj := m.createManaged(t, name, nil)
	if pol, _ := obj["certificate_management_policy"].(map[string]any); pol["authority"] != "pebble" || pol["private_key_type"] != "ecdsa" {
		t.Errorf("default policy = %v, want {pebble ecdsa}", obj["certificate_management_policy"])
	}
	for _, k := range []string{"cname_target", "acme_challenge_cname_target"} {
		if v, ok := obj[k]; !ok || v != nil {
			t.Errorf("%s = %v (present %v), want null for a domain inside the zones", k, v, ok)
		}
	}
	rsaID, _ := m.createManaged(t, rsaName, map[string]any{
		"certificate_management_policy": map[string]any{"authority": "pebble", "private_key_type": "rsa"},
	})

	// Soon after creation: a running job without an error, unless the
	// certificate is already there. (The create response itself may still
	// have a null status: the job starts in the background.)
	d := m.waitDomain(t, id, "showing a status", 5*time.Second, func(d map[string]any) bool {
		return d["certificate_management_status"] != nil
	})
	if !isIssued(d) {
		job := jobOf(d)
		if job == nil || job["error_code"] != nil || job["retries_at"] != nil {
			t.Errorf("just after creation: provisioning_job = %v, want a running job (status %v)",
				job, d["certificate_management_status"])
		} else {
			checkTimestamp(t, "provisioning_job.started_at", job["started_at"])
		}
	}

	d = m.waitIssued(t, id)
	certID := checkIssuedDomain(t, d, "pebble", "ecdsa")
	cert := m.checkManagedCert(t, certID, name, "ecdsa")
	renews := renewsAt(t, d)
	notBefore := checkTimestamp(t, "not_before", cert["not_before"])
	notAfter := checkTimestamp(t, "not_after", cert["not_after"])
	// CertMagic renews at the time the CA suggests through ACME Renewal
	// Information (Pebble offers it), else half-way through (ratio 0.5):
	// either way inside the validity, and not in its first tenth
	if lo := notBefore.Add(notAfter.Sub(notBefore) / 10); renews.Before(lo) || !renews.Before(notAfter) {
		t.Errorf("renews_at %s, want within the validity %s – %s, after %s", renews, notBefore, notAfter, lo)
	}
	state := m.expectServesManaged(t, name, cert)
	if state != nil {
		if k, ok := state.PeerCertificates[0].PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("served key %T, want ECDSA P-256", state.PeerCertificates[0].PublicKey)
		}
	}
	expectServes(t, m.caddyProc, "SHOP.operator.test", &testpki.ChainLeaf{Serial: cert["serial_number"].(string)}, nil)
	expectFails(t, m.caddyProc, "other.operator.test")

	// The certificate is listed, and cannot be deleted while in use.
	found := false
	for _, c := range m.listAll(t, "/domaincerts/tls_certificates", "tls_certificates") {
		found = found || c["id"] == certID
	}
	if !found {
		t.Errorf("managed certificate %s is not in the certificate list", certID)
	}
	status, resp := m.api(t, "DELETE", "/domaincerts/tls_certificates/"+certID, nil)
	assertAPIError(t, status, resp, http.StatusConflict, "CERT_IN_USE")

	d = m.waitIssued(t, rsaID)
	rsaCertID := checkIssuedDomain(t, d, "pebble", "rsa")
	rsaCert := m.checkManagedCert(t, rsaCertID, rsaName, "rsa")
	if state := m.expectServesManaged(t, rsaName, rsaCert); state != nil {
		if k, ok := state.PeerCertificates[0].PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != 4096 {
			t.Errorf("served key %T, want RSA-4096", state.PeerCertificates[0].PublicKey)
		}
	}
	m.expectServesManaged(t, name, cert)
}

// TestManagedIssuedFromTerminal: Caddy run in a terminal (stdin open, no
// input) with no ACME email configured still provisions: nothing waits
// for an answer on stdin.
func TestManagedIssuedFromTerminal(t *testing.T) {
	m := startManagedWith(t, caddyOpts{IdleStdin: true}, nil)
	t.Cleanup(m.CloseStdin) // so that a stuck prompt does not hold up Stop
	const name = "tty.operator.test"
	id, _ := m.createManaged(t, name, nil)
	d := m.waitDomain(t, id, "issued", 15*time.Second, isIssued)
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")
	m.expectServesManaged(t, name, cert)
	if strings.Contains(m.Log(), "Email address:") {
		t.Errorf("caddy prompted on the terminal for an email address while provisioning a domain")
	}
}

// TestBrandedDomainWaitsForCNAME: a domain outside the operator's zones
// waits, with DNS_ERROR naming the record to create, until it CNAMEs to its
// cname_target; then it is issued with no further API call.
func TestBrandedDomainWaitsForCNAME(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		// retries_at is observed in the future only if the wait is
		// longer than one poll
		app["retry_min_interval"], app["retry_max_interval"] = "2s", "3s"
	})
	const name = "shop.brand-a.test"

	id, obj := m.createManaged(t, name, nil)
	target, _ := obj["cname_target"].(string)
	if !strings.HasSuffix(target, "."+cnameZone) || strings.Count(target, ".") != strings.Count(cnameZone, ".")+1 {
		t.Fatalf("cname_target = %v, want <label>.%s", obj["cname_target"], cnameZone)
	}
	if obj["acme_challenge_cname_target"] != nil {
		t.Errorf("acme_challenge_cname_target = %v, want null for a non-wildcard", obj["acme_challenge_cname_target"])
	}
	pebbleMark := m.p.logMark()

	want := "create a DNS record: " + name + " CNAME " + target
	m.waitJobError(t, id, "DNS_ERROR", want)
	before := time.Now()
	d := m.getDomain(t, id)
	checkJobError(t, d, "DNS_ERROR", before, 4*time.Second)
	if msg, _ := jobOf(d)["msg"].(string); !strings.Contains(msg, want) {
		t.Errorf("msg = %q, want it to contain %q", msg, want)
	}
	// It keeps waiting (and retrying), serves nothing and orders nothing.
	firstRetry := jobOf(d)["retries_at"]
	m.waitDomain(t, id, "retried", 10*time.Second, func(d map[string]any) bool {
		return jobCode(d) == "DNS_ERROR" && jobOf(d)["retries_at"] != firstRetry
	})
	expectFails(t, m.caddyProc, name)
	if n := pebbleOrders(m.p.LogSince(pebbleMark)); n != 0 {
		t.Errorf("pebble got %d orders before the CNAME existed, want 0", n)
	}
	// a customer who has not set up DNS yet is not a warning
	if n := countLogLines(m.Log(), "warn", "provisioning certificate failed"); n != 0 {
		t.Errorf("%d WARN lines for a domain waiting for its CNAME, want none", n)
	}

	// The customer creates the record; nothing else is called.
	m.setCNAME(t, name, target)
	d = m.waitIssued(t, id)
	certID := checkIssuedDomain(t, d, "pebble", "ecdsa")
	cert := m.checkManagedCert(t, certID, name, "ecdsa")
	m.expectServesManaged(t, name, cert)
	if d["cname_target"] != target {
		t.Errorf("cname_target changed to %v", d["cname_target"])
	}
}

// TestFixedCNAMETarget: with "cname_target" configured, every customer
// domain gets that target.
func TestFixedCNAMETarget(t *testing.T) {
	const target = "edge." + operatorZone
	m := startManaged(t, func(app map[string]any) {
		delete(app, "cname_zone")
		app["cname_target"] = target
	})
	const name = "www.brand-b.test"
	id, obj := m.createManaged(t, name, nil)
	if obj["cname_target"] != target {
		t.Fatalf("cname_target = %v, want %s", obj["cname_target"], target)
	}
	m.waitJobError(t, id, "DNS_ERROR", "create a DNS record: "+name+" CNAME "+target)
	m.setCNAME(t, name, target)
	d := m.waitIssued(t, id)
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")
	m.expectServesManaged(t, name, cert)
}

// TestWildcardDNS01: a wildcard outside the operator's zones is issued
// through DNS-01 once its _acme-challenge CNAME is in place (the traffic
// CNAME is not enough, and not needed), the TXT record served by the
// plugin's own DNS server; it covers one label only.
func TestWildcardDNS01(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		app["retry_min_interval"], app["retry_max_interval"] = "2s", "3s"
	})
	const name, base = "*.customer.test", "customer.test"

	// The built-in server is authoritative for the challenge zone.
	r, err := dnsQuery("udp", m.DNSServer, challengeZone, dns.TypeSOA)
	if err != nil || !r.Authoritative || len(r.Answer) != 1 {
		t.Errorf("SOA %s from the dns_server: %v, err %v; want one authoritative SOA", challengeZone, r, err)
	} else if soa, ok := r.Answer[0].(*dns.SOA); !ok || soa.Hdr.Name != challengeZone+"." {
		t.Errorf("SOA answer %v", r.Answer[0])
	}
	if r, err := dnsQuery("tcp", m.DNSServer, challengeZone, dns.TypeSOA); err != nil || !r.Authoritative {
		t.Errorf("SOA over TCP: %v, err %v", r, err)
	}

	id, obj := m.createManaged(t, name, nil)
	target, _ := obj["cname_target"].(string)
	acmeTarget, _ := obj["acme_challenge_cname_target"].(string)
	if !strings.HasSuffix(target, "."+cnameZone) {
		t.Fatalf("cname_target = %v, want <label>.%s", obj["cname_target"], cnameZone)
	}
	if !strings.HasSuffix(acmeTarget, "."+challengeZone) || acmeTarget == target {
		t.Fatalf("acme_challenge_cname_target = %v, want <label>.%s", obj["acme_challenge_cname_target"], challengeZone)
	}
	pebbleMark := m.p.logMark()

	want := "create a DNS record: _acme-challenge." + base + " CNAME " + acmeTarget
	m.waitJobError(t, id, "DNS_ERROR", want)
	before := time.Now()
	checkJobError(t, m.getDomain(t, id), "DNS_ERROR", before, 4*time.Second)

	// The traffic CNAME does not prove what DNS-01 needs.
	m.setCNAME(t, name, target)
	prev := jobOf(m.getDomain(t, id))["retries_at"]
	m.waitDomain(t, id, "retried with the traffic CNAME in place", 10*time.Second, func(d map[string]any) bool {
		msg, _ := jobOf(d)["msg"].(string)
		return jobOf(d)["retries_at"] != prev && jobCode(d) == "DNS_ERROR" && strings.Contains(msg, want)
	})
	expectFails(t, m.caddyProc, "x."+base)
	if n := pebbleOrders(m.p.LogSince(pebbleMark)); n != 0 {
		t.Errorf("pebble got %d orders before the _acme-challenge CNAME existed, want 0", n)
	}

	m.setCNAME(t, "_acme-challenge."+base, acmeTarget)
	d := m.waitIssued(t, id)
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")
	m.expectServesManaged(t, "x."+base, cert)
	m.expectServesManaged(t, "other."+base, cert)
	expectFails(t, m.caddyProc, base)
	expectFails(t, m.caddyProc, "a.b."+base)

	// Pebble validated through the CNAME into the built-in server, which
	// no longer serves the value once the order is done.
	log := m.p.LogSince(pebbleMark)
	if !strings.Contains(log, "TXT "+acmeTarget+".: forwarded to "+m.DNSServer+": NOERROR, 1 answers") {
		t.Errorf("the resolver never got the challenge TXT record from the dns_server for %s", acmeTarget)
	}
	if r, err := dnsQuery("udp", m.DNSServer, acmeTarget, dns.TypeTXT); r == nil || len(r.Answer) != 0 {
		t.Errorf("TXT %s after issuance: %v, err %v; want no value left", acmeTarget, r, err)
	}
}

// TestCAFailureThenRecovery: an authority whose CA is down gives
// INTERNAL_ERROR with the cause and a retry time; once the CA answers, the
// certificate is issued with no API call.
func TestCAFailureThenRecovery(t *testing.T) {
	caAddr := "127.0.0.1:" + strconv.Itoa(freePort(t)) // reserved; nothing listens yet
	m := startManaged(t, func(app map[string]any) {
		down := getPebble(t).ACMEIssuer()
		down["ca"] = "https://" + caAddr + "/dir"
		app["issuers"].(map[string]any)["later"] = down
		app["retry_min_interval"], app["retry_max_interval"] = "2s", "3s"
	})
	const name = "ca-down.operator.test"
	id, obj := m.createManaged(t, name, map[string]any{
		"certificate_management_policy": map[string]any{"authority": "later", "private_key_type": "ecdsa"},
	})
	if pol, _ := obj["certificate_management_policy"].(map[string]any); pol["authority"] != "later" {
		t.Errorf("policy = %v", obj["certificate_management_policy"])
	}

	d := m.waitDomain(t, id, "failing with INTERNAL_ERROR", 30*time.Second, func(d map[string]any) bool {
		return jobCode(d) == "INTERNAL_ERROR"
	})
	msg, _ := jobOf(d)["msg"].(string)
	if !strings.Contains(msg, caAddr) || !strings.Contains(msg, "connection refused") {
		t.Errorf("msg = %q, want the cause (connection refused by %s)", msg, caAddr)
	}
	before := time.Now()
	checkJobError(t, m.getDomain(t, id), "INTERNAL_ERROR", before, 4*time.Second)
	expectFails(t, m.caddyProc, name)

	m.p.ServeOn(t, caAddr)
	d = m.waitIssued(t, id)
	cert := m.checkManagedCert(t, checkIssuedDomain(t, d, "later", "ecdsa"), name, "ecdsa")
	m.expectServesManaged(t, name, cert)
}

// TestUploadReplacesManaged: attaching an upload to a managed domain drops
// its policy and serves the upload; detaching the policy of another, or
// deleting a managed domain, stops serving it and stops renewing it (their
// authority issues certificates so short that, while managed, they are
// renewed every few seconds).
func TestUploadReplacesManaged(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		tiny := getPebble(t).ACMEIssuer()
		tiny["profile"] = tinyProfile
		app["issuers"].(map[string]any)["tiny"] = tiny
	})
	const upName, detachName, goneName = "up.operator.test", "detach.operator.test", "gone.operator.test"
	tinyPolicy := map[string]any{"certificate_management_policy": map[string]any{"authority": "tiny", "private_key_type": "ecdsa"}}
	upID, _ := m.createManaged(t, upName, nil)
	detachID, _ := m.createManaged(t, detachName, tinyPolicy)
	goneID, _ := m.createManaged(t, goneName, tinyPolicy)
	upManagedID := certRef(m.waitIssued(t, upID))
	m.expectServesManaged(t, upName, m.getCert(t, upManagedID))
	// Positive control: while managed, the tiny certificates get renewed.
	for _, id := range []string{detachID, goneID} {
		first := certRef(m.waitIssued(t, id))
		m.waitDomain(t, id, "renewed", 3*tinyValidity, func(d map[string]any) bool {
			return isIssued(d) && certRef(d) != first
		})
	}
	m.expectServesPebble(t, detachName)
	m.expectServesPebble(t, goneName)

	ca := testpki.NewChain(t, "Replace")
	l := ca.Leaf(t, upName)
	uploadID := m.uploadLeaf(t, l)
	d := m.patchDomain(t, upID, map[string]any{"certificate_id": uploadID})
	if certRef(d) != uploadID {
		t.Errorf("certificate after PATCH = %v, want %s", d["certificate"], uploadID)
	}
	if d["certificate_management_policy"] != nil || d["certificate_management_status"] != nil {
		t.Errorf("policy %v, status %v after attaching an upload, want null and null",
			d["certificate_management_policy"], d["certificate_management_status"])
	}
	expectServes(t, m.caddyProc, upName, l, ca.Roots())
	if got := m.getDomain(t, upID); !reflect.DeepEqual(got, d) {
		t.Errorf("GET differs from the PATCH response:\n got %s\nwant %s", jsonString(got), jsonString(d))
	}
	// The replaced managed certificate's resource is gone with it.
	status, resp := m.api(t, "GET", "/domaincerts/tls_certificates/"+upManagedID, nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
	status, resp = m.api(t, "DELETE", "/domaincerts/tls_certificates/"+uploadID, nil)
	assertAPIError(t, status, resp, http.StatusConflict, "CERT_IN_USE")

	// However often the tiny ones renewed, each has one resource: the
	// certificate it serves.
	// (They keep renewing: a renewal between the two reads retries.)
	for _, id := range []string{detachID, goneID} {
		var mine []string
		var cur string
		for try := 0; try < 5; try++ {
			before := certRef(m.getDomain(t, id))
			mine = managedResources(t, m, id)
			if cur = certRef(m.getDomain(t, id)); cur == before {
				break
			}
		}
		if len(mine) != 1 || mine[0] != cur {
			t.Errorf("domain %s has certificate resources %v; want only its current one %s", id, mine, cur)
		}
	}

	// Detach management of one tiny domain, delete the other: their
	// certificate resources go with it.
	detachCert, goneCert := certRef(m.getDomain(t, detachID)), certRef(m.getDomain(t, goneID))
	m.mustAPI(t, http.StatusNoContent, "DELETE", "/domaincerts/domains/"+detachID+"/certificate_management_policy", nil)
	m.deleteDomain(t, goneID)
	for _, c := range []string{detachCert, goneCert} {
		status, resp := m.api(t, "GET", "/domaincerts/tls_certificates/"+c, nil)
		assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
	}
	// (also any a renewal made between the reads above and the deletes)
	for _, id := range []string{detachID, goneID} {
		if left := managedResources(t, m, id); len(left) != 0 {
			t.Errorf("domain %s: certificate resources %v left after management ended", id, left)
		}
	}
	d = m.getDomain(t, detachID)
	for _, k := range []string{"certificate_management_policy", "certificate_management_status", "certificate"} {
		if d[k] != nil {
			t.Errorf("%s after detaching the policy = %v, want null", k, d[k])
		}
	}
	expectFails(t, m.caddyProc, detachName)
	expectFails(t, m.caddyProc, goneName)
	expectServes(t, m.caddyProc, upName, l, nil)

	// Nothing obtains or renews them afterwards. A renewal already under
	// way when they were detached may finish first.
	time.Sleep(1500 * time.Millisecond)
	mark, pebbleMark := m.logMark(), m.p.logMark()
	time.Sleep(tinyValidity / 2)
	expectFails(t, m.caddyProc, detachName)
	expectFails(t, m.caddyProc, goneName)
	expectServes(t, m.caddyProc, upName, l, nil)
	if lines := obtainLines(m.logSince(mark), ""); len(lines) > 0 {
		t.Errorf("caddy obtained or renewed after management stopped:\n%s", strings.Join(lines, "\n"))
	}
	if n := pebbleOrders(m.p.LogSince(pebbleMark)); n != 0 {
		t.Errorf("pebble got %d orders after management stopped, want 0", n)
	}
	if d := m.getDomain(t, detachID); d["certificate_management_policy"] != nil || d["certificate_management_status"] != nil || d["certificate"] != nil {
		t.Errorf("detached domain changed: %s", jsonString(d))
	}
}

// TestManagedSurvivesRestart: after a restart the managed certificate is
// loaded from storage and served again, with no new order.
func TestManagedSurvivesRestart(t *testing.T) {
	m := startManaged(t, nil)
	const name = "restart.operator.test"
	id, _ := m.createManaged(t, name, nil)
	before := m.waitIssued(t, id)
	cert := m.getCert(t, certRef(before))
	serial := cert["serial_number"].(string)
	m.expectServesManaged(t, name, cert)

	mark, pebbleMark := m.logMark(), m.p.logMark()
	m.Restart()
	restarted := time.Now()
	m.waitServes(t, name, serial, 30*time.Second)
	if waited := time.Since(restarted); waited > 2*time.Second {
		t.Errorf("the managed certificate was served %s after the restart, want at once", waited.Round(time.Millisecond))
	}
	m.expectServesManaged(t, name, cert)

	after := m.waitDomain(t, id, "settled", 10*time.Second, isIssued)
	if !reflect.DeepEqual(after, before) {
		t.Errorf("domain changed across the restart:\nbefore %s\nafter %s", jsonString(before), jsonString(after))
	}
	if got := m.getCert(t, certRef(before)); !reflect.DeepEqual(got, cert) {
		t.Errorf("certificate changed across the restart:\nbefore %s\nafter %s", jsonString(cert), jsonString(got))
	}
	time.Sleep(2 * time.Second) // a wrong order would show by now
	if lines := obtainLines(m.logSince(mark), ""); len(lines) > 0 {
		t.Errorf("caddy obtained a certificate after the restart:\n%s", strings.Join(lines, "\n"))
	}
	if n := pebbleOrders(m.p.LogSince(pebbleMark)); n != 0 {
		t.Errorf("pebble got %d orders after the restart, want 0", n)
	}
	if ids := managedResources(t, m, id); len(ids) != 1 {
		t.Errorf("certificate resources of the domain after the restart: %v; want one", ids)
	}
}

// managedResources lists the IDs of the certificate resources that ACME
// issued for domain id.
func managedResources(t *testing.T, m *managed, id string) []string {
	t.Helper()
	var out []string
	for _, c := range m.listAll(t, "/domaincerts/tls_certificates", "tls_certificates") {
		if c["managed_domain_id"] == id {
			out = append(out, c["id"].(string))
		}
	}
	return out
}

// TestSwitchBackToManaged: a managed domain switched to an upload and back
// to management gets its stored certificate again (no new order), as one
// resource: the one it had went when the upload replaced it.
func TestSwitchBackToManaged(t *testing.T) {
	m := startManaged(t, nil)
	const name = "back.operator.test"
	id, _ := m.createManaged(t, name, nil)
	first := m.getCert(t, certRef(m.waitIssued(t, id)))

	ca := testpki.NewChain(t, "Back")
	l := ca.Leaf(t, name)
	m.patchDomain(t, id, map[string]any{"certificate_id": m.uploadLeaf(t, l)})
	expectServes(t, m.caddyProc, name, l, ca.Roots())
	if ids := managedResources(t, m, id); len(ids) != 0 {
		t.Errorf("managed resources while the upload is attached: %v; want none", ids)
	}

	pebbleMark := m.p.logMark()
	m.patchDomain(t, id, map[string]any{"certificate_management_policy": map[string]any{}})
	d := m.waitDomain(t, id, "managed again", issueWithin, func(d map[string]any) bool {
		return isIssued(d) && certRef(d) != "" && m.getCert(t, certRef(d))["managed_domain_id"] == id
	})
	again := m.getCert(t, certRef(d))
	if again["serial_number"] != first["serial_number"] {
		t.Errorf("managed again with serial %v; want the stored certificate %v", again["serial_number"], first["serial_number"])
	}
	m.expectServesManaged(t, name, again)
	if ids := managedResources(t, m, id); len(ids) != 1 {
		t.Errorf("managed resources: %v; want one", ids)
	}
	if n := pebbleOrders(m.p.LogSince(pebbleMark)); n != 0 {
		t.Errorf("pebble got %d orders; the stored certificate was still good", n)
	}
}

// TestManagedRenewal: a certificate from Pebble's short profile (valid
// shortValidity) is renewed in its renewal window; the domain points to a
// new certificate resource and handshakes get the new leaf.
func TestManagedRenewal(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		iss := getPebble(t).ACMEIssuer()
		iss["profile"] = shortProfile
		app["issuers"] = map[string]any{"pebble": iss}
	})
	const name = "renew.operator.test"
	id, _ := m.createManaged(t, name, nil)
	d := m.waitIssued(t, id)
	first := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")
	firstID := first["id"].(string)
	renews1 := renewsAt(t, d)
	nb := checkTimestamp(t, "not_before", first["not_before"])
	na := checkTimestamp(t, "not_after", first["not_after"])
	if life := na.Sub(nb); life > shortValidity+time.Second || life < shortValidity-2*time.Second {
		t.Fatalf("the first certificate is valid for %s, want Pebble's short profile (%s)", life, shortValidity)
	}
	m.expectServesManaged(t, name, first)

	d = m.waitDomain(t, id, "renewed", shortValidity+15*time.Second, func(d map[string]any) bool {
		return certRef(d) != "" && certRef(d) != firstID && isIssued(d)
	})
	second := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")
	if na2 := checkTimestamp(t, "not_after", second["not_after"]); !na2.After(na) {
		t.Errorf("renewed not_after %s is not after the first %s", na2, na)
	}
	if second["serial_number"] == first["serial_number"] {
		t.Errorf("renewed certificate has the same serial")
	}
	if renews2 := renewsAt(t, d); !renews2.After(renews1) {
		t.Errorf("renews_at after the renewal %s, want later than the first %s", renews2, renews1)
	}
	// The next handshake gets the renewed leaf (or a later renewal, since
	// the short certificates keep renewing).
	state, err := handshakeState(m.HTTPSAddr(), name)
	if err != nil {
		t.Fatalf("handshake after renewal: %v", err)
	}
	served := testpki.SerialHex(state.PeerCertificates[0].SerialNumber)
	if served == first["serial_number"] {
		t.Errorf("handshake after the renewal was recorded still serves the first serial %s (domain points to %s, serial %s)",
			served, second["id"], second["serial_number"])
	}
	verifyChain(t, state, m.p.IssuerRoots, name)
	// the first certificate's resource went once the renewed one served
	status, resp := m.api(t, "GET", "/domaincerts/tls_certificates/"+firstID, nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
}

// TestPolicyChangeObtainsNewCertificate: changing a managed domain's key
// type from ecdsa to rsa obtains an RSA certificate; until it is issued
// (here: until the customer's CNAME is back) the ECDSA one keeps serving
// and the status shows the job. The old certificate's resource goes once
// the new one serves, and the change holds over a restart.
func TestPolicyChangeObtainsNewCertificate(t *testing.T) {
	m := startManaged(t, nil)
	const name = "policy.customer-a.test"
	id, obj := m.createManaged(t, name, nil)
	target := obj["cname_target"].(string)
	m.setCNAME(t, name, target)
	first := m.checkManagedCert(t, checkIssuedDomain(t, m.waitIssued(t, id), "pebble", "ecdsa"), name, "ecdsa")
	m.expectServesManaged(t, name, first)

	m.p.DNS.Delete(name) // the new order will have to wait
	d := m.patchDomain(t, id, map[string]any{"certificate_management_policy": map[string]any{"authority": "pebble", "private_key_type": "rsa"}})
	if pol, _ := d["certificate_management_policy"].(map[string]any); pol["private_key_type"] != "rsa" {
		t.Fatalf("PATCH answered policy %v", d["certificate_management_policy"])
	}
	if certRef(d) != first["id"] {
		t.Errorf("certificate = %v right after the change; want the current one %v until the new one is issued", d["certificate"], first["id"])
	}
	if jobOf(d) == nil {
		t.Errorf("status %v right after the change; want a provisioning job", d["certificate_management_status"])
	}
	d = m.waitJobError(t, id, "DNS_ERROR", "create a DNS record")
	if certRef(d) != first["id"] {
		t.Errorf("certificate = %v while the new one cannot be issued; want %v", d["certificate"], first["id"])
	}
	state := m.expectServesManaged(t, name, first)
	if _, ok := state.PeerCertificates[0].PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("served a %T key while the RSA certificate is pending; want the ECDSA one", state.PeerCertificates[0].PublicKey)
	}

	m.setCNAME(t, name, target)
	d = m.waitDomain(t, id, "issued under the new policy", issueWithin, func(d map[string]any) bool {
		return isIssued(d) && certRef(d) != first["id"]
	})
	second := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "rsa"), name, "rsa")
	state = m.expectServesManaged(t, name, second)
	if k, ok := state.PeerCertificates[0].PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != 4096 {
		t.Errorf("served %T; want an RSA-4096 key", state.PeerCertificates[0].PublicKey)
	}
	status, resp := m.api(t, "GET", "/domaincerts/tls_certificates/"+first["id"].(string), nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")

	m.Restart()
	m.waitIssued(t, id)
	m.expectServesManaged(t, name, second)
}

// TestUploadToPolicyKeepsServing: a domain moving from an uploaded
// certificate to a management policy keeps serving the upload, and names
// it as its certificate, until the managed one is issued.
func TestUploadToPolicyKeepsServing(t *testing.T) {
	m := startManaged(t, nil)
	const name = "move.customer-b.test"
	ca := testpki.NewChain(t, "Move")
	l := ca.Leaf(t, name)
	uploadID := m.uploadLeaf(t, l)
	id, _ := m.createDomain(t, name, uploadID)
	expectServes(t, m.caddyProc, name, l, ca.Roots())

	d := m.patchDomain(t, id, map[string]any{"certificate_management_policy": map[string]any{}})
	if certRef(d) != uploadID {
		t.Fatalf("certificate = %v after the switch; want the upload %s until the managed one is issued", d["certificate"], uploadID)
	}
	target, _ := d["cname_target"].(string)
	if target == "" {
		t.Fatalf("no cname_target after the switch: %s", jsonString(d))
	}
	d = m.waitJobError(t, id, "DNS_ERROR", "create a DNS record")
	if certRef(d) != uploadID {
		t.Errorf("certificate = %v while the managed one is pending; want the upload", d["certificate"])
	}
	expectServes(t, m.caddyProc, name, l, ca.Roots())

	m.setCNAME(t, name, target)
	d = m.waitDomain(t, id, "issued", issueWithin, func(d map[string]any) bool {
		return isIssued(d) && certRef(d) != uploadID
	})
	managed := m.checkManagedCert(t, checkIssuedDomain(t, d, "pebble", "ecdsa"), name, "ecdsa")
	m.expectServesManaged(t, name, managed)
	// the upload is the user's: still there, and no longer in use
	m.getCert(t, uploadID)
	m.deleteCert(t, uploadID)
}
