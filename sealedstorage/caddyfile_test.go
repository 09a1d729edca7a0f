package sealedstorage

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of testdata/*.caddyfiletest")

// TestCaddyfileAdapt adapts each testdata/*.caddyfiletest (a Caddyfile, a
// line "----------", then the expected JSON) with the real caddyfile
// adapter and compares the JSON.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, expected, ok := strings.Cut(string(b), "\n----------\n")
			if !ok {
				t.Fatal("no ---------- separator")
			}
			input += "\n"
			out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": "Caddyfile"})
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 {
				t.Fatalf("warnings: %v", warnings)
			}
			got := indent(t, out)
			if *update {
				if err := os.WriteFile(file, []byte(input+"----------\n"+got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if want := indent(t, []byte(expected)); got != want {
				t.Fatalf("adapted JSON differs\ngot:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// indent normalises JSON: object keys sorted, tab-indented.
func indent(t *testing.T, b []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("invalid JSON: %v\n%s", err, b)
	}
	out, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	return string(out) + "\n"
}

// TestCaddyfileAPIShape checks the storage JSON of the golden file against
// the exact shape fixed by API.md.
func TestCaddyfileAPIShape(t *testing.T) {
	b, err := os.ReadFile("testdata/api_shape.caddyfiletest")
	if err != nil {
		t.Fatal(err)
	}
	input, _, _ := strings.Cut(string(b), "\n----------\n")
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Storage json.RawMessage `json:"storage"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	const want = `{"module": "sealed", "key": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=", "old_keys": ["ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="], "inner": {"module": "file_system", "root": "/srv/caddy-data"}}`
	if got := indent(t, cfg.Storage); got != indent(t, []byte(want)) {
		t.Fatalf("storage JSON\ngot:\n%s\nwant:\n%s", got, indent(t, []byte(want)))
	}
	// The adapted JSON provisions; Provision does no storage I/O, so the
	// root need not exist.
	m, err := provision(t, string(cfg.Storage))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.String(); got != "sealed(FileStorage:/srv/caddy-data)" {
		t.Fatalf("String = %q", got)
	}
	if _, err := os.Stat("/srv/caddy-data"); err == nil {
		t.Log("/srv/caddy-data exists on this machine; the no-I/O check is moot")
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	const good = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
	tests := []struct {
		name, input, want, at string
	}{
		{"argument after name", "sealed extra", "wrong argument count", "Testfile:1"},
		{"unknown", "sealed {\n key " + good + "\n colour blue\n}", `unrecognized subdirective "colour"`, "Testfile:3"},
		{"duplicate key", "sealed {\n key " + good + "\n key " + good + "\n}", `duplicate subdirective "key"`, "Testfile:3"},
		{"duplicate seal_all", "sealed {\n seal_all\n seal_all\n}", `duplicate subdirective "seal_all"`, "Testfile:3"},
		{"duplicate inner", "sealed {\n inner file_system /a\n inner file_system /b\n}", `duplicate subdirective "inner"`, "Testfile:3"},
		{"duplicate key_file", "sealed {\n key_file /a\n key_file /b\n}", `duplicate subdirective "key_file"`, "Testfile:3"},
		{"key without value", "sealed {\n key\n}", "key takes exactly one argument", "Testfile:2"},
		{"key with two values", "sealed {\n key " + good + " " + good + "\n}", "key takes exactly one argument", "Testfile:2"},
		{"old_key without value", "sealed {\n key " + good + "\n old_key\n}", "old_key takes exactly one argument", "Testfile:3"},
		{"key_file without value", "sealed {\n key_file\n}", "wrong argument count", "Testfile:2"},
		{"seal_all with value", "sealed {\n seal_all true\n}", "wrong argument count", "Testfile:2"},
		{"allow_unsealed with value", "sealed {\n allow_unsealed yes\n}", "wrong argument count", "Testfile:2"},
		{"inner without module", "sealed {\n inner\n}", "wrong argument count", "Testfile:2"},
		{"inner unknown module", "sealed {\n inner nosuch\n}", "getting module named 'caddy.storage.nosuch'", "Testfile:2"},
		{"inner bad args", "sealed {\n inner file_system /a /b\n}", "wrong argument count", ""},
		{"short key", "sealed {\n key AQIDBAUGBwgJCgsMDQ4PEA==\n}", "key: key decodes to 16 bytes, want exactly 32", "Testfile:2"},
		{"bad old key", "sealed {\n key " + good + "\n old_key not-base64!\n}", "old_key: key is not valid base64", "Testfile:3"},
		{"key and key_file", "sealed {\n key " + good + "\n key_file /k\n}", "key and key_file are both set", "Testfile:4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s SealedStorage
			err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tt.want)
			}
			if tt.at != "" && !strings.HasSuffix(err.Error(), ", at "+tt.at) {
				t.Fatalf("err = %v\nwant it to end with the position %s", err, tt.at)
			}
			if strings.Contains(err.Error(), "AQIDBAUGBwgJCgsMDQ4PEA") || strings.Contains(err.Error(), good) {
				t.Fatal("error repeats a key")
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name, input string
		want        SealedStorage
	}{
		{"bare", "sealed", SealedStorage{}},
		{"empty block", "sealed {\n}", SealedStorage{}},
		{"all", "sealed {\n key {env.K}\n old_key {env.O1}\n old_key {file./o2}\n seal_all\n allow_unsealed\n inner file_system /data\n}", SealedStorage{
			Key: "{env.K}", OldKeys: []string{"{env.O1}", "{file./o2}"}, SealAll: true, AllowUnsealed: true,
			InnerRaw: json.RawMessage(`{"module":"file_system","root":"/data"}`),
		}},
		{"inner block", "sealed {\n key_file /k\n inner file_system {\n  root /data\n }\n}", SealedStorage{
			KeyFile: "/k", InnerRaw: json.RawMessage(`{"module":"file_system","root":"/data"}`),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s SealedStorage
			if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)); err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(s)
			want, _ := json.Marshal(tt.want)
			if !bytes.Equal(got, want) {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
		})
	}
}

// FuzzUnmarshalCaddyfile feeds arbitrary Caddyfile text to the storage's
// parser: it must return an error or a config that encodes, never panic.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"sealed",
		"sealed {\n key {env.K}\n old_key {env.O1}\n seal_all\n allow_unsealed\n inner file_system /data\n}",
		"sealed {\n key_file /k\n inner file_system {\n  root /data\n }\n}",
		"sealed {\n inner\n}",
		"sealed x",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// caddyfile.NewTestDispenser exits the process on a lexer error.
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil {
			return
		}
		var s SealedStorage
		if err := s.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			return
		}
		if _, err := json.Marshal(&s); err != nil {
			t.Fatalf("parsed config does not encode: %v", err)
		}
	})
}
