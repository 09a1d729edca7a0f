package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

var adminClient = &http.Client{Timeout: 30 * time.Second}

// apiResult is one admin API response.
type apiResult struct {
	Status int
	Body   map[string]any // nil when the body is empty
	Raw    []byte
	Header http.Header
}

// do sends one admin API request without a testing.T, so goroutines can use
// it. body is JSON-encoded unless it is a []byte or string (sent as is).
// It checks nothing but transport and JSON decoding.
func (c *caddyProc) do(method, path string, body any) (apiResult, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return apiResult{}, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, "http://"+c.AdminAddr+path, rd)
	if err != nil {
		return apiResult{}, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return apiResult{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return apiResult{}, err
	}
	res := apiResult{Status: resp.StatusCode, Raw: raw, Header: resp.Header}
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &res.Body); err != nil {
			return res, fmt.Errorf("%s %s: %d with a body that is not a JSON object: %v: %q",
				method, path, resp.StatusCode, err, truncate(raw, 500))
		}
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) {
		return res, fmt.Errorf("%s %s: the response contains a private key", method, path)
	}
	return res, nil
}

// api sends one admin API request and returns the status and the decoded
// JSON object (nil for an empty body). A transport error, a non-JSON body
// or a private key in the response fails the test. JSON responses must say
// so in Content-Type.
func (c *caddyProc) api(t testing.TB, method, path string, body any) (int, map[string]any) {
	t.Helper()
	res, err := c.do(method, path, body)
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	if res.Body != nil {
		if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
		}
	}
	return res.Status, res.Body
}

// mustAPI is api that also requires the given status.
func (c *caddyProc) mustAPI(t testing.TB, want int, method, path string, body any) map[string]any {
	t.Helper()
	status, resp := c.api(t, method, path, body)
	if status != want {
		t.Fatalf("%s %s: status %d, want %d; body %v", method, path, status, want, resp)
	}
	return resp
}

// assertAPIError checks an error response: the status, and the body
// {"error", "error_code", "status_code", "msg", "details"} of the contract.
func assertAPIError(t testing.TB, status int, resp map[string]any, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("status %d, want %d (body %v)", status, wantStatus, resp)
	}
	if resp == nil {
		t.Errorf("error response has no JSON body, want error_code %s", wantCode)
		return
	}
	if got, _ := resp["error_code"].(string); got != wantCode {
		t.Errorf("error_code %q, want %q (body %v)", resp["error_code"], wantCode, resp)
	}
	if sc, ok := resp["status_code"].(float64); !ok || int(sc) != status {
		t.Errorf("status_code %v, want %d", resp["status_code"], status)
	}
	for _, k := range []string{"error", "msg"} {
		if s, ok := resp[k].(string); !ok || s == "" {
			t.Errorf("%q is %v, want a non-empty string", k, resp[k])
		}
	}
	details, ok := resp["details"].(map[string]any)
	if !ok {
		t.Errorf("details is %#v, want an object", resp["details"])
	}
	for k, v := range details {
		if _, ok := v.(string); !ok {
			t.Errorf("details[%q] is %#v, want a string (ngrok's clients decode details as strings)", k, v)
		}
	}
}

// uploadCert uploads a certificate and returns its ID and object.
func (c *caddyProc) uploadCert(t testing.TB, certPEM, keyPEM string) (string, map[string]any) {
	t.Helper()
	obj := c.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/tls_certificates", map[string]any{
		"certificate_pem": certPEM,
		"private_key_pem": keyPEM,
	})
	id, _ := obj["id"].(string)
	if id == "" {
		t.Fatalf("uploaded certificate has no id: %v", obj)
	}
	return id, obj
}

// uploadLeaf uploads a test leaf's chain and key.
func (c *caddyProc) uploadLeaf(t testing.TB, l *testpki.ChainLeaf) string {
	t.Helper()
	id, _ := c.uploadCert(t, l.ChainPEM, l.KeyPEM)
	return id
}

// createDomain creates a domain with an attached certificate (none, so
// managed, when certID is empty) and returns its ID and object.
func (c *caddyProc) createDomain(t testing.TB, name, certID string) (string, map[string]any) {
	t.Helper()
	req := map[string]any{"domain": name}
	if certID != "" {
		req["certificate_id"] = certID
	}
	obj := c.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/domains", req)
	id, _ := obj["id"].(string)
	if id == "" {
		t.Fatalf("created domain has no id: %v", obj)
	}
	return id, obj
}

// patchDomain sends PATCH /domaincerts/domains/{id} and requires 200.
func (c *caddyProc) patchDomain(t testing.TB, id string, body map[string]any) map[string]any {
	t.Helper()
	return c.mustAPI(t, http.StatusOK, "PATCH", "/domaincerts/domains/"+id, body)
}

// getDomain and getCert GET one record and require 200.
func (c *caddyProc) getDomain(t testing.TB, id string) map[string]any {
	t.Helper()
	return c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/domains/"+id, nil)
}

func (c *caddyProc) getCert(t testing.TB, id string) map[string]any {
	t.Helper()
	return c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/tls_certificates/"+id, nil)
}

func (c *caddyProc) deleteDomain(t testing.TB, id string) {
	t.Helper()
	c.mustAPI(t, http.StatusNoContent, "DELETE", "/domaincerts/domains/"+id, nil)
}

func (c *caddyProc) detachCert(t testing.TB, domainID string) {
	t.Helper()
	c.mustAPI(t, http.StatusNoContent, "DELETE", "/domaincerts/domains/"+domainID+"/certificate", nil)
}

func (c *caddyProc) deleteCert(t testing.TB, id string) {
	t.Helper()
	c.mustAPI(t, http.StatusNoContent, "DELETE", "/domaincerts/tls_certificates/"+id, nil)
}

// listAll follows a list (plural is "domains" or "tls_certificates") from
// path through next_page_uri until it is null and returns every item in
// order. It fails on a loop or more than 1000 pages.
func (c *caddyProc) listAll(t testing.TB, path, plural string) []map[string]any {
	t.Helper()
	var items []map[string]any
	seen := map[string]bool{}
	for page := 0; path != ""; page++ {
		if page > 1000 || seen[path] {
			t.Fatalf("list pagination loops at %q", path)
		}
		seen[path] = true
		resp := c.mustAPI(t, http.StatusOK, "GET", path, nil)
		list, ok := resp[plural].([]any)
		if !ok {
			t.Fatalf("GET %s: %q is %T, want an array (body %v)", path, plural, resp[plural], resp)
		}
		for _, it := range list {
			m, ok := it.(map[string]any)
			if !ok {
				t.Fatalf("GET %s: item %T, want an object", path, it)
			}
			items = append(items, m)
		}
		if u, ok := resp["uri"].(string); !ok || !strings.HasPrefix(u, "/domaincerts/") {
			t.Errorf("GET %s: uri %v, want an admin path", path, resp["uri"])
		}
		next, present := resp["next_page_uri"]
		if !present {
			t.Fatalf("GET %s: no next_page_uri key (want a path or null)", path)
		}
		switch n := next.(type) {
		case nil:
			path = ""
		case string:
			u, err := url.Parse(n)
			if err != nil || u.Host != "" && u.Host != c.AdminAddr {
				t.Fatalf("GET %s: next_page_uri %q is not an admin API path", path, n)
			}
			path = u.RequestURI()
		default:
			t.Fatalf("GET %s: next_page_uri is %T", path, next)
		}
	}
	return items
}

// count returns the number of items in a list.
func (c *caddyProc) count(t testing.TB, plural string) int {
	t.Helper()
	return len(c.listAll(t, "/domaincerts/"+plural, plural))
}

var (
	idRE   = regexp.MustCompile(`^(cert|rd)_[A-Za-z0-9_-]{16,}$`)
	hexRE  = regexp.MustCompile(`^[0-9a-f]+$`)
	zTimRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$`)
)

// checkTimestamp requires an RFC 3339 UTC time with the Z suffix.
func checkTimestamp(t testing.TB, what string, v any) time.Time {
	t.Helper()
	s, ok := v.(string)
	if !ok || !zTimRE.MatchString(s) {
		t.Errorf("%s = %#v, want RFC 3339 UTC with Z", what, v)
		return time.Time{}
	}
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Errorf("%s = %q: %v", what, s, err)
	}
	return ts
}

// checkID requires a contract ID with the given prefix ("cert_" or "rd_").
func checkID(t testing.TB, what string, v any, prefix string) string {
	t.Helper()
	s, _ := v.(string)
	if !strings.HasPrefix(s, prefix) || !idRE.MatchString(s) {
		t.Errorf("%s = %#v, want %s followed by at least 16 URL-safe characters", what, v, prefix)
	}
	return s
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "..."
}
