package caddymod

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	_ "github.com/caddyserver/caddy/v2/modules/caddytls" // tls.issuance.internal and acme
)

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name, input, want, wantErr string
	}{
		{"empty", "domaincerts", `{}`, ""},
		{"empty block", "domaincerts {\n}", `{}`, ""},
		{"options", `domaincerts {
			cache_capacity 7
			cache_memory 512MiB
			fallback_certificate_id cert_x
			zones a.test b.test
			zones c.test
			cname_target edge.a.test
			challenge_zone acme.a.test
			dns_server 127.0.0.1:5353 {
				ns ns1.a.test
			}
			resolvers 127.0.0.1:53
			retry_min_interval 2s
			retry_max_interval 10s
			renew_check_interval 1m
			renewal_window_ratio 0.25
			sync_interval 30s
		}`, `{"cache_capacity":7,"cache_memory":536870912,"fallback_certificate_id":"cert_x","zones":["a.test","b.test","c.test"],"cname_target":"edge.a.test","challenge_zone":"acme.a.test","dns_server":{"listen":"127.0.0.1:5353","ns":"ns1.a.test"},"resolvers":["127.0.0.1:53"],"retry_min_interval":2000000000,"retry_max_interval":10000000000,"renew_check_interval":60000000000,"renewal_window_ratio":0.25,"sync_interval":30000000000}`, ""},
		{"issuers", "domaincerts {\n issuer local internal\n default_authority local\n}", `{"issuers":{"local":{"module":"internal"}},"default_authority":"local"}`, ""},
		{"unknown", "domaincerts {\n nope 1\n}", "", "unrecognized domaincerts option 'nope'"},
		{"duplicate", "domaincerts {\n cname_zone a\n cname_zone b\n}", "", "duplicate domaincerts option 'cname_zone'"},
		{"issuer without module", "domaincerts {\n issuer local\n}", "", "missing module name"},
		{"cache_memory plain bytes", "domaincerts {\n cache_memory 1000\n}", `{"cache_memory":1000}`, ""},
		{"cache_memory not a size", "domaincerts {\n cache_memory lots\n}", "", "not a size in bytes"},
		{"cache_memory negative", "domaincerts {\n cache_memory -1\n}", "", "not a size in bytes"},
		{"hot_certificates count", "domaincerts {\n hot_certificates 20000\n}", `{"hot_certificates":20000}`, ""},
		{"hot_certificates off", "domaincerts {\n hot_certificates off\n}", `{"hot_certificates":-1}`, ""},
		{"hot_certificates negative", "domaincerts {\n hot_certificates -5\n}", "", "hot_certificates takes a count or off"},
		{"ratio not a number", "domaincerts {\n renewal_window_ratio half\n}", "", "renewal_window_ratio"},
		{"onboarding options", "domaincerts {\n edge_addresses 203.0.113.10\n edge_addresses 2001:db8::10\n provisioning_timeout 72h\n expiry_warning 240h\n expiry_check_interval 10m\n}",
			`{"edge_addresses":["203.0.113.10","2001:db8::10"],"provisioning_timeout":259200000000000,"expiry_warning":864000000000000,"expiry_check_interval":600000000000}`, ""},
		{"dns provider settings", "domaincerts {\n dns_ttl 1m\n propagation_delay 5s\n propagation_timeout -1s\n}",
			`{"dns_ttl":60000000000,"propagation_delay":5000000000,"propagation_timeout":-1000000000}`, ""},
		{"retry three args", "domaincerts {\n retry_interval 1s 2s 3s\n}", "", "wrong argument count"},
		{"older spellings", "domaincerts {\n fallback_certificate cert_x\n retry_interval 2s 10s\n}",
			`{"fallback_certificate_id":"cert_x","retry_min_interval":2000000000,"retry_max_interval":10000000000}`, ""},
		{"retry_interval only min", "domaincerts {\n retry_interval 2s\n}", `{"retry_min_interval":2000000000}`, ""},
		{"both spellings of one option", "domaincerts {\n fallback_certificate a\n fallback_certificate_id b\n}", "", "duplicate domaincerts option 'fallback_certificate_id'"},
		{"retry_interval and retry_min_interval", "domaincerts {\n retry_min_interval 1s\n retry_interval 2s\n}", "", "give one or the others"},
		{"retry_max_interval after retry_interval", "domaincerts {\n retry_interval 2s\n retry_max_interval 5s\n}", "", "give one or the others"},
		{"dns_server dup ns", "domaincerts {\n dns_server {\n ns a\n ns b\n }\n}", "", "duplicate dns_server option 'ns'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var app App
			err := app.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(&app)
			if string(got) != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestManagerAndLoaderCaddyfile(t *testing.T) {
	var m Manager
	if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser("domaincerts")); err != nil {
		t.Fatal(err)
	}
	if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser("domaincerts extra")); err == nil {
		t.Fatal("manager accepted an argument")
	}
	var l Loader
	if err := l.UnmarshalCaddyfile(caddyfile.NewTestDispenser("domaincerts_load a.test cert_x")); err != nil {
		t.Fatal(err)
	}
	if len(l) != 2 || l[0] != "a.test" || l[1] != "cert_x" {
		t.Fatalf("loader = %v", l)
	}
}

// FuzzUnmarshalCaddyfile feeds arbitrary Caddyfile text to every
// Caddyfile parser of the package (the app, the HTTP API handler, the
// loader, the manager and the permission module): each must return an
// error or a config that encodes, never panic.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"domaincerts",
		"domaincerts {\n zones a b\n}",
		"domaincerts {\n dns_server :53 {\n ns x\n }\n}",
		"domaincerts {\n issuer a internal\n}",
		"domaincerts {\n retry_interval 1s 2s\n renewal_window_ratio 0.5\n}",
		"domaincerts {\n {\n}",
		"domaincerts }",
		"domaincerts_api {\n compat ngrok\n api_keys {env.K}\n public_url https://x\n}",
		"domaincerts_load a.test cert_x",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// caddyfile.NewTestDispenser exits the process on a lexer error;
		// tokenize here so that such input is an ordinary rejection.
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil {
			return
		}
		for _, m := range []caddyfile.Unmarshaler{new(App), new(HTTPAPI), new(Loader), new(Manager), new(Permission)} {
			if err := m.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
				continue
			}
			if _, err := json.Marshal(m); err != nil {
				t.Fatalf("%T: parsed config does not encode: %v", m, err)
			}
		}
	})
}
