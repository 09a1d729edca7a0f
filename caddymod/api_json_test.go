package caddymod

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

func TestCheckJSONText(t *testing.T) {
	tests := []struct {
		name, body string
		want       string // a part of the error; "" for none
	}{
		{name: "plain", body: `{"domain":"a.example","description":"x"}`},
		{name: "escaped pair", body: `{"description":"\ud83d\ude00"}`},
		{name: "utf-8 emoji", body: `{"description":"😀"}`},
		{name: "escaped backslash then u", body: `{"description":"\\ud800"}`},
		{name: "same key in two objects", body: `{"a":{"k":1},"b":{"k":2}}`},
		{name: "same key in array items", body: `[{"k":1},{"k":2}]`},
		{name: "key equal to a value", body: `{"a":"b","b":"a"}`},
		{name: "nested arrays", body: `{"a":[[1,{"x":1}],{"x":2}],"x":3}`},
		{name: "duplicate key", body: `{"domain":"a.example","domain":"b.example"}`, want: `key "domain" appears twice`},
		{name: "duplicate after unescaping", body: `{"domain":"a.example","\u0064omain":"b.example"}`, want: `key "domain" appears twice`},
		{name: "duplicate nested", body: `{"certificate_management_policy":{"authority":"a","authority":"b"}}`, want: `key "authority" appears twice`},
		{name: "duplicate after array", body: `{"a":[1,2],"a":3}`, want: `key "a" appears twice`},
		{name: "invalid utf-8", body: "{\"description\":\"caf\xe9\"}", want: "not valid UTF-8 (at byte 19)"},
		{name: "lone high surrogate", body: `{"description":"\ud800x"}`, want: "unpaired surrogate escape at byte 16"},
		{name: "lone low surrogate", body: `{"description":"\udc00"}`, want: "unpaired surrogate"},
		{name: "high then non-low", body: `{"description":"\ud800\u0041"}`, want: "unpaired surrogate"},
		{name: "high at the end", body: `{"description":"\uD800"}`, want: "unpaired surrogate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !json.Valid([]byte(tt.body)) {
				t.Fatalf("test body is not valid JSON: %s", tt.body)
			}
			err := checkJSONText([]byte(tt.body))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("checkJSONText: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("checkJSONText = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestDecodeBodyStrict: what encoding/json accepts silently is a
// BAD_REQUEST, with nothing decoded into the target that counts: a key
// twice, invalid text, a field name in another case than documented
// (encoding/json would fold it onto the field), and a body that is not an
// object.
func TestDecodeBodyStrict(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"domain":"a.example","domain":"b.example"}`, "appears twice"},
		{"{\"domain\":\"a.example\",\"description\":\"\xff\"}", "UTF-8"},
		{`{"domain":"a.example","description":"\udfff"}`, "surrogate"},
		{`{"DOMAIN":"a.example"}`, `unknown field "DOMAIN"`},
		{`{"domain":"a.example","Domain":"b.example"}`, `unknown field "Domain"`},
		{`{"domain":"a.example","certificate_management_policy":{"Authority":"local"}}`, `unknown field "certificate_management_policy.Authority"`},
		{`{"domain":"a.example","Region":"us"}`, `unknown field "Region"`}, // a field of an embedded struct
		{`null`, "not a JSON object"},
		{`[]`, "not a JSON object"},
		{`"domain"`, "not a JSON object"},
	} {
		var v createDomainRequest
		err := decodeBody(httptest.NewRequest("POST", "/", strings.NewReader(tc.body)), &v)
		if dcerr.CodeOf(err) != dcerr.BadRequest || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decodeBody(%q) = %v, want BAD_REQUEST with %q", tc.body, err, tc.want)
		}
	}
	for _, body := range []string{
		`{"domain":"a.example","region":"us","resolves_to":[],"certificate_management_policy":{"authority":"local","private_key_type":"ecdsa"}}`,
		` {"domain":"a.example"} `,
	} {
		var v createDomainRequest
		if err := decodeBody(httptest.NewRequest("POST", "/", strings.NewReader(body)), &v); err != nil {
			t.Errorf("decodeBody(%q) = %v, want it accepted", body, err)
		}
	}
}

func FuzzCheckJSONText(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":1,"a":2}`, `{"d":"\ud800"}`, `{"d":"\ud83d\ude00"}`, `[{"a":[{"a":1}]}]`, "{\"d\":\"\xff\"}", `"\\u"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !json.Valid(body) {
			return
		}
		if err := checkJSONText(body); err != nil {
			return
		}
		// accepted: decoding loses nothing, and no object had a key twice
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("accepted but does not decode: %v", err)
		}
		raw := bytes.ToLower(body)
		if !bytes.Contains(raw, []byte("\ufffd")) && !bytes.Contains(raw, []byte(`\ufffd`)) {
			if out, _ := json.Marshal(v); bytes.Contains(out, []byte("\ufffd")) {
				t.Fatalf("accepted %q, which decodes with U+FFFD", body)
			}
		}
		if countKeys(v) != strings.Count(string(mustTokens(t, body)), "k") {
			t.Fatalf("accepted %q, which has a key twice in an object", body)
		}
	})
}

// countKeys counts the keys of every object in a decoded value.
func countKeys(v any) int {
	n := 0
	switch v := v.(type) {
	case map[string]any:
		n += len(v)
		for _, e := range v {
			n += countKeys(e)
		}
	case []any:
		for _, e := range v {
			n += countKeys(e)
		}
	}
	return n
}

// mustTokens returns one "k" per object key in body and "v" per other
// token, from the decoder's token stream.
func mustTokens(t *testing.T, body []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(body))
	var out []byte
	type frame struct{ object, key bool }
	var stack []frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return out
		}
		if len(stack) > 0 && stack[len(stack)-1].object && stack[len(stack)-1].key {
			if _, ok := tok.(string); ok {
				out = append(out, 'k')
				stack[len(stack)-1].key = false
				continue
			}
		}
		out = append(out, 'v')
		switch tok {
		case json.Delim('{'):
			stack = append(stack, frame{object: true, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].key = true
		}
	}
}

// TestPageParams: limit from 1 to 100 (more is read as 100) and before_id,
// which must be an ID of the listed kind.
func TestPageParams(t *testing.T) {
	const certID = "cert_01m8qvzd3qhx7br4kvtxanw20e"
	for _, tc := range []struct {
		query      string
		wantLimit  int
		wantBefore string
		bad        bool
	}{
		{"", 100, "", false},
		{"limit=5&before_id=" + certID, 5, certID, false},
		{"limit=500", 100, "", false},
		{"before_id=", 100, "", false},
		{"limit=0", 0, "", true},
		{"limit=x", 0, "", true},
		{"before_id=bogus", 0, "", true},
		{"before_id=rd_01m8qvzd3qhx7br4kvtxanw20e", 0, "", true}, // a domain's ID in the certificates' list
	} {
		limit, before, err := pageParams(httptest.NewRequest("GET", "/domaincerts/tls_certificates?"+tc.query, nil), domainstore.CertificatePrefix)
		switch {
		case tc.bad && dcerr.CodeOf(err) != dcerr.BadRequest:
			t.Errorf("%q: %v; want BAD_REQUEST", tc.query, err)
		case !tc.bad && (err != nil || limit != tc.wantLimit || before != tc.wantBefore):
			t.Errorf("%q: %d, %q, %v; want %d, %q", tc.query, limit, before, err, tc.wantLimit, tc.wantBefore)
		}
	}
}
