package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// cli runs `caddy domaincerts args...` against c and returns its standard
// output, standard error and exit code.
func cli(t *testing.T, c *caddyProc, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"domaincerts"}, args...)...)
	cmd.Dir = c.HomeDir
	cmd.Env = append(filteredEnv(), "HOME="+c.HomeDir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running caddy domaincerts %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// mustCLI is cli that requires the exit code.
func mustCLI(t *testing.T, c *caddyProc, want int, args ...string) string {
	t.Helper()
	out, errOut, code := cli(t, c, args...)
	if code != want {
		t.Fatalf("caddy domaincerts %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out
}

// TestCLI drives a running Caddy with `caddy domaincerts`: tables by
// default, --json for scripts, the admin address from --address or from
// the config file as `caddy reload` finds it, and exit codes scripts can
// use.
func TestCLI(t *testing.T) {
	c := startCaddy(t, caddyOpts{})
	addr := "--address=" + c.AdminAddr
	dir := t.TempDir()
	ca := testpki.NewChain(t, "CLI")
	leaf := ca.Leaf(t, "a.cli.test", "b.cli.test")
	certFile, keyFile := filepath.Join(dir, "chain.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, certFile, leaf.ChainPEM)
	writeFile(t, keyFile, leaf.KeyPEM)

	if out := mustCLI(t, c, 0, "list", addr); !strings.HasPrefix(out, "ID") || strings.Count(out, "\n") != 1 {
		t.Errorf("empty list: %q; want the header alone", out)
	}
	out := mustCLI(t, c, 0, "upload", certFile, keyFile, "--attach", "a.cli.test", "--json", addr)
	var up struct {
		Certificate map[string]any   `json:"certificate"`
		Domains     []map[string]any `json:"domains"`
	}
	if err := json.Unmarshal([]byte(out), &up); err != nil {
		t.Fatalf("upload --json: %v\n%s", err, out)
	}
	certID, _ := up.Certificate["id"].(string)
	if !strings.HasPrefix(certID, "cert_") || len(up.Domains) != 1 || up.Domains[0]["domain"] != "a.cli.test" {
		t.Fatalf("upload --json: %s", out)
	}
	if got, err := handshake(t, c.HTTPSAddr(), "a.cli.test"); err != nil || got.SerialNumber.Text(16) != leaf.Serial {
		t.Errorf("handshake after upload --attach: %v, %v", got, err)
	}
	// the admin address from the config file, as caddy reload finds it
	out = mustCLI(t, c, 0, "attach", "b.cli.test", certID, "--config", c.ConfigFile)
	if !strings.Contains(out, "b.cli.test") || !strings.Contains(out, certID) {
		t.Errorf("attach: %s", out)
	}
	out = mustCLI(t, c, 0, "list", addr)
	for _, want := range []string{"a.cli.test", "b.cli.test", certID, "uploaded"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	out = mustCLI(t, c, 0, "list", "certificates", addr)
	if !strings.Contains(out, certID) || !strings.Contains(out, "a.cli.test,b.cli.test") {
		t.Errorf("list certificates:\n%s", out)
	}
	var one []map[string]any
	if err := json.Unmarshal([]byte(mustCLI(t, c, 0, "list", "--domain", "b.cli.test", "--json", addr)), &one); err != nil || len(one) != 1 {
		t.Errorf("list --domain --json: %v %v", one, err)
	}
	if out := mustCLI(t, c, 0, "get", certID, addr); !strings.Contains(out, leaf.Serial) {
		t.Errorf("get certificate: %s", out)
	}
	if out := mustCLI(t, c, 0, "get", "a.cli.test", addr); !strings.Contains(out, certID) {
		t.Errorf("get domain: %s", out)
	}

	// exit codes
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"get", "nobody.cli.test", addr}, 3},
		{[]string{"get", "rd_" + strings.Repeat("0", 26), addr}, 3},
		{[]string{"delete", certID, addr}, 1},                    // CERT_IN_USE
		{[]string{"provision", "a.cli.test", addr}, 1},           // NOT_MANAGED
		{[]string{"attach", "c.cli.test", "cert_nope", addr}, 1}, // CERT_NOT_FOUND
		{[]string{"list", "widgets", addr}, 2},
		{[]string{"get", addr}, 2},
		{[]string{"upload", certFile, addr}, 2},
		{[]string{"list", "--address=127.0.0.1:1"}, 4},
	} {
		if _, errOut, code := cli(t, c, tc.args...); code != tc.code {
			t.Errorf("caddy domaincerts %s: exit %d, want %d\n%s", strings.Join(tc.args, " "), code, tc.code, errOut)
		}
	}
	mustCLI(t, c, 0, "detach", "b.cli.test", addr)
	mustCLI(t, c, 0, "delete", "b.cli.test", addr)
	mustCLI(t, c, 0, "delete", "a.cli.test", addr)
	mustCLI(t, c, 0, "delete", certID, addr)
	if out := mustCLI(t, c, 0, "list", "--json", addr); strings.TrimSpace(out) != "[]" {
		t.Errorf("list --json after deleting everything: %s", out)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCLIImport imports a directory of certificate files: pairs are
// matched by key whatever their names (separate files, a combined file, a
// leaf-only copy beside its full chain), each certificate is attached to
// its names, bad files are reported by name with the API's code without
// stopping the rest, files with nothing to import are reported as skipped
// (without failing a run), and a second run changes nothing.
func TestCLIImport(t *testing.T) {
	c := startCaddy(t, caddyOpts{})
	addr := "--address=" + c.AdminAddr
	dir := t.TempDir()
	ca := testpki.NewChain(t, "Import")
	one := ca.Leaf(t, "x.import.test", "y.import.test")
	writeFile(t, filepath.Join(dir, "one/fullchain.pem"), one.ChainPEM)
	writeFile(t, filepath.Join(dir, "one/cert.pem"), one.CertPEM)
	writeFile(t, filepath.Join(dir, "keys/whatever.key"), one.KeyPEM)
	two := ca.Leaf(t, "z.import.test")
	writeFile(t, filepath.Join(dir, "two-bundle.pem"), two.KeyPEM+two.ChainPEM)
	orphan := ca.Leaf(t, "orphan.import.test")
	writeFile(t, filepath.Join(dir, "orphan.crt"), orphan.ChainPEM)
	wrong := ca.Leaf(t, "wrong.import.test")
	writeFile(t, filepath.Join(dir, "wrong-order.pem"), ca.InterPEM+wrong.CertPEM+wrong.KeyPEM)
	writeFile(t, filepath.Join(dir, "broken.pem"), "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
	writeFile(t, filepath.Join(dir, "README.txt"), "not a certificate")
	writeFile(t, filepath.Join(dir, "huge.pem"), strings.Repeat(one.CertPEM, 1<<20/len(one.CertPEM)+1))
	stray := ca.Leaf(t, "stray.import.test")
	writeFile(t, filepath.Join(dir, "old/stray.key"), stray.KeyPEM)
	wantSkipped := map[string]string{"README.txt": "not PEM", "huge.pem": "too large", "stray.key": "no certificate for this key"}

	out, errOut, code := cli(t, c, "import", dir, "--json", addr)
	if code != 1 {
		t.Fatalf("import with bad files: exit %d, want 1\n%s\n%s", code, out, errOut)
	}
	var sum struct {
		Pairs           int `json:"pairs"`
		Uploaded        int `json:"uploaded"`
		AlreadyUploaded int `json:"already_uploaded"`
		DomainsCreated  int `json:"domains_created"`
		DomainsUpdated  int `json:"domains_updated"`
		Problems        []struct {
			File string `json:"file"`
			Code string `json:"error_code"`
		} `json:"problems"`
		Skipped []struct {
			File   string `json:"file"`
			Reason string `json:"reason"`
		} `json:"skipped"`
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("import --json: %v\n%s", err, out)
	}
	problems := map[string]string{}
	for _, p := range sum.Problems {
		problems[filepath.Base(p.File)] = p.Code
	}
	for file, code := range map[string]string{"orphan.crt": "KEY_MISSING", "wrong-order.pem": "CHAIN_ORDER", "broken.pem": "CERT_PEM_INVALID"} {
		if problems[file] != code {
			t.Errorf("problem of %s: %q, want %s (all: %v)", file, problems[file], code, sum.Problems)
		}
	}
	if sum.Pairs != 3 || sum.Uploaded != 2 || sum.DomainsCreated != 3 || len(sum.Problems) != 3 {
		t.Errorf("first import: %+v\n%s", sum, out)
	}
	skipped := map[string]string{}
	for _, s := range sum.Skipped {
		skipped[filepath.Base(s.File)] = s.Reason
	}
	for file, reason := range wantSkipped {
		if !strings.Contains(skipped[file], reason) {
			t.Errorf("skipped %s: %q, want a reason with %q (all: %v)", file, skipped[file], reason, sum.Skipped)
		}
	}
	if len(sum.Skipped) != len(wantSkipped) {
		t.Errorf("skipped %v; want only %v", sum.Skipped, wantSkipped)
	}
	for name, serial := range map[string]string{"x.import.test": one.Serial, "y.import.test": one.Serial, "z.import.test": two.Serial} {
		if got, err := handshake(t, c.HTTPSAddr(), name); err != nil || got.SerialNumber.Text(16) != serial {
			t.Errorf("handshake for %s: %v, %v; want serial %s", name, got, err, serial)
		}
	}
	pos := metricValues(t, c)["domaincerts_journal_position"]
	if pos == 0 {
		// missing, or nothing written: the comparison below would prove
		// nothing
		t.Fatalf("domaincerts_journal_position is %v after the first import wrote domains; want a position > 0", pos)
	}

	// again: nothing changes
	out = mustCLI(t, c, 1, "import", dir, addr)
	if !strings.Contains(out, "0 uploaded, 2 already there; domains: 0 created, 0 updated, 3 unchanged; 3 problems; 3 files skipped") {
		t.Errorf("second import: %s", out)
	}
	if again := metricValues(t, c)["domaincerts_journal_position"]; again != pos {
		t.Errorf("the second import wrote to the store (journal %v -> %v)", pos, again)
	}
	for _, file := range []string{"orphan.crt", "wrong-order.pem", "broken.pem"} {
		if !strings.Contains(out, file) {
			t.Errorf("second import does not name %s:\n%s", file, out)
		}
	}
	for file, reason := range wantSkipped {
		if !strings.Contains(out, file+": skipped: "+reason) {
			t.Errorf("second import does not report %s as skipped (%s):\n%s", file, reason, out)
		}
	}

	// skipped files alone do not fail a run
	quiet := t.TempDir()
	writeFile(t, filepath.Join(quiet, "README.txt"), "not a certificate")
	writeFile(t, filepath.Join(quiet, "stray.key"), stray.KeyPEM)
	if out := mustCLI(t, c, 0, "import", quiet, addr); !strings.Contains(out, "0 problems; 2 files skipped") ||
		!strings.Contains(out, "stray.key: skipped: no certificate for this key") {
		t.Errorf("import of a directory with only skipped files: %s", out)
	}
}

// TestCLIImportFromStorage migrates from stock Caddy: a Caddy without the
// plugin's app has its internal CA issue certificates for two names into
// a storage; a Caddy with domaincerts on the same storage imports them
// with --from-storage as managed domains of its internal authority, and
// serves the same certificates (same serials), with no new issuance.
func TestCLIImportFromStorage(t *testing.T) {
	storage := map[string]any{"module": "file_system", "root": t.TempDir()}
	names := []any{"one.stock.test", "two.stock.test"}
	stock := startCaddy(t, caddyOpts{NoApp: true, Storage: storage, TLS: map[string]any{
		"certificates": map[string]any{"automate": names},
		"automation": map[string]any{"policies": []any{map[string]any{
			"subjects": names, "issuers": []any{map[string]any{"module": "internal"}}}}},
	}})
	serials := map[string]string{}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range names {
		name := n.(string)
		for {
			got, err := handshake(t, stock.HTTPSAddr(), name)
			if err == nil {
				serials[name] = got.SerialNumber.Text(16)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("stock Caddy never served %s: %v", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	stock.Stop()

	c := startCaddy(t, caddyOpts{Storage: storage, App: map[string]any{
		"issuers":           map[string]any{"local": map[string]any{"module": "internal"}},
		"default_authority": "local",
	}})
	addr := "--address=" + c.AdminAddr
	out := mustCLI(t, c, 0, "import", "--from-storage", "one.stock.test", "two.stock.test", addr)
	if !strings.Contains(out, "2 created") {
		t.Fatalf("import --from-storage: %s", out)
	}
	for name, serial := range serials {
		var got string
		deadline := time.Now().Add(30 * time.Second)
		for {
			cert, err := handshake(t, c.HTTPSAddr(), name)
			if err == nil {
				got = cert.SerialNumber.Text(16)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not served after the import: %v", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got != serial {
			t.Errorf("%s: serial %s after the import, want the stored %s (a new certificate was issued)", name, got, serial)
		}
		d := mustCLI(t, c, 0, "get", name, "--json", addr)
		if !strings.Contains(d, `"authority": "local"`) {
			t.Errorf("%s: not a managed domain of the local authority:\n%s", name, d)
		}
	}
	if issued := c.issuanceLogLines(); len(issued) != 0 {
		t.Errorf("the import issued certificates:\n%s", strings.Join(issued, "\n"))
	}
	// a second run changes nothing
	if out := mustCLI(t, c, 0, "import", "--from-storage", addr); !strings.Contains(out, "0 created") || !strings.Contains(out, "2 unchanged") {
		t.Errorf("second import --from-storage: %s", out)
	}
}
