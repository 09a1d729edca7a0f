package integration

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// Timing of the ACME tests: every wait is a bounded poll.
const (
	pollEvery   = 200 * time.Millisecond
	issueWithin = 60 * time.Second
)

// The operator's DNS layout in the ACME tests.
const (
	operatorZone  = "operator.test"
	cnameZone     = "cname.operator.test"
	challengeZone = "acme.operator.test"
)

// managed is a Caddy whose domaincerts app manages certificates from the
// shared Pebble, with the built-in DNS server for challengeZone delegated
// to from the test resolver.
type managed struct {
	*caddyProc
	p *pebbleEnv
	// DNSServer is the plugin's dns_server address (UDP and TCP).
	DNSServer string
}

// managedApp is the domaincerts app configuration of the ACME tests.
func managedApp(p *pebbleEnv, dnsServer string) map[string]any {
	return map[string]any{
		"issuers":              map[string]any{"pebble": p.ACMEIssuer()},
		"default_authority":    "pebble",
		"zones":                []any{operatorZone},
		"cname_zone":           cnameZone,
		"challenge_zone":       challengeZone,
		"dns_server":           map[string]any{"listen": dnsServer},
		"resolvers":            []any{p.DNSAddr},
		"retry_min_interval":   "1s",
		"retry_max_interval":   "2s",
		"renew_check_interval": "1s",
		"renewal_window_ratio": 0.5,
	}
}

// startManaged starts Caddy on Pebble's validation ports with managedApp,
// edited by edit if not nil. On failure the test prints the Caddy log (see
// startCaddy) and what Pebble and the resolver logged during the test.
func startManaged(t *testing.T, edit func(app map[string]any)) *managed {
	t.Helper()
	return startManagedWith(t, caddyOpts{}, edit)
}

// startManagedWith is startManaged with more options for Caddy; App and
// the ports are set here.
func startManagedWith(t *testing.T, opts caddyOpts, edit func(app map[string]any)) *managed {
	t.Helper()
	p := getPebble(t)
	p.dumpLogOnFailure(t)
	port, err := freeUDPTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	dnsServer := "127.0.0.1:" + strconv.Itoa(port)
	app := managedApp(p, dnsServer)
	if edit != nil {
		edit(app)
	}
	p.DNS.Delegate(challengeZone, dnsServer)
	t.Cleanup(func() { p.DNS.Undelegate(challengeZone) })
	opts.App, opts.HTTPPort, opts.HTTPSPort = app, p.HTTPPort, p.TLSPort
	c := startCaddy(t, opts)
	return &managed{caddyProc: c, p: p, DNSServer: dnsServer}
}

// setCNAME adds a CNAME to the test resolver for the rest of the test.
func (m *managed) setCNAME(t *testing.T, name, target string) {
	t.Helper()
	m.p.DNS.SetCNAME(name, target)
	t.Cleanup(func() { m.p.DNS.Delete(name) })
}

// createManaged creates a domain without a certificate (body adds fields)
// and returns its ID and the create response.
func (m *managed) createManaged(t *testing.T, name string, body map[string]any) (string, map[string]any) {
	t.Helper()
	req := map[string]any{"domain": name}
	for k, v := range body {
		req[k] = v
	}
	obj := m.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/domains", req)
	id := checkID(t, "domain id", obj["id"], "rd_")
	if obj["domain"] != name {
		t.Errorf("domain = %v, want %s", obj["domain"], name)
	}
	return id, obj
}

// waitDomain polls GET /domaincerts/domains/{id} every pollEvery until
// cond holds, for at most within, and returns the object. On timeout it
// fails the test with the last object seen.
func (m *managed) waitDomain(t *testing.T, id, what string, within time.Duration, cond func(d map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	var last map[string]any
	for {
		status, d := m.api(t, "GET", "/domaincerts/domains/"+id, nil)
		if status != http.StatusOK {
			t.Fatalf("GET domain %s: status %d, body %v", id, status, d)
		}
		last = d
		if cond(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("domain %s: not %s within %s; last object:\n%s", id, what, within, jsonString(last))
		}
		time.Sleep(pollEvery)
	}
}

// waitIssued waits until the domain has a managed certificate and no
// provisioning job, and returns the domain object.
func (m *managed) waitIssued(t *testing.T, id string) map[string]any {
	t.Helper()
	return m.waitDomain(t, id, "issued", issueWithin, isIssued)
}

// isIssued reports whether a domain object shows a certificate, renews_at
// and no provisioning job.
func isIssued(d map[string]any) bool {
	st, _ := d["certificate_management_status"].(map[string]any)
	return certRef(d) != "" && st != nil && st["renews_at"] != nil && st["provisioning_job"] == nil
}

// renewsAt returns the renews_at of a domain object.
func renewsAt(t *testing.T, d map[string]any) time.Time {
	t.Helper()
	st, _ := d["certificate_management_status"].(map[string]any)
	return checkTimestamp(t, "renews_at", st["renews_at"])
}

// jobOf returns the provisioning_job of a domain object, or nil.
func jobOf(d map[string]any) map[string]any {
	st, _ := d["certificate_management_status"].(map[string]any)
	job, _ := st["provisioning_job"].(map[string]any)
	return job
}

// jobCode returns the error_code of the provisioning job, or "".
func jobCode(d map[string]any) string {
	code, _ := jobOf(d)["error_code"].(string)
	return code
}

// waitJobError waits until the provisioning job reports code and its msg
// contains want, and returns the domain object.
func (m *managed) waitJobError(t *testing.T, id, code, want string) map[string]any {
	t.Helper()
	return m.waitDomain(t, id, fmt.Sprintf("failing with %s %q", code, want), 30*time.Second, func(d map[string]any) bool {
		msg, _ := jobOf(d)["msg"].(string)
		return jobCode(d) == code && strings.Contains(msg, want)
	})
}

// checkJobError checks a failed provisioning job: the code, a started_at,
// and a retries_at that is still ahead of notBefore (a time taken just
// before the GET) and not further away than maxWait.
func checkJobError(t *testing.T, d map[string]any, code string, notBefore time.Time, maxWait time.Duration) {
	t.Helper()
	job := jobOf(d)
	if job == nil {
		t.Fatalf("no provisioning job: %s", jsonString(d))
	}
	if jobCode(d) != code {
		t.Errorf("error_code = %v, want %s", job["error_code"], code)
	}
	if d["certificate"] != nil {
		t.Errorf("certificate = %v while the job fails, want null", d["certificate"])
	}
	started := checkTimestamp(t, "provisioning_job.started_at", job["started_at"])
	retries := checkTimestamp(t, "provisioning_job.retries_at", job["retries_at"])
	if !retries.After(notBefore) {
		t.Errorf("retries_at %s is not in the future (GET sent at %s)", retries.Format(time.RFC3339Nano), notBefore.Format(time.RFC3339Nano))
	}
	if retries.After(time.Now().Add(maxWait)) {
		t.Errorf("retries_at %s is more than %s away", retries, maxWait)
	}
	if started.After(time.Now().Add(time.Second)) || retries.Before(started) {
		t.Errorf("started_at %s, retries_at %s: out of order", started, retries)
	}
}

// checkIssuedDomain checks a domain object with a managed certificate and
// returns the certificate's ID.
func checkIssuedDomain(t *testing.T, d map[string]any, authority, keyType string) string {
	t.Helper()
	pol, _ := d["certificate_management_policy"].(map[string]any)
	if pol["authority"] != authority || pol["private_key_type"] != keyType {
		t.Errorf("certificate_management_policy = %v, want {%s %s}", d["certificate_management_policy"], authority, keyType)
	}
	ref, _ := d["certificate"].(map[string]any)
	id := checkID(t, "certificate.id", ref["id"], "cert_")
	if ref["uri"] != "/domaincerts/tls_certificates/"+id {
		t.Errorf("certificate.uri = %v", ref["uri"])
	}
	st, _ := d["certificate_management_status"].(map[string]any)
	renews := checkTimestamp(t, "renews_at", st["renews_at"])
	if !renews.After(time.Now().Add(-time.Minute)) {
		t.Errorf("renews_at %s is in the past", renews)
	}
	if st["provisioning_job"] != nil {
		t.Errorf("provisioning_job = %v, want null", st["provisioning_job"])
	}
	return id
}

// checkManagedCert checks the certificate resource that ACME issued for
// name (a domain, possibly a wildcard) and returns it.
func (m *managed) checkManagedCert(t *testing.T, id, name, keyType string) map[string]any {
	t.Helper()
	obj := m.getCert(t, id)
	checkCertFields(t, obj, true)
	if obj["id"] != id {
		t.Errorf("certificate id = %v, want %s", obj["id"], id)
	}
	if obj["issued_at"] == nil {
		t.Errorf("issued_at is null for a certificate that ACME issued")
	} else {
		checkTimestamp(t, "issued_at", obj["issued_at"])
	}
	if obj["private_key_type"] != keyType {
		t.Errorf("private_key_type = %v, want %s", obj["private_key_type"], keyType)
	}
	sans, _ := obj["subject_alternative_names"].(map[string]any)
	if names, _ := sans["dns_names"].([]any); len(names) != 1 || names[0] != name {
		t.Errorf("subject_alternative_names.dns_names = %v, want [%s]", sans["dns_names"], name)
	}
	if ic := m.p.IssuerIntermediate.Subject.CommonName; obj["issuer_common_name"] != ic {
		t.Errorf("issuer_common_name = %v, want Pebble's %q", obj["issuer_common_name"], ic)
	}
	if s, _ := obj["serial_number"].(string); !hexRE.MatchString(s) {
		t.Errorf("serial_number = %v, want lowercase hex", obj["serial_number"])
	}
	if pemStr, _ := obj["certificate_pem"].(string); !strings.Contains(pemStr, "BEGIN CERTIFICATE") {
		t.Errorf("certificate_pem = %q", truncate([]byte(pemStr), 80))
	}
	checkTimestamp(t, "not_before", obj["not_before"])
	checkTimestamp(t, "not_after", obj["not_after"])
	return obj
}

// expectServesManaged requires a handshake for sni to present the leaf of
// the certificate resource cert (same serial), with a chain that verifies
// to Pebble's issuing root for sni, and returns the connection state.
func (m *managed) expectServesManaged(t *testing.T, sni string, cert map[string]any) *tls.ConnectionState {
	t.Helper()
	state, err := handshakeState(m.HTTPSAddr(), sni)
	if err != nil {
		t.Errorf("handshake for %q: %v, want the managed certificate %v", sni, err, cert["serial_number"])
		return nil
	}
	leaf := state.PeerCertificates[0]
	if got := testpki.SerialHex(leaf.SerialNumber); got != cert["serial_number"] {
		t.Errorf("handshake for %q served serial %s %v, want %v", sni, got, leaf.DNSNames, cert["serial_number"])
	}
	verifyChain(t, state, m.p.IssuerRoots, sni)
	return state
}

// expectServesPebble requires a handshake for sni to present a leaf that
// Pebble issued for it (whichever serial; for certificates that renew all
// the time).
func (m *managed) expectServesPebble(t *testing.T, sni string) {
	t.Helper()
	state, err := handshakeState(m.HTTPSAddr(), sni)
	if err != nil {
		t.Errorf("handshake for %q: %v, want a certificate from pebble", sni, err)
		return
	}
	verifyChain(t, state, m.p.IssuerRoots, sni)
}

// waitServes polls handshakes for sni until one presents serial, for at
// most within, and returns the leaf; it fails the test otherwise.
func (m *managed) waitServes(t *testing.T, sni, serial string, within time.Duration) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		state, err := handshakeState(m.HTTPSAddr(), sni)
		if err == nil && testpki.SerialHex(state.PeerCertificates[0].SerialNumber) == serial {
			return state.PeerCertificates[0]
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "serial " + testpki.SerialHex(state.PeerCertificates[0].SerialNumber)
		}
		if time.Now().After(deadline) {
			t.Fatalf("handshake for %q: want serial %s within %s, last got %s", sni, serial, within, last)
		}
		time.Sleep(pollEvery)
	}
}

// logMark returns the current length of Caddy's log, for logSince.
func (c *caddyProc) logMark() int { return len(c.Log()) }

// logSince returns what Caddy logged after mark.
func (c *caddyProc) logSince(mark int) string { return c.Log()[mark:] }

// obtainLines returns the lines of log that show CertMagic starting to
// obtain or renew a certificate for name ("" for any name).
func obtainLines(log, name string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		l := strings.ToLower(line)
		if !strings.Contains(l, "obtaining") && !strings.Contains(l, "renewing") &&
			!strings.Contains(l, "new order") {
			continue
		}
		if name == "" || strings.Contains(l, strings.ToLower(name)) {
			out = append(out, line)
		}
	}
	return out
}

var pebbleOrderRE = regexp.MustCompile(`Added order "[^"]*" to the db`)

// pebbleOrders counts the orders Pebble created in its log text.
func pebbleOrders(log string) int { return len(pebbleOrderRE.FindAllString(log, -1)) }

func jsonString(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
