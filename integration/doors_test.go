package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// doorClient calls the API through an HTTP handler door, as a control
// plane on another host would.
type doorClient struct {
	t      *testing.T
	origin string // http://127.0.0.1:<port>
	auth   func(*http.Request)
}

func (d *doorClient) call(method, uri string, body any) (int, map[string]any) {
	d.t.Helper()
	status, raw := d.callRaw(method, uri, body)
	var obj map[string]any
	if len(raw) > 0 && json.Valid(raw) {
		if err := json.Unmarshal(raw, &obj); err != nil {
			d.t.Fatalf("%s %s: %v\n%s", method, uri, err, raw)
		}
	}
	return status, obj
}

// callRaw makes the request and returns its status and body as they are.
// A JSON body must say it is JSON, and no body may hold a private key.
func (d *doorClient) callRaw(method, uri string, body any) (int, []byte) {
	d.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, d.origin+uri, rd)
	if err != nil {
		d.t.Fatal(err)
	}
	if d.auth != nil {
		d.auth(req)
	}
	res, err := adminClient.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, uri, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		d.t.Fatalf("%s %s: reading the body: %v", method, uri, err)
	}
	if json.Valid(raw) && len(raw) > 0 && !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		d.t.Fatalf("%s %s: a JSON body with Content-Type %q", method, uri, res.Header.Get("Content-Type"))
	}
	if strings.Contains(string(raw), "PRIVATE KEY") {
		d.t.Fatalf("%s %s: the response holds a private key", method, uri)
	}
	return res.StatusCode, raw
}

func (d *doorClient) must(want int, method, uri string, body any) map[string]any {
	d.t.Helper()
	status, obj := d.call(method, uri, body)
	if status != want {
		d.t.Fatalf("%s %s: status %d, want %d; body %v", method, uri, status, want, obj)
	}
	return obj
}

// withAPIServer adds a plain HTTP server on a free port whose routes are
// routes, and returns its origin. The server writes access logs (to the
// default log, which the harness captures at DEBUG), so that a test can
// check what a request leaves in Caddy's log.
func withAPIServer(t *testing.T, opts *caddyOpts, routes []any) string {
	t.Helper()
	port := freePort(t)
	prev := opts.Mutate
	opts.Mutate = func(cfg map[string]any, c *caddyProc) {
		if prev != nil {
			prev(cfg, c)
		}
		servers := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
		servers["api"] = map[string]any{
			"listen":          []any{"127.0.0.1:" + strconv.Itoa(port)},
			"routes":          routes,
			"automatic_https": map[string]any{"disable": true},
			"logs":            map[string]any{},
		}
	}
	return "http://127.0.0.1:" + strconv.Itoa(port)
}

// accessLogged returns the access log entries of the server's requests
// whose URI begins with uriPrefix, each with the request's headers as
// logged.
func accessLogged(t *testing.T, log, uriPrefix string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(log) {
		var entry struct {
			Logger  string `json:"logger"`
			Request struct {
				URI     string         `json:"uri"`
				Headers map[string]any `json:"headers"`
			} `json:"request"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil || !strings.HasPrefix(entry.Logger, "http.log.access") {
			continue
		}
		if strings.HasPrefix(entry.Request.URI, uriPrefix) {
			out = append(out, entry.Request.Headers)
		}
	}
	return out
}

// assertCredentialsUnlogged checks that Caddy's log has access log lines for
// requests under uriPrefix that carried an Authorization header (so a
// logged credential would be there to find), and that none of secrets
// appears anywhere in the log.
func assertCredentialsUnlogged(t *testing.T, log, uriPrefix string, secrets ...string) {
	t.Helper()
	withAuth := 0
	for _, h := range accessLogged(t, log, uriPrefix) {
		if _, ok := h["Authorization"]; ok {
			withAuth++
		}
	}
	if withAuth == 0 {
		t.Errorf("no access log line for a request under %s with its Authorization header; the check for credentials in the log would find nothing", uriPrefix)
	}
	for i, s := range secrets {
		if strings.Contains(log, s) {
			t.Errorf("Caddy's log holds credential %d of %d given", i+1, len(secrets))
		}
	}
}

func itemsOf(t *testing.T, list map[string]any, key string) []map[string]any {
	t.Helper()
	raw, ok := list[key].([]any)
	if !ok {
		t.Fatalf("list has no %q array: %v", key, list)
	}
	out := make([]map[string]any, len(raw))
	for i, v := range raw {
		out[i] = v.(map[string]any)
	}
	return out
}

// TestHTTPHandlerDoor: the API on a site route under /dc, behind Caddy's
// basic_auth: 401 without credentials; with them, the same service as the
// admin API (a domain created through either is seen and served by both),
// with uri fields and next_page_uri under the mount; lookup by name,
// filters, unknown query parameters refused, error details as strings.
func TestHTTPHandlerDoor(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	opts := caddyOpts{}
	origin := withAPIServer(t, &opts, []any{map[string]any{
		"match": []any{map[string]any{"path": []any{"/dc/*"}}},
		"handle": []any{map[string]any{"handler": "subroute", "routes": []any{
			map[string]any{"handle": []any{map[string]any{"handler": "rewrite", "strip_path_prefix": "/dc"}}},
			map[string]any{"handle": []any{
				map[string]any{"handler": "authentication", "providers": map[string]any{"http_basic": map[string]any{
					"accounts": []any{map[string]any{"username": "ops", "password": string(hash)}}}}},
				map[string]any{"handler": "domaincerts_api"},
			}},
		}}},
	}})
	c := startCaddy(t, opts)
	// basic_auth answers a request without credentials itself (401 and
	// a challenge, no body of the door's); what matters is that it stops
	// the request before the door
	anon := &doorClient{t: t, origin: origin}
	if status, _ := anon.call("GET", "/dc/domains", nil); status != http.StatusUnauthorized {
		t.Fatalf("without credentials: status %d, want 401", status)
	}
	api := &doorClient{t: t, origin: origin, auth: func(r *http.Request) { r.SetBasicAuth("ops", "s3cret") }}

	ca := testpki.NewChain(t, "Door")
	leaf := ca.Leaf(t, "door.example.test", "*.door.example.test")
	cert := api.must(http.StatusCreated, "POST", "/dc/tls_certificates",
		map[string]any{"certificate_pem": leaf.ChainPEM, "private_key_pem": leaf.KeyPEM})
	certID := cert["id"].(string)
	if cert["uri"] != "/dc/tls_certificates/"+certID {
		t.Errorf("certificate uri %v, want /dc/tls_certificates/%s", cert["uri"], certID)
	}
	d := api.must(http.StatusCreated, "POST", "/dc/domains", map[string]any{"domain": "door.example.test", "certificate_id": certID})
	domID := d["id"].(string)
	if d["uri"] != "/dc/domains/"+domID || d["certificate"].(map[string]any)["uri"] != "/dc/tls_certificates/"+certID {
		t.Errorf("domain uri %v, certificate %v; want them under /dc", d["uri"], d["certificate"])
	}
	// the uri a client is given works, through the door
	api.must(http.StatusOK, "GET", d["uri"].(string), nil)
	// the same service: the admin API sees it, a handshake gets it
	if got := c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/domains/"+domID, nil); got["uri"] != "/domaincerts/domains/"+domID {
		t.Errorf("admin API uri %v", got["uri"])
	}
	if got, err := handshake(t, c.HTTPSAddr(), "door.example.test"); err != nil || got.SerialNumber.Text(16) != leaf.Serial {
		t.Errorf("handshake: %v, %v; want serial %s", got, err, leaf.Serial)
	}

	// a domain created on the admin API, listed through the door
	c.createDomain(t, "a.door.example.test", certID)
	c.createDomain(t, "b.door.example.test", certID)
	page := api.must(http.StatusOK, "GET", "/dc/domains?limit=2", nil)
	if page["uri"] != "/dc/domains?limit=2" || len(itemsOf(t, page, "domains")) != 2 {
		t.Fatalf("first page: %v", page)
	}
	next, _ := page["next_page_uri"].(string)
	if !strings.HasPrefix(next, "/dc/domains?limit=2&before_id=") {
		t.Fatalf("next_page_uri %q, want /dc/domains?limit=2&before_id=...", next)
	}
	rest := api.must(http.StatusOK, "GET", next, nil)
	if items := itemsOf(t, rest, "domains"); len(items) != 1 || items[0]["id"] != domID || rest["next_page_uri"] != nil {
		t.Fatalf("second page: %v", rest)
	}

	// lookup by name, on both doors
	for _, tc := range []struct {
		query string
		want  int
	}{
		{"domain=door.example.test", 1},
		{"domain=DOOR.example.test", 1},
		{"domain=nobody.example.test", 0},
		{"filter=" + url.QueryEscape(`obj.domain == "a.door.example.test"`), 1},
		{"filter=" + url.QueryEscape(`obj.id == "`+domID+`" || obj.domain == "b.door.example.test"`), 2},
		{"filter=" + url.QueryEscape(`obj.id == "rd_nothing"`), 0},
	} {
		for _, base := range []string{"/dc/domains", "/domaincerts/domains"} {
			var list map[string]any
			if base == "/dc/domains" {
				list = api.must(http.StatusOK, "GET", base+"?"+tc.query, nil)
			} else {
				list = c.mustAPI(t, http.StatusOK, "GET", base+"?"+tc.query, nil)
			}
			if items := itemsOf(t, list, "domains"); len(items) != tc.want || list["next_page_uri"] != nil {
				t.Errorf("%s?%s: %d items, next %v; want %d", base, tc.query, len(items), list["next_page_uri"], tc.want)
			}
		}
	}
	// a selection pages like any list, its next page keeping the filter
	f := url.QueryEscape(`obj.domain == "a.door.example.test" || obj.domain == "b.door.example.test"`)
	first := api.must(http.StatusOK, "GET", "/dc/domains?limit=1&filter="+f, nil)
	next, _ = first["next_page_uri"].(string)
	if len(itemsOf(t, first, "domains")) != 1 || !strings.Contains(next, "filter=") {
		t.Fatalf("filtered first page: %v", first)
	}
	second := api.must(http.StatusOK, "GET", next, nil)
	if items := itemsOf(t, second, "domains"); len(items) != 1 || items[0]["id"] == itemsOf(t, first, "domains")[0]["id"] || second["next_page_uri"] != nil {
		t.Fatalf("filtered second page: %v", second)
	}
	for _, tc := range []struct {
		method, uri, code string
	}{
		{"GET", "/dc/domains?domain=bad..name", "DOMAIN_INVALID"},
		{"GET", "/dc/domains?domain=", "BAD_REQUEST"},
		{"GET", "/dc/domains?domain", "BAD_REQUEST"},
		{"GET", "/dc/domains?filter=", "BAD_REQUEST"},
		{"GET", "/dc/tls_certificates?filter=", "BAD_REQUEST"},
		{"GET", "/dc/domains?domain=&filter=" + url.QueryEscape(`obj.domain == "a.door.example.test"`), "BAD_REQUEST"},
		{"GET", "/dc/domains?domain=door.example.test&filter=", "BAD_REQUEST"},
		{"GET", "/dc/domains?domain=door.example.test&filter=" + url.QueryEscape(`obj.domain == "door.example.test"`), "BAD_REQUEST"},
		{"GET", "/dc/domains?dmain=door.example.test", "BAD_REQUEST"},
		{"GET", "/dc/domains?limit=1&limit=2", "BAD_REQUEST"},
		{"GET", "/dc/domains?filter=" + url.QueryEscape(`obj.description == "x"`), "BAD_REQUEST"},
		{"GET", "/dc/tls_certificates?filter=" + url.QueryEscape(`obj.domain == "x"`), "BAD_REQUEST"},
		{"GET", "/dc/domains/" + domID + "?verbose=1", "BAD_REQUEST"},
		{"DELETE", "/dc/tls_certificates/" + certID, "CERT_IN_USE"},
		{"GET", "/dc/nothing", "NOT_FOUND"},
		{"GET", "/dc/stored_certificates", "NOT_FOUND"}, // the admin endpoint's alone
	} {
		status, resp := api.call(tc.method, tc.uri, nil)
		assertAPIError(t, status, resp, statusOf(tc.code), tc.code)
	}
	if status, resp := c.api(t, "GET", "/domaincerts/tls_certificates?limt=5", nil); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp["msg"]), `"limt"`) {
		t.Errorf("admin API with an unknown parameter: %d %v; want 400 naming it", status, resp)
	}
	// an empty selector says so, on both doors, instead of listing all
	for _, uri := range []string{"/domaincerts/domains?domain=", "/domaincerts/domains?filter=", "/domaincerts/tls_certificates?filter="} {
		status, resp := c.api(t, "GET", uri, nil)
		assertAPIError(t, status, resp, http.StatusBadRequest, "BAD_REQUEST")
		if !strings.Contains(fmt.Sprint(resp["msg"]), "is empty") {
			t.Errorf("admin API %s: msg %q; want it to say the parameter is empty", uri, resp["msg"])
		}
	}

	// a chain in the wrong order: CHAIN_ORDER, its details all strings
	status, resp := api.call("POST", "/dc/tls_certificates", map[string]any{
		"certificate_pem": ca.InterPEM + leaf.CertPEM, "private_key_pem": leaf.KeyPEM})
	assertAPIError(t, status, resp, http.StatusBadRequest, "CHAIN_ORDER")
	if order, _ := resp["details"].(map[string]any)["order"].(string); !strings.Contains(order, "door.example.test") {
		t.Errorf("CHAIN_ORDER details %v; want the order as a string", resp["details"])
	}

	// updates through the door, seen by the admin API
	desc, meta := "door customer", `{"plan":"pro"}`
	got := api.must(http.StatusOK, "PATCH", "/dc/domains/"+domID, map[string]any{"description": desc, "metadata": meta})
	if got["id"] != domID || got["uri"] != "/dc/domains/"+domID || got["domain"] != "door.example.test" ||
		got["description"] != desc || got["metadata"] != meta || got["certificate"].(map[string]any)["id"] != certID {
		t.Errorf("PATCH domain: %v", got)
	}
	if got := c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/domains/"+domID, nil); got["description"] != desc || got["metadata"] != meta {
		t.Errorf("admin API after PATCH domain: %v", got)
	}
	got = api.must(http.StatusOK, "PATCH", "/dc/tls_certificates/"+certID, map[string]any{"description": desc, "metadata": meta})
	if got["id"] != certID || got["uri"] != "/dc/tls_certificates/"+certID || got["description"] != desc || got["metadata"] != meta ||
		got["serial_number"] != leaf.Serial {
		t.Errorf("PATCH certificate: %v", got)
	}
	if got := c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/tls_certificates/"+certID, nil); got["description"] != desc || got["metadata"] != meta {
		t.Errorf("admin API after PATCH certificate: %v", got)
	}

	// deletes through the door: a domain, then its certificate, no
	// longer used
	soloLeaf := ca.Leaf(t, "solo.example.test")
	solo := api.must(http.StatusCreated, "POST", "/dc/tls_certificates",
		map[string]any{"certificate_pem": soloLeaf.ChainPEM, "private_key_pem": soloLeaf.KeyPEM})
	soloDom := api.must(http.StatusCreated, "POST", "/dc/domains", map[string]any{"domain": "solo.example.test", "certificate_id": solo["id"]})
	for _, tc := range []struct{ what, uri string }{
		{"domain", "/dc/domains/" + soloDom["id"].(string)},
		{"certificate", "/dc/tls_certificates/" + solo["id"].(string)},
	} {
		if status, body := api.callRaw("DELETE", tc.uri, nil); status != http.StatusNoContent || len(body) != 0 {
			t.Errorf("DELETE %s: %d %q; want 204 and no body", tc.what, status, body)
		}
		status, resp := api.call("GET", tc.uri, nil)
		assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
		status, resp = c.api(t, "GET", strings.Replace(tc.uri, "/dc/", "/domaincerts/", 1), nil)
		assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
	}

	// without credentials, still nothing: no data in the answer
	for _, uri := range []string{"/dc/domains", "/dc/domains/" + domID, "/dc/tls_certificates/" + certID} {
		status, body := anon.callRaw("GET", uri, nil)
		if status != http.StatusUnauthorized {
			t.Errorf("GET %s without credentials: status %d, want 401", uri, status)
		}
		for _, secret := range []string{domID, certID, "door.example.test", desc, "CERTIFICATE"} {
			if strings.Contains(string(body), secret) {
				t.Errorf("GET %s without credentials: the body holds %q: %s", uri, secret, body)
			}
		}
	}
	for _, m := range []struct{ method, uri string }{{"PATCH", "/dc/domains/" + domID}, {"DELETE", "/dc/domains/" + domID}} {
		if status, _ := anon.call(m.method, m.uri, map[string]any{"description": "x"}); status != http.StatusUnauthorized {
			t.Errorf("%s %s without credentials: status %d, want 401", m.method, m.uri, status)
		}
	}
	if got := c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/domains/"+domID, nil); got["description"] != desc {
		t.Errorf("after a PATCH without credentials: description %v, want %q", got["description"], desc)
	}

	// the password travels in every request; the access log has those
	// requests, never the password
	assertCredentialsUnlogged(t, c.Log(), "/dc/", "s3cret", base64.StdEncoding.EncodeToString([]byte("ops:s3cret")))
}

// statusOf is the HTTP status of an error code in the contract.
func statusOf(code string) int {
	switch code {
	case "NOT_FOUND":
		return http.StatusNotFound
	case "CERT_IN_USE", "DOMAIN_EXISTS":
		return http.StatusConflict
	case "UNAUTHORIZED":
		return http.StatusUnauthorized
	}
	return http.StatusBadRequest
}

// TestNgrokCompat: a client that behaves as ngrok's Go API client, changed
// only in its base URL and key, manages TLS certificates and reserved
// domains through the handler in ngrok's dialect: create, get, update,
// list with pagination (absolute next_page_uri) and filters, errors
// decoded with string details, deletes; the key comes from the
// environment through a placeholder and is checked.
func TestNgrokCompat(t *testing.T) {
	key := "dc_test_" + strconv.FormatInt(int64(freePort(t)), 36) + "_key"
	t.Setenv("DC_API_KEY", key)
	opts := caddyOpts{}
	origin := withAPIServer(t, &opts, []any{map[string]any{
		"handle": []any{map[string]any{"handler": "domaincerts_api", "compat": "ngrok", "api_keys": []any{"{env.DC_API_KEY}"}}},
	}})
	c := startCaddy(t, opts)
	ctx := t.Context()
	// the base URL has a path: ngrok's client resolves absolute paths
	// against it, so it reaches the root of the site anyway
	base, _ := url.Parse(origin + "/v2/")
	nc := &ngrokClient{base: base, key: key, hc: adminClient}

	// keys: none, a wrong one, and the placeholder's text itself
	for _, k := range []string{"", "wrong", "{env.DC_API_KEY}"} {
		bad := &ngrokClient{base: base, key: k, hc: adminClient}
		_, _, err := bad.listCertificates(ctx, nil, nil)
		var ne *ngrokError
		if !errorsAs(err, &ne) || ne.StatusCode != 401 || ne.ErrorCode != "UNAUTHORIZED" {
			t.Errorf("key %q: %v; want 401 UNAUTHORIZED", k, err)
		}
	}

	ca := testpki.NewChain(t, "Ngrok")
	leaf := ca.Leaf(t, "ngrok.example.test", "*.ngrok.example.test")
	cert, err := nc.createCertificate(ctx, &ngrokTLSCertificateCreate{CertificatePEM: leaf.ChainPEM, PrivateKeyPEM: leaf.KeyPEM, Description: "customer 42"})
	if err != nil {
		t.Fatal(err)
	}
	if cert.URI != "/tls_certificates/"+cert.ID || cert.SerialNumber != leaf.Serial || cert.SubjectAlternativeNames.DNSNames[0] != "ngrok.example.test" || cert.NotAfter == "" {
		t.Errorf("created certificate %+v", cert)
	}
	desc := "customer 42, renewed"
	certUpdate := &ngrokTLSCertificateUpdate{ID: cert.ID, Description: &desc}
	if got, err := nc.updateCertificate(ctx, certUpdate); err != nil || got.Description != desc || got.ID != cert.ID {
		t.Errorf("certificate update: %+v, %v", got, err)
	}
	if certUpdate.ID != "" {
		t.Fatal("the test client sent the id in the body; ngrok's client does not")
	}
	if got, err := nc.getCertificate(ctx, cert.ID); err != nil || got.Description != desc {
		t.Errorf("certificate get: %+v, %v", got, err)
	}

	var ids []string
	for _, name := range []string{"ngrok.example.test", "a.ngrok.example.test", "b.ngrok.example.test"} {
		d, err := nc.createDomain(ctx, &ngrokReservedDomainCreate{Domain: name, Region: "us", CertificateID: &cert.ID})
		if err != nil {
			t.Fatalf("creating %s: %v", name, err)
		}
		if d.URI != "/reserved_domains/"+d.ID || d.Certificate == nil || d.Certificate.ID != cert.ID || d.Certificate.URI != "/tls_certificates/"+cert.ID {
			t.Errorf("created reserved domain %+v", d)
		}
		ids = append(ids, d.ID)
	}
	if got, err := handshake(t, c.HTTPSAddr(), "a.ngrok.example.test"); err != nil || got.SerialNumber.Text(16) != leaf.Serial {
		t.Errorf("handshake for a domain reserved through ngrok's API: %v, %v", got, err)
	}
	meta := `{"customer":42}`
	domUpdate := &ngrokReservedDomainUpdate{ID: ids[1], Metadata: &meta}
	d, err := nc.updateDomain(ctx, domUpdate)
	if err != nil || d.Metadata != meta || d.Domain != "a.ngrok.example.test" || d.ID != ids[1] {
		t.Errorf("reserved domain update: %+v, %v", d, err)
	}
	if domUpdate.ID != "" {
		t.Fatal("the test client sent the id in the body; ngrok's client does not")
	}
	if d, err := nc.getDomain(ctx, ids[1]); err != nil || d.Metadata != meta {
		t.Errorf("reserved domain get: %+v, %v", d, err)
	}

	// pagination: three domains, two a page
	two := "2"
	all, pages, err := nc.listDomains(ctx, &two, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || len(pages) != 1 || !strings.HasPrefix(pages[0], origin+"/reserved_domains?limit=2&before_id=") {
		t.Fatalf("list: %d domains, pages %v; want 3 over two pages, next_page_uri absolute under %s", len(all), pages, origin)
	}
	seen := map[string]bool{}
	for _, d := range all {
		seen[d.ID] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Errorf("list lacks %s", id)
		}
	}
	// filters
	for _, tc := range []struct {
		filter string
		want   []string
	}{
		{`obj.domain == "b.ngrok.example.test"`, []string{ids[2]}},
		{`obj.id == "` + ids[0] + `"`, []string{ids[0]}},
		{`obj.domain == "nobody.example.test"`, nil},
	} {
		got, _, err := nc.listDomains(ctx, nil, &tc.filter)
		if err != nil || len(got) != len(tc.want) || (len(got) == 1 && got[0].ID != tc.want[0]) {
			t.Errorf("filter %s: %+v, %v; want %v", tc.filter, got, err, tc.want)
		}
	}
	if certs, _, err := nc.listCertificates(ctx, nil, ptr(`obj.id == "`+cert.ID+`"`)); err != nil || len(certs) != 1 {
		t.Errorf("certificate filter: %d, %v", len(certs), err)
	}

	// certificate pagination: five certificates, two a page, followed
	// through next_page_uri to the end
	created := map[string]bool{cert.ID: true}
	var extra []string
	for i := range 4 {
		l := ca.Leaf(t, fmt.Sprintf("p%d.pages.example.test", i))
		more, err := nc.createCertificate(ctx, &ngrokTLSCertificateCreate{CertificatePEM: l.ChainPEM, PrivateKeyPEM: l.KeyPEM})
		if err != nil {
			t.Fatal(err)
		}
		created[more.ID] = true
		extra = append(extra, more.ID)
	}
	certs, certPages, err := nc.listCertificates(ctx, &two, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(certPages) != 2 {
		t.Errorf("certificate list: next_page_uri %v; want two (pages of 2, 2 and 1)", certPages)
	}
	for _, p := range certPages {
		if !strings.HasPrefix(p, origin+"/tls_certificates?limit=2&before_id=") {
			t.Errorf("certificate next_page_uri %q; want it absolute under %s", p, origin)
		}
	}
	listed := map[string]bool{}
	for _, lc := range certs {
		if listed[lc.ID] {
			t.Errorf("certificate list: %s twice", lc.ID)
		}
		listed[lc.ID] = true
	}
	if len(certs) != len(created) || !maps.Equal(listed, created) {
		t.Errorf("certificate list over pages: %v; want exactly %v", slices.Sorted(maps.Keys(listed)), slices.Sorted(maps.Keys(created)))
	}

	// errors decode as ngrok's client expects, details as strings
	for _, tc := range []struct {
		what string
		call func() error
		code string
	}{
		{"unsupported filter", func() error { _, _, err := nc.listDomains(ctx, nil, ptr(`obj.domain.endsWith(".test")`)); return err }, "BAD_REQUEST"},
		{"empty domain filter", func() error { _, _, err := nc.listDomains(ctx, nil, ptr("")); return err }, "BAD_REQUEST"},
		{"empty certificate filter", func() error { _, _, err := nc.listCertificates(ctx, nil, ptr("")); return err }, "BAD_REQUEST"},
		{"chain in the wrong order", func() error {
			_, err := nc.createCertificate(ctx, &ngrokTLSCertificateCreate{CertificatePEM: ca.InterPEM + leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
			return err
		}, "CHAIN_ORDER"},
		{"name taken", func() error {
			_, err := nc.createDomain(ctx, &ngrokReservedDomainCreate{Domain: "ngrok.example.test"})
			return err
		}, "DOMAIN_EXISTS"},
		{"certificate in use", func() error { return nc.deleteCertificate(ctx, cert.ID) }, "CERT_IN_USE"},
		{"resolves_to", func() error {
			_, err := nc.createDomain(ctx, &ngrokReservedDomainCreate{Domain: "c.ngrok.example.test", ResolvesTo: []any{map[string]any{"value": "us"}}})
			return err
		}, "BAD_REQUEST"},
		{"id that is not the path's", func() error {
			return nc.do(ctx, "PATCH", ngrokPath("/reserved_domains/%s", ids[0]), map[string]any{"id": ids[1]}, &ngrokReservedDomain{})
		}, "BAD_REQUEST"},
		{"missing domain", func() error { _, err := nc.getDomain(ctx, "rd_"+strings.Repeat("0", 26)); return err }, "NOT_FOUND"},
	} {
		err := tc.call()
		var ne *ngrokError
		if !errorsAs(err, &ne) || ne.ErrorCode != tc.code || ne.Details["unmarshal_error"] != "" || ne.Msg == "" {
			t.Errorf("%s: %v; want %s decoded whole", tc.what, err, tc.code)
		}
		if tc.code == "CHAIN_ORDER" && ne != nil && !strings.Contains(ne.Details["order"], "ngrok.example.test") {
			t.Errorf("CHAIN_ORDER details %v; want the order", ne.Details)
		}
	}
	// Ngrok-Version other than 2
	req, _ := http.NewRequest("GET", origin+"/reserved_domains", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Ngrok-Version", "3")
	if res, err := adminClient.Do(req); err != nil || res.StatusCode != http.StatusBadRequest {
		t.Errorf("Ngrok-Version 3: %v, %v; want 400", res, err)
	} else {
		res.Body.Close()
	}

	// deletes
	if err := nc.deleteDomainCertificate(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if d, err := nc.getDomain(ctx, ids[0]); err != nil || d.Certificate != nil {
		t.Errorf("after detaching: %+v, %v", d, err)
	}
	for _, id := range ids {
		if err := nc.deleteDomain(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range append(extra, cert.ID) {
		if err := nc.deleteCertificate(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if all, _, err := nc.listDomains(ctx, nil, nil); err != nil || len(all) != 0 {
		t.Errorf("after deleting: %d domains, %v", len(all), err)
	}
	// the native admin API saw it all: no domains left there either
	if list := c.mustAPI(t, http.StatusOK, "GET", "/domaincerts/domains", nil); len(itemsOf(t, list, "domains")) != 0 {
		t.Errorf("admin API still lists domains: %v", list)
	}
	// after requests with wrong keys and with the right one: the access
	// log has them, with their Authorization header, but never the key
	assertCredentialsUnlogged(t, c.Log(), "/reserved_domains", key)
	assertCredentialsUnlogged(t, c.Log(), "/tls_certificates", key)
}

func ptr[T any](v T) *T { return &v }

func errorsAs(err error, target **ngrokError) bool {
	e, ok := err.(*ngrokError)
	if ok {
		*target = e
	}
	return ok
}
