package caddymod

import (
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

func TestParseFilter(t *testing.T) {
	for _, tc := range []struct {
		expr    string
		want    []filterTerm
		wantErr string // part of the message; "" for success
	}{
		{`obj.domain == "a.example.com"`, []filterTerm{{"domain", "a.example.com"}}, ""},
		{`obj.id=="rd_x"`, []filterTerm{{"id", "rd_x"}}, ""},
		{` obj.id == 'rd_x' || obj.domain == "b.test" `, []filterTerm{{"id", "rd_x"}, {"domain", "b.test"}}, ""},
		{`obj.domain == "a\"b\\c"`, []filterTerm{{"domain", `a"b\c`}}, ""},
		{`obj.domain == ""`, []filterTerm{{"domain", ""}}, ""},
		{``, nil, "expected obj.<field> at byte 0"},
		{`obj.description == "x"`, nil, `field "description" cannot be filtered on`},
		{`obj.domain != "x"`, nil, "expected == at byte 11"},
		{`obj.domain == x`, nil, "expected a quoted string"},
		{`obj.domain == "x`, nil, "expected a quoted string"},
		{`obj.domain == "x" && obj.id == "y"`, nil, "expected || or the end"},
		{`obj.domain == "x" ||`, nil, "expected obj.<field>"},
		{`obj. == "x"`, nil, "expected a field name"},
		{`obj.domain.startsWith("a")`, nil, "expected == at byte 10"},
		{`(obj.id == "x")`, nil, "expected obj.<field>"},
		{`obj.domain == "a\qb"`, nil, "expected a quoted string"},
		{strings.Repeat(`obj.id == "x" || `, 300) + `obj.id == "x"`, nil, "over 4096 bytes"},
	} {
		terms, err := parseFilter(tc.expr, "id", "domain")
		if tc.wantErr == "" {
			if err != nil || !reflect.DeepEqual(terms, tc.want) {
				t.Errorf("parseFilter(%q) = %v, %v; want %v", tc.expr, terms, err, tc.want)
			}
			continue
		}
		if err == nil || dcerr.CodeOf(err) != dcerr.BadRequest || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("parseFilter(%q) error %v; want BAD_REQUEST containing %q", tc.expr, err, tc.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), `obj.id == "<id>" or obj.domain == "<domain>"`) {
			t.Errorf("parseFilter(%q) error %q does not say what is supported", tc.expr, err)
		}
	}
	// certificates filter on id only
	if _, err := parseFilter(`obj.domain == "a.test"`, "id"); err == nil {
		t.Error("a certificate filter on domain was accepted")
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{`obj.domain == "a.example.com"`, `obj.id == 'x' || obj.domain == "y"`, `obj.domain == "a\"b"`, `obj.`, `"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		terms, err := parseFilter(expr, "id", "domain")
		if err != nil {
			if dcerr.CodeOf(err) != dcerr.BadRequest {
				t.Fatalf("error code %s; want BAD_REQUEST", dcerr.CodeOf(err))
			}
			return
		}
		if len(terms) == 0 {
			t.Fatal("no terms and no error")
		}
		// printing the terms back parses to the same terms
		var parts []string
		for _, tm := range terms {
			if tm.field != "id" && tm.field != "domain" {
				t.Fatalf("field %q accepted", tm.field)
			}
			v := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(tm.value)
			parts = append(parts, "obj."+tm.field+` == "`+v+`"`)
		}
		again, err := parseFilter(strings.Join(parts, " || "), "id", "domain")
		if len(strings.Join(parts, " || ")) <= maxFilterLen && (err != nil || !reflect.DeepEqual(again, terms)) {
			t.Fatalf("round trip of %q: %v, %v; want %v", expr, again, err, terms)
		}
	})
}

func TestCheckQuery(t *testing.T) {
	for _, tc := range []struct {
		query   string
		allowed []string
		wantErr string
	}{
		{"", nil, ""},
		{"limit=5&before_id=x", []string{"limit", "before_id"}, ""},
		{"domain=a.test", []string{"limit", "domain"}, ""},
		{"x=1", nil, `unknown query parameter "x"; this path takes none`},
		{"limit=5&lmit=5", []string{"limit", "before_id"}, `unknown query parameter "lmit"; this path takes limit, before_id`},
		{"limit=1&limit=2", []string{"limit"}, `"limit" is given 2 times`},
		{"a=%zz", []string{"a"}, "malformed"},
	} {
		r := httptest.NewRequest("GET", "/x?"+tc.query, nil)
		err := checkQuery(r, tc.allowed...)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tc.query, err)
		case tc.wantErr != "" && (err == nil || dcerr.CodeOf(err) != dcerr.BadRequest || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: error %v; want BAD_REQUEST containing %q", tc.query, err, tc.wantErr)
		}
	}
}

func TestSelectorParam(t *testing.T) {
	for _, tc := range []struct {
		query   string
		want    string
		wantHas bool
		wantErr string // part of the message; "" for success
	}{
		{"", "", false, ""},
		{"limit=5", "", false, ""},
		{"domain=a.test", "a.test", true, ""},
		{"domain=%2A.a.test", "*.a.test", true, ""},
		{"domain=", "", false, `query parameter "domain" is empty; give a domain name`},
		{"domain", "", false, `query parameter "domain" is empty`},
		{"domain=%20", "", false, `query parameter "domain" is empty`},
		{"domain=&limit=5", "", false, "leave domain out to list everything"},
	} {
		r := httptest.NewRequest("GET", "/x?"+tc.query, nil)
		got, has, err := selectorParam(r.URL.Query(), "domain", "a domain name")
		switch {
		case tc.wantErr == "" && (err != nil || got != tc.want || has != tc.wantHas):
			t.Errorf("%q: %q, %v, %v; want %q, %v", tc.query, got, has, err, tc.want, tc.wantHas)
		case tc.wantErr != "" && (err == nil || dcerr.CodeOf(err) != dcerr.BadRequest || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: error %v; want BAD_REQUEST containing %q", tc.query, err, tc.wantErr)
		}
	}
}

func TestHTTPAPIKeys(t *testing.T) {
	t.Setenv("DC_TEST_API_KEY", "k-from-env")
	h := &HTTPAPI{APIKeys: []string{"{env.DC_TEST_API_KEY}", "second"}}
	if err := h.provisionKeys(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		header string
		want   bool
	}{
		{"Bearer k-from-env", true},
		{"bearer second", true},
		{"Bearer {env.DC_TEST_API_KEY}", false},
		{"Bearer k-from-en", false},
		{"Basic k-from-env", false},
		{"k-from-env", false},
		{"", false},
	} {
		r := httptest.NewRequest("GET", "/domains", nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		if got := h.authorized(r); got != tc.want {
			t.Errorf("Authorization %q: authorized %v; want %v", tc.header, got, tc.want)
		}
	}
	empty := &HTTPAPI{APIKeys: []string{"{env.DC_TEST_UNSET_KEY}"}}
	if err := empty.provisionKeys(); err == nil || !strings.Contains(err.Error(), "api_keys entry 1 is empty") {
		t.Errorf("a key whose variable is unset: %v", err)
	}
	for _, tc := range []struct {
		api     HTTPAPI
		wantErr string
	}{
		{HTTPAPI{}, ""},
		{HTTPAPI{Compat: "ngrok", APIKeys: []string{"k"}}, ""},
		{HTTPAPI{Compat: "ngrok"}, "needs api_keys"},
		{HTTPAPI{Compat: "cloudflare"}, `compat must be "ngrok"`},
		{HTTPAPI{Compat: "ngrok", APIKeys: []string{"k"}, PublicURL: "https://api.example.net"}, ""},
		{HTTPAPI{Compat: "ngrok", APIKeys: []string{"k"}, PublicURL: "api.example.net"}, "public_url"},
		{HTTPAPI{Compat: "ngrok", APIKeys: []string{"k"}, PublicURL: "https://api.example.net/v2"}, "public_url"},
	} {
		err := tc.api.Validate()
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Validate(%+v) = %v; want %q", tc.api, err, tc.wantErr)
		}
	}
}
