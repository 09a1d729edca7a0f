package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/integration/testevents"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// recordedEvent is a line of the test event recorder's file.
type recordedEvent = testevents.Record

// withEventRecorder runs the test Caddy with an events app whose one
// subscription, to every event, records to a file; it returns the file.
func withEventRecorder(t *testing.T, opts *caddyOpts) string {
	t.Helper()
	return withSlowEventRecorder(t, opts, 0)
}

// withSlowEventRecorder is withEventRecorder with a handler that holds
// each event for delay before recording it.
func withSlowEventRecorder(t *testing.T, opts *caddyOpts, delay time.Duration) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "events.jsonl")
	opts.Bin = testCaddyBin(t)
	prev := opts.Mutate
	opts.Mutate = func(cfg map[string]any, c *caddyProc) {
		if prev != nil {
			prev(cfg, c)
		}
		cfg["apps"].(map[string]any)["events"] = map[string]any{
			"subscriptions": []any{map[string]any{
				"handlers": []any{map[string]any{"handler": "testrecorder", "file": file, "delay": delay.String()}},
			}},
		}
	}
	return file
}

// readEvents returns the events recorded so far.
func readEvents(t *testing.T, file string) []recordedEvent {
	t.Helper()
	f, err := os.Open(file)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []recordedEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e recordedEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("event line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// waitEvent waits for an event of that name from the domaincerts app
// whose data holds every key of match with that value.
func waitEvent(t *testing.T, file, name string, match map[string]any) recordedEvent {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, e := range readEvents(t, file) {
			if e.Name != name || e.Origin != "domaincerts" {
				continue
			}
			ok := true
			for k, v := range match {
				if fmt.Sprint(e.Data[k]) != fmt.Sprint(v) {
					ok = false
				}
			}
			if ok {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event with %v; recorded:\n%s", name, match, jsonString(readEvents(t, file)))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// opensslLeaf makes a self-signed ECDSA certificate for name with openssl,
// valid for days, and returns its PEM and key.
func opensslLeaf(t *testing.T, name string, days int) (certPEM, keyPEM string) {
	t.Helper()
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-days", strconv.Itoa(days), "-subj", "/CN="+name, "-addext", "subjectAltName=DNS:"+name,
		"-keyout", key, "-out", cert).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	c, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	k, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(c), string(k)
}

// TestEventsAndMetrics: an operator's events handler sees the plugin's
// events with their fields (uploads, domains, an expiring upload, Pebble
// issuing a managed certificate, a CA outage), and /metrics counts them.
func TestEventsAndMetrics(t *testing.T) {
	opts := caddyOpts{}
	file := withEventRecorder(t, &opts)
	caAddr := "127.0.0.1:" + strconv.Itoa(freePort(t)) // nothing listens: a CA outage
	m := startManagedWith(t, opts, func(app map[string]any) {
		down := getPebble(t).ACMEIssuer()
		down["ca"] = "https://" + caAddr + "/dir"
		app["issuers"].(map[string]any)["down"] = down
		app["retry_min_interval"], app["retry_max_interval"] = "1h", "1h"
	})

	// an upload that ends in 5 days: accepted, logged at WARN once, and
	// certificate_expiring
	const soon = "soon.events.test"
	certPEM, keyPEM := opensslLeaf(t, soon, 5)
	mark := m.logMark()
	cert := m.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/tls_certificates",
		map[string]any{"certificate_pem": certPEM, "private_key_pem": keyPEM})
	certID := cert["id"].(string)
	if fp, _ := cert["fingerprint"].(string); len(fp) != 64 || strings.ToLower(fp) != fp {
		t.Errorf("fingerprint %q, want 64 lowercase hex digits", cert["fingerprint"])
	}
	up := waitEvent(t, file, "certificate_uploaded", map[string]any{"certificate_id": certID})
	if up.Data["subject_common_name"] != soon || up.Data["not_after"] != cert["not_after"] {
		t.Errorf("certificate_uploaded data %v; want subject_common_name %s, not_after %v", up.Data, soon, cert["not_after"])
	}
	exp := waitEvent(t, file, "certificate_expiring", map[string]any{"certificate_id": certID})
	if d, _ := exp.Data["days_left"].(float64); d < 4 || d > 5 || exp.Data["not_after"] != cert["not_after"] {
		t.Errorf("certificate_expiring data %v; want days_left 4 or 5", exp.Data)
	}
	if n := countLogLines(m.logSince(mark), "warn", "uploaded certificate expires soon"); n != 1 {
		t.Errorf("%d WARN lines for the expiring upload, want 1", n)
	}
	notAfter, err := time.Parse(time.RFC3339, cert["not_after"].(string))
	if err != nil {
		t.Fatal(err)
	}
	values := metricValues(t, m.caddyProc)
	for name, want := range map[string]float64{
		`domaincerts_certificates_expiring{source="upload",within="expired"}`:        0,
		`domaincerts_certificates_expiring{source="upload",within="7d"}`:             1,
		`domaincerts_certificates_expiring{source="upload",within="14d"}`:            1,
		`domaincerts_certificates_expiring{source="upload",within="30d"}`:            1,
		`domaincerts_certificates_expiring{source="managed",within="7d"}`:            0,
		`domaincerts_certificate_earliest_expiry_timestamp_seconds{source="upload"}`: float64(notAfter.Unix()),
	} {
		if v, present := values[name]; !present || v != want {
			t.Errorf("after the expiring upload: %s = %v (present %v), want %v", name, v, present, want)
		}
	}

	// an upload that has already ended: accepted, certificate_expired,
	// and the expired bucket
	const gone = "gone.events.test"
	goneLeaf := testpki.NewChain(t, "events").LeafWith(t, testpki.LeafOptions{
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}, gone)
	goneCert := m.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/tls_certificates",
		map[string]any{"certificate_pem": goneLeaf.ChainPEM, "private_key_pem": goneLeaf.KeyPEM})
	goneID := goneCert["id"].(string)
	expired := waitEvent(t, file, "certificate_expired", map[string]any{"certificate_id": goneID})
	if expired.Data["not_after"] != goneCert["not_after"] {
		t.Errorf("certificate_expired data %v; want not_after %v", expired.Data, goneCert["not_after"])
	}
	if v := metricValues(t, m.caddyProc)[`domaincerts_certificates_expiring{source="upload",within="expired"}`]; v != 1 {
		t.Errorf(`after the expired upload: domaincerts_certificates_expiring{source="upload",within="expired"} = %v, want 1`, v)
	}
	m.mustAPI(t, http.StatusNoContent, "DELETE", "/domaincerts/tls_certificates/"+goneID, nil)

	domID, _ := m.createDomain(t, soon, certID)
	waitEvent(t, file, "domain_created", map[string]any{"domain_id": domID, "domain": soon})
	m.mustAPI(t, http.StatusOK, "PATCH", "/domaincerts/domains/"+domID, map[string]any{"description": "shop of a customer"})
	waitEvent(t, file, "domain_updated", map[string]any{"domain_id": domID, "domain": soon})

	// Pebble issues a managed certificate: CertMagic's events, under
	// Caddy's names, with domain_id
	const managedName = "events-managed.operator.test"
	m.p.DNS.SetA(managedName, "127.0.0.1")
	t.Cleanup(func() { m.p.DNS.Delete(managedName) })
	mID, _ := m.createManaged(t, managedName, nil)
	m.waitIssued(t, mID)
	waitEvent(t, file, "cert_obtaining", map[string]any{"identifier": managedName, "domain_id": mID})
	waitEvent(t, file, "cert_obtained", map[string]any{"identifier": managedName, "domain_id": mID})

	// a CA outage: provisioning_failed with the job's status
	const downName = "events-down.operator.test"
	m.p.DNS.SetA(downName, "127.0.0.1")
	t.Cleanup(func() { m.p.DNS.Delete(downName) })
	downID, _ := m.createManaged(t, downName, map[string]any{
		"certificate_management_policy": map[string]any{"authority": "down", "private_key_type": "ecdsa"},
	})
	failed := waitEvent(t, file, "provisioning_failed", map[string]any{"domain_id": downID, "domain": downName, "error_code": "INTERNAL_ERROR"})
	waitEvent(t, file, "cert_failed", map[string]any{"identifier": downName, "domain_id": downID})
	d := m.waitJobError(t, downID, "INTERNAL_ERROR", caAddr)
	if failed.Data["retries_at"] != jobOf(d)["retries_at"] || !strings.Contains(fmt.Sprint(failed.Data["msg"]), caAddr) {
		t.Errorf("provisioning_failed data %v; want the status's retries_at %v and a msg naming %s", failed.Data, jobOf(d)["retries_at"], caAddr)
	}

	// handshakes: one served (the upload, by its serial), and one for a
	// name without a domain
	got, err := handshake(t, m.HTTPSAddr(), soon)
	if err != nil || got.SerialNumber.Text(16) != cert["serial_number"] {
		t.Errorf("handshake for %s: %v, err %v; want the upload, serial %v", soon, got, err, cert["serial_number"])
	}
	expectFails(t, m.caddyProc, "nobody.events.test")
	expectFails(t, m.caddyProc, "")       // no SNI
	expectFails(t, m.caddyProc, downName) // a domain without a certificate yet

	values = metricValues(t, m.caddyProc)
	for name, ok := range map[string]func(float64) bool{
		`domaincerts_domains{state="uploaded"}`:                                func(v float64) bool { return v == 1 },
		`domaincerts_domains{state="issued"}`:                                  func(v float64) bool { return v == 1 },
		`domaincerts_domains{state="failing"}`:                                 func(v float64) bool { return v == 1 },
		`domaincerts_domains{state="provisioning"}`:                            func(v float64) bool { return v == 0 },
		`domaincerts_domains{state="none"}`:                                    func(v float64) bool { return v == 0 },
		`domaincerts_provisioning_failures_total{error_code="INTERNAL_ERROR"}`: func(v float64) bool { return v >= 1 },
		`domaincerts_handshakes_total{result="served"}`:                        func(v float64) bool { return v == 1 },
		`domaincerts_handshakes_total{result="no_domain"}`:                     func(v float64) bool { return v == 1 },
		`domaincerts_handshakes_total{result="no_sni"}`:                        func(v float64) bool { return v == 1 },
		`domaincerts_handshakes_total{result="no_certificate"}`:                func(v float64) bool { return v == 1 },
		`domaincerts_handshakes_total{result="fallback"}`:                      func(v float64) bool { return v == 0 },
		`domaincerts_certificate_earliest_expiry_timestamp_seconds{source="managed"}`: func(v float64) bool {
			return v > float64(time.Now().Unix())
		},
	} {
		if v, present := values[name]; !present || !ok(v) {
			t.Errorf("%s = %v (present %v)", name, v, present)
		}
	}

	// deletions
	m.mustAPI(t, http.StatusNoContent, "DELETE", "/domaincerts/domains/"+domID, nil)
	waitEvent(t, file, "domain_deleted", map[string]any{"domain_id": domID, "domain": soon})
	m.mustAPI(t, http.StatusNoContent, "DELETE", "/domaincerts/tls_certificates/"+certID, nil)
	waitEvent(t, file, "certificate_deleted", map[string]any{"certificate_id": certID, "subject_common_name": soon})
	values = metricValues(t, m.caddyProc)
	if v := values[`domaincerts_certificates_expiring{source="upload",within="7d"}`]; v != 0 {
		t.Errorf("the expiring upload is deleted, but the 7d bucket counts %v", v)
	}
	if _, present := values[`domaincerts_certificate_earliest_expiry_timestamp_seconds{source="upload"}`]; present {
		t.Error("no upload is left, but an earliest upload expiry is reported")
	}
}

// TestSlowEventHandler: with an events handler that takes 2 s per event,
// four API writes in a row are answered without waiting for it (they
// would take at least 8 s if each API call waited for its event; the
// bound, 4 s, leaves room for a slow machine), and every event still
// reaches the handler.
func TestSlowEventHandler(t *testing.T) {
	opts := caddyOpts{}
	file := withSlowEventRecorder(t, &opts, 2*time.Second)
	c := startCaddy(t, opts)
	leaf := testpki.NewChain(t, "slow events").Leaf(t, "slow.events.test")
	start := time.Now()
	cert := c.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/tls_certificates",
		map[string]any{"certificate_pem": leaf.ChainPEM, "private_key_pem": leaf.KeyPEM})
	certID := cert["id"].(string)
	dom := c.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/domains",
		map[string]any{"domain": "slow.events.test", "certificate_id": certID})
	domID := dom["id"].(string)
	c.mustAPI(t, http.StatusOK, "PATCH", "/domaincerts/domains/"+domID, map[string]any{"description": "slow"})
	c.mustAPI(t, http.StatusNoContent, "DELETE", "/domaincerts/domains/"+domID, nil)
	took := time.Since(start)
	if took > 4*time.Second {
		t.Errorf("four API writes took %s with a 2 s events handler; an API call waited for its event", took)
	}
	// the handler has finished at most one of these events per 2 s since
	// the first call (Caddy's own events at start-up are not counted)
	n := 0
	for _, e := range readEvents(t, file) {
		if e.Origin == "domaincerts" {
			n++
		}
	}
	if most := int(took / (2 * time.Second)); n > most {
		t.Errorf("%d events recorded %s after the first call; the handler takes 2 s each, so at most %d", n, took, most)
	}
	waitEvent(t, file, "certificate_uploaded", map[string]any{"certificate_id": certID})
	waitEvent(t, file, "domain_created", map[string]any{"domain_id": domID})
	waitEvent(t, file, "domain_updated", map[string]any{"domain_id": domID})
	waitEvent(t, file, "domain_deleted", map[string]any{"domain_id": domID})
}

// TestExpiryAnnouncedOncePerDay: two instances on one storage, each with
// its own events handler and looking every second, announce each
// certificate that ends within expiry_warning once between them: an
// expiring upload (by the instance that took it), and one that enters the
// window when a reload widens expiry_warning, with the domains that use
// it.
func TestExpiryAnnouncedOncePerDay(t *testing.T) {
	storage := map[string]any{"module": "file_system", "root": t.TempDir()}
	var nodes []*caddyProc
	var files []string
	for range 2 {
		opts := caddyOpts{Storage: storage, App: map[string]any{"expiry_warning": "240h", "expiry_check_interval": "1s"}}
		files = append(files, withEventRecorder(t, &opts))
		nodes = append(nodes, startCaddy(t, opts))
	}
	a, b := nodes[0], nodes[1]
	announced := func(certID string) int {
		n := 0
		for _, f := range files {
			for _, e := range readEvents(t, f) {
				if e.Name == "certificate_expiring" && e.Origin == "domaincerts" && e.Data["certificate_id"] == certID {
					n++
				}
			}
		}
		return n
	}
	upload := func(c *caddyProc, name string, days int) string {
		certPEM, keyPEM := opensslLeaf(t, name, days)
		return c.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/tls_certificates",
			map[string]any{"certificate_pem": certPEM, "private_key_pem": keyPEM})["id"].(string)
	}

	// 20 days left, outside the 10-day window; 5 days left, inside
	later := upload(a, "later.expiry.test", 20)
	domID, _ := a.createDomain(t, "later.expiry.test", later)
	soon := upload(b, "soon.expiry.test", 5)
	waitEvent(t, files[1], "certificate_expiring", map[string]any{"certificate_id": soon})
	time.Sleep(3 * time.Second) // both instances look three times
	if n := announced(soon); n != 1 {
		t.Errorf("the 5-day upload was announced %d times by the two instances; want once", n)
	}
	if n := announced(later); n != 0 {
		t.Errorf("the 20-day upload was announced %d times with a 10-day expiry_warning; want none", n)
	}
	// both instances count both certificates
	for i, c := range nodes {
		values := metricValues(t, c)
		if v7, v30 := values[`domaincerts_certificates_expiring{source="upload",within="7d"}`], values[`domaincerts_certificates_expiring{source="upload",within="30d"}`]; v7 != 1 || v30 != 2 {
			t.Errorf("instance %d: uploads within 7d %v, within 30d %v; want 1 and 2", i, v7, v30)
		}
	}

	// a reload widens the window to 30 days on both: the 20-day upload is
	// announced once, with its domain
	for _, c := range nodes {
		c.Config["apps"].(map[string]any)["domaincerts"].(map[string]any)["expiry_warning"] = "720h"
		c.mustAPI(t, http.StatusOK, "POST", "/load", c.Config)
	}
	deadline := time.Now().Add(20 * time.Second)
	for announced(later) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	if n := announced(later); n != 1 {
		t.Fatalf("after widening expiry_warning, the 20-day upload was announced %d times; want once", n)
	}
	for _, f := range files {
		for _, e := range readEvents(t, f) {
			if e.Name == "certificate_expiring" && e.Data["certificate_id"] == later {
				if ids := fmt.Sprint(e.Data["domain_ids"]); ids != "["+domID+"]" {
					t.Errorf("certificate_expiring domain_ids %s; want [%s]", ids, domID)
				}
				if d, _ := e.Data["days_left"].(float64); d < 19 || d > 20 {
					t.Errorf("certificate_expiring days_left %v; want 19 or 20", e.Data["days_left"])
				}
			}
		}
	}
	if n := announced(soon); n != 1 {
		t.Errorf("the 5-day upload was announced %d times in the day; want once", n)
	}
}

// TestUnknownNamesQuiet makes 500 handshakes for names that no domain has,
// through a catch-all policy with Pebble as its issuer: fewer than 5 lines
// at WARN or above, no order, each counted. It runs with the API contract's
// plain manager config and with the domaincerts on-demand permission.
func TestUnknownNamesQuiet(t *testing.T) {
	p := getPebble(t)
	for _, tc := range []struct {
		name       string
		permission bool
	}{
		{"manager only", false},
		{"with permission", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			automation := map[string]any{
				"policies": []any{map[string]any{
					"get_certificate": []any{map[string]any{"via": "domaincerts"}},
					"issuers":         []any{p.ACMEIssuer()},
				}},
			}
			if tc.permission {
				automation["on_demand"] = map[string]any{"permission": map[string]any{"module": "domaincerts"}}
			}
			m := startManagedWith(t, caddyOpts{TLS: map[string]any{"automation": automation}}, nil)
			mark, pebbleMark := m.logMark(), m.p.logMark()
			const n = 500
			for i := range n {
				expectFails(t, m.caddyProc, fmt.Sprintf("scan-%d.unknown.test", i))
			}
			log := m.logSince(mark)
			if loud := countLogLines(log, "warn", "") + countLogLines(log, "error", ""); loud >= 5 {
				t.Errorf("%d lines at WARN or above for %d unknown-name handshakes; want fewer than 5", loud, n)
			}
			if orders := pebbleOrders(m.p.LogSince(pebbleMark)); orders != 0 {
				t.Errorf("pebble got %d orders for unknown names, want 0", orders)
			}
			if v := metricValues(t, m.caddyProc)[`domaincerts_handshakes_total{result="no_domain"}`]; v < n {
				t.Errorf(`domaincerts_handshakes_total{result="no_domain"} = %v, want at least %d`, v, n)
			}
		})
	}
}
