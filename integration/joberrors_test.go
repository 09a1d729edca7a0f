package integration

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestResolverDownIsNotDNSError: when the operator's resolver does not
// answer, a customer's domain is not told to fix its DNS: the job fails
// with INTERNAL_ERROR naming the resolver, is retried, and orders nothing.
func TestResolverDownIsNotDNSError(t *testing.T) {
	port, err := freeUDPTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	down := "127.0.0.1:" + strconv.Itoa(port) // nothing listens there
	m := startManaged(t, func(app map[string]any) {
		app["resolvers"] = []any{down}
		app["retry_min_interval"], app["retry_max_interval"] = "2s", "3s"
	})
	pebbleMark := m.p.logMark()
	const name = "shop.resolver-down.test"
	id, obj := m.createManaged(t, name, nil)
	target, _ := obj["cname_target"].(string)
	m.setCNAME(t, name, target) // the customer did their part

	want := "could not check " + name + " CNAME " + target + ": no resolver answered (connection refused by " + down + ")"
	d := m.waitJobError(t, id, "INTERNAL_ERROR", want)
	if msg, _ := jobOf(d)["msg"].(string); strings.Contains(msg, "create a DNS record") {
		t.Errorf("msg = %q asks the customer to create a record that exists", msg)
	}
	before := time.Now()
	checkJobError(t, m.getDomain(t, id), "INTERNAL_ERROR", before, 4*time.Second)
	// it stays INTERNAL_ERROR over retries, never DNS_ERROR
	firstRetry := jobOf(d)["retries_at"]
	m.waitDomain(t, id, "retried", 15*time.Second, func(d map[string]any) bool {
		if code := jobCode(d); code != "INTERNAL_ERROR" {
			t.Fatalf("error_code %q after a retry, want INTERNAL_ERROR: %s", code, jsonString(d))
		}
		return jobOf(d)["retries_at"] != firstRetry
	})
	if n := pebbleOrders(m.p.LogSince(pebbleMark)); n != 0 {
		t.Errorf("pebble got %d orders while DNS could not be checked, want 0", n)
	}
	// a failure that repeats is logged at WARN once, not on every retry
	if n := countLogLines(m.Log(), "warn", "provisioning certificate failed"); n != 1 {
		t.Errorf("%d WARN lines for the failing job after two attempts, want 1", n)
	}
}

// countLogLines counts the JSON log lines of a level whose message
// contains msg.
func countLogLines(log, level, msg string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `"level":"`+level+`"`) && strings.Contains(line, msg) {
			n++
		}
	}
	return n
}

// TestUnsatisfiablePolicyRefused: a managed wildcard that the configuration
// can never issue (inside the operator's zones with only the built-in DNS
// server; a customer's wildcard with no challenge_zone) is refused with
// 400 POLICY_UNSATISFIABLE at create and at update, and nothing changes.
// An authority that needs no validation issues the same wildcard.
func TestUnsatisfiablePolicyRefused(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		delete(app, "challenge_zone")
		delete(app, "dns_server")
		app["issuers"].(map[string]any)["local"] = map[string]any{"module": "internal"}
	})

	for _, tt := range []struct{ name, want string }{
		{"*.inzone.operator.test", "configure a dns_provider"},
		{"*.customer-wild.test", "configure challenge_zone"},
	} {
		status, resp := m.api(t, "POST", "/domaincerts/domains", map[string]any{"domain": tt.name})
		assertAPIError(t, status, resp, http.StatusBadRequest, "POLICY_UNSATISFIABLE")
		if msg, _ := resp["msg"].(string); !strings.Contains(msg, tt.want) {
			t.Errorf("create %s: msg %q, want it to say %q", tt.name, msg, tt.want)
		}
	}
	if list := m.mustAPI(t, http.StatusOK, "GET", "/domaincerts/domains", nil); len(list["domains"].([]any)) != 0 {
		t.Errorf("refused creates left domains: %s", jsonString(list))
	}

	// an uploaded wildcard cannot move to a policy that cannot issue it
	const name = "*.moving.operator.test"
	ca := testpki.NewChain(t, "Unsat")
	l := ca.Leaf(t, name)
	certID := m.uploadLeaf(t, l)
	id, _ := m.createDomain(t, name, certID)
	status, resp := m.api(t, "PATCH", "/domaincerts/domains/"+id, map[string]any{
		"certificate_management_policy": map[string]any{"authority": "pebble"},
	})
	assertAPIError(t, status, resp, http.StatusBadRequest, "POLICY_UNSATISFIABLE")
	d := m.getDomain(t, id)
	if certRef(d) != certID || d["certificate_management_policy"] != nil {
		t.Errorf("after the refused update: %s; want the upload and no policy", jsonString(d))
	}
	expectServes(t, m.caddyProc, "x.moving.operator.test", l, ca.Roots())

	// the internal authority validates nothing, so it can issue it
	d = m.patchDomain(t, id, map[string]any{
		"certificate_management_policy": map[string]any{"authority": "local"},
	})
	pol, _ := d["certificate_management_policy"].(map[string]any)
	if pol["authority"] != "local" {
		t.Errorf("policy = %v, want authority local", d["certificate_management_policy"])
	}
	m.waitDomain(t, id, "issued by local", issueWithin, func(d map[string]any) bool {
		return isIssued(d) && certRef(d) != certID
	})
}

// TestRenewalFailureRetriesAt: a failed renewal reports, in retries_at,
// the renewal check (every renew_check_interval) at which CertMagic tries
// again, not a fixed ten minutes.
func TestRenewalFailureRetriesAt(t *testing.T) {
	const interval = 5 * time.Second
	m := startManaged(t, func(app map[string]any) {
		iss := getPebble(t).ACMEIssuer()
		iss["profile"] = shortProfile
		app["issuers"] = map[string]any{"pebble": iss}
		app["renew_check_interval"] = interval.String()
		app["renewal_window_ratio"] = 0.9
	})
	const name = "renewfail.operator.test"
	id, _ := m.createManaged(t, name, nil)
	m.waitIssued(t, id)
	// the CA can no longer reach this Caddy for the name
	m.p.DNS.SetA(name, "127.0.0.2")
	t.Cleanup(func() { m.p.DNS.Delete(name) })

	d := m.waitDomain(t, id, "failing to renew", shortValidity+3*interval, func(d map[string]any) bool {
		return jobCode(d) != ""
	})
	failedAt := time.Now()
	job := jobOf(d)
	retries := checkTimestamp(t, "provisioning_job.retries_at", job["retries_at"])
	started := checkTimestamp(t, "provisioning_job.started_at", job["started_at"])
	// CertMagic waits at least a minute after a first failure, then
	// tries at its next check
	if lo, hi := started.Add(time.Minute), failedAt.Add(time.Minute+interval+time.Second); retries.Before(lo) || retries.After(hi) {
		t.Errorf("retries_at %s, want between %s and %s (a minute after the failure, at a check every %s)",
			retries.Format(time.RFC3339), lo.Format(time.RFC3339), hi.Format(time.RFC3339), interval)
	}
	t.Logf("renewal failed at %s; retries_at %s", failedAt.UTC().Format(time.RFC3339), retries.Format(time.RFC3339))
	// (a renewal may have succeeded before the DNS change reached Pebble:
	// the certificate is the current one, not necessarily the first)
	if certRef(d) == "" {
		t.Errorf("certificate = null while the renewal fails, want the current one")
	}
}

// TestUnsatisfiableAfterReload: a managed wildcard stored while the
// configuration could issue it, then loaded by a configuration that
// cannot (the challenge_zone removed by a reload through the admin API),
// stops retrying: INTERNAL_ERROR, retries_at null, and a msg that says
// what to configure. Configuring it again resumes the job.
func TestUnsatisfiableAfterReload(t *testing.T) {
	m := startManaged(t, nil)
	const name = "*.reload-wild.test"
	id, _ := m.createManaged(t, name, nil)
	m.waitJobError(t, id, "DNS_ERROR", "create a DNS record")

	cfg := m.Config
	app := cfg["apps"].(map[string]any)["domaincerts"].(map[string]any)
	zone, server := app["challenge_zone"], app["dns_server"]
	delete(app, "challenge_zone")
	delete(app, "dns_server")
	m.mustAPI(t, http.StatusOK, "POST", "/load", cfg)

	d := m.waitJobError(t, id, "INTERNAL_ERROR", "configure challenge_zone")
	if job := jobOf(d); job["retries_at"] != nil {
		t.Errorf("retries_at = %v for a policy the configuration cannot satisfy, want null", job["retries_at"])
	}
	if d["certificate_management_policy"] == nil {
		t.Errorf("the reload dropped the domain's policy: %s", jsonString(d))
	}

	app["challenge_zone"], app["dns_server"] = zone, server
	m.mustAPI(t, http.StatusOK, "POST", "/load", cfg)
	m.waitJobError(t, id, "DNS_ERROR", "create a DNS record")
}

// TestPolicyAuthorityChange: moving a managed domain to another authority
// obtains a certificate from it; the first one serves until then, and its
// resource goes once the new one serves, leaving one.
func TestPolicyAuthorityChange(t *testing.T) {
	m := startManagedWith(t, caddyOpts{Mutate: func(cfg map[string]any, c *caddyProc) {
		cfg["apps"].(map[string]any)["pki"] = map[string]any{
			"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}},
		}
	}}, func(app map[string]any) {
		app["issuers"].(map[string]any)["local"] = map[string]any{"module": "internal"}
	})
	const name = "authority.operator.test"
	id, _ := m.createManaged(t, name, nil)
	first := m.checkManagedCert(t, checkIssuedDomain(t, m.waitIssued(t, id), "pebble", "ecdsa"), name, "ecdsa")
	m.expectServesManaged(t, name, first)

	m.patchDomain(t, id, map[string]any{"certificate_management_policy": map[string]any{"authority": "local"}})
	d := m.waitDomain(t, id, "issued by local", issueWithin, func(d map[string]any) bool {
		return isIssued(d) && certRef(d) != first["id"]
	})
	checkIssuedDomain(t, d, "local", "ecdsa")
	second := m.getCert(t, certRef(d))
	if ic, _ := second["issuer_common_name"].(string); !strings.Contains(ic, "Caddy Local Authority") {
		t.Errorf("issuer_common_name = %q, want Caddy's internal CA", ic)
	}
	if got := servedSerial(t, m.caddyProc, name); got != second["serial_number"] {
		t.Errorf("%s serves %s, want the new certificate %v", name, got, second["serial_number"])
	}
	status, resp := m.api(t, "GET", "/domaincerts/tls_certificates/"+first["id"].(string), nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
	if res := managedResources(t, m, id); len(res) != 1 || res[0] != certRef(d) {
		t.Errorf("managed resources %v, want only %s", res, certRef(d))
	}
}
