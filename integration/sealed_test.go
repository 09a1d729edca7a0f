package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// sealedMagic starts every sealed value (see docs/sealed-storage.md).
var sealedMagic = []byte("\x89DCS")

func newSealKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(k)
}

// TestSealedStorage runs Caddy with `storage sealed` over file_system (the
// JSON shape of API.md), writes an uploaded certificate and an
// internal-issuer certificate, and checks what lies on disk: no private key
// in clear, every key file sealed. Restarted with the same key it serves the
// same certificates; with a wrong key it refuses to start and says why.
func TestSealedStorage(t *testing.T) {
	key := newSealKey(t)
	var storageDir string
	c := startCaddy(t, caddyOpts{
		App: map[string]any{
			"issuers":           map[string]any{"local": map[string]any{"module": "internal"}},
			"default_authority": "local",
		},
		Mutate: func(cfg map[string]any, c *caddyProc) {
			storageDir = c.StorageDir
			cfg["storage"] = map[string]any{
				"module": "sealed",
				"key":    key,
				"inner":  map[string]any{"module": "file_system", "root": c.StorageDir},
			}
			cfg["apps"].(map[string]any)["pki"] = map[string]any{
				"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}},
			}
		},
	})

	ca := testpki.NewChain(t, "Sealed Test CA")
	up := ca.Leaf(t, "upload.example.test")
	certID := c.uploadLeaf(t, up)
	c.createDomain(t, "upload.example.test", certID)
	expectServes(t, c, "upload.example.test", up, ca.Roots())

	// a managed domain: the internal CA issues it, CertMagic writes its key
	managedID, _ := c.createDomain(t, "managed.example.test", "")
	managedSerial := waitManagedSerial(t, c, managedID)

	checkNoClearKeys(t, storageDir, up)

	// restart with the same key: both certificates come back
	c.Restart()
	expectServes(t, c, "upload.example.test", up, ca.Roots())
	if got := servedSerial(t, c, "managed.example.test"); got != managedSerial {
		t.Fatalf("after restart managed.example.test serves %s; want %s", got, managedSerial)
	}
	c.Stop()

	// restart with another key: Caddy refuses, naming the sealed value and
	// what to configure
	wrong := c.Config
	wrong["storage"].(map[string]any)["key"] = newSealKey(t)
	raw, _ := json.Marshal(wrong)
	cfgFile := filepath.Join(c.HomeDir, "wrong-key.json")
	if err := os.WriteFile(cfgFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBin, "run", "--config", cfgFile)
	cmd.Dir = c.HomeDir
	cmd.Env = append(filteredEnv(), "HOME="+c.HomeDir,
		"XDG_DATA_HOME="+filepath.Join(c.HomeDir, "data"), "XDG_CONFIG_HOME="+filepath.Join(c.HomeDir, "config"))
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("caddy started with a wrong seal key (err %v); log:\n%s", err, out)
	}
	for _, want := range []string{"opening sealed value at", "no configured key has id", "old_keys"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("wrong-key failure does not say %q; log:\n%s", want, out)
		}
	}
	if bytes.Contains(out, []byte(key)) {
		t.Error("the log contains the seal key")
	}
}

// waitManagedSerial polls a managed domain until it has a certificate and
// returns the serial the handshake serves.
func waitManagedSerial(t *testing.T, c *caddyProc, domainID string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		d := c.getDomain(t, domainID)
		if cert, ok := d["certificate"].(map[string]any); ok && cert != nil {
			rec := c.getCert(t, cert["id"].(string))
			if rec["issued_at"] == nil {
				t.Fatalf("managed certificate has no issued_at: %v", rec)
			}
			name := d["domain"].(string)
			if got := servedSerial(t, c, name); got != rec["serial_number"] {
				t.Fatalf("%s serves %s; the resource says %v", name, got, rec["serial_number"])
			}
			return rec["serial_number"].(string)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("domain %s got no certificate within 60s: %v", domainID, c.getDomain(t, domainID))
	return ""
}

func servedSerial(t *testing.T, c *caddyProc, sni string) string {
	t.Helper()
	cert, err := handshake(t, c.HTTPSAddr(), sni)
	if err != nil {
		t.Fatalf("handshake %s: %v", sni, err)
	}
	return testpki.SerialHex(cert.SerialNumber)
}

// checkNoClearKeys scans the storage directory: no file holds a PEM
// private key or the DER of the uploaded key, and every private-key file
// (the upload's, CertMagic's, the internal CA's) is a sealed envelope.
func checkNoClearKeys(t *testing.T, dir string, up *testpki.ChainLeaf) {
	t.Helper()
	uploadDER, err := x509.MarshalPKCS8PrivateKey(up.Key)
	if err != nil {
		t.Fatal(err)
	}
	var keyFiles []string
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a PEM private key in clear", rel)
		}
		if bytes.Contains(b, uploadDER) {
			t.Errorf("%s holds the uploaded private key (DER) in clear", rel)
		}
		if strings.HasSuffix(rel, ".key") {
			keyFiles = append(keyFiles, rel)
			if !bytes.HasPrefix(b, sealedMagic) {
				t.Errorf("%s is not sealed", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// the upload's key, the managed certificate's key, and the internal
	// CA's root and intermediate keys at least
	var upload, managed, pki int
	for _, f := range keyFiles {
		switch {
		case strings.HasPrefix(f, filepath.Join("domaincerts", "certificates")):
			upload++
		case strings.HasPrefix(f, "certificates"+string(filepath.Separator)):
			managed++
		case strings.HasPrefix(f, "pki"+string(filepath.Separator)):
			pki++
		}
	}
	if upload < 1 || managed < 1 || pki < 2 {
		t.Fatalf("key files found: %v; want the upload's, a managed certificate's and the CA's", keyFiles)
	}
}

// runCaddy runs the Caddy binary with args, with c's environment (home and
// XDG directories) and working directory, and returns its combined output.
func (c *caddyProc) runCaddy(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Dir = c.HomeDir
	cmd.Env = append(filteredEnv(), "HOME="+c.HomeDir,
		"XDG_DATA_HOME="+filepath.Join(c.HomeDir, "data"), "XDG_CONFIG_HOME="+filepath.Join(c.HomeDir, "config"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// rewriteConfig edits c's configuration and writes it to its file, for
// the next start.
func (c *caddyProc) rewriteConfig(t *testing.T, edit func(cfg map[string]any)) {
	t.Helper()
	edit(c.Config)
	raw, err := json.MarshalIndent(c.Config, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.ConfigFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

// devKeySetup starts Caddy as `make run` does: sealed storage with no key
// (a development key is generated), in Caddy's data directory, managed
// domains from the internal CA; it uploads a certificate and gets a managed
// one, and returns what each name must serve.
func devKeySetup(t *testing.T) (c *caddyProc, served map[string]string, dataDir string) {
	t.Helper()
	c = startCaddy(t, caddyOpts{
		Storage: map[string]any{"module": "sealed"},
		App: map[string]any{
			"issuers":           map[string]any{"local": map[string]any{"module": "internal"}},
			"default_authority": "local",
		},
		Mutate: func(cfg map[string]any, c *caddyProc) {
			cfg["apps"].(map[string]any)["pki"] = map[string]any{
				"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}},
			}
		},
	})
	ca := testpki.NewChain(t, "Dev Key CA")
	up := ca.Leaf(t, "upload.example.test")
	c.createDomain(t, "upload.example.test", c.uploadLeaf(t, up))
	managed := c.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/domains", map[string]any{"domain": "managed.example.test"})
	served = map[string]string{
		"upload.example.test":  up.Serial,
		"managed.example.test": waitManagedSerial(t, c, managed["id"].(string)),
	}
	dataDir = filepath.Join(c.HomeDir, "data", "caddy")
	checkNoClearKeys(t, dataDir, up)
	return c, served, dataDir
}

func expectServedSerials(t *testing.T, c *caddyProc, served map[string]string, when string) {
	t.Helper()
	for name, serial := range served {
		if got := servedSerial(t, c, name); got != serial {
			t.Fatalf("%s: %s serves %s; want %s", when, name, got, serial)
		}
	}
}

// TestDevKeyResealExport runs the documented commands on the storage of
// the `make run` set-up (a development key): seal-reseal succeeds without
// touching the key, storage export works, and after a restart every
// certificate is still served. The development key is not in the storage.
func TestDevKeyResealExport(t *testing.T) {
	c, served, dataDir := devKeySetup(t)
	devKey := filepath.Join(c.HomeDir, "config", "caddy", "domaincerts", "seal.key")
	if _, err := os.Stat(devKey); err != nil {
		t.Fatalf("the development key is not at %s: %v", devKey, err)
	}
	if err := filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "seal.key" {
			t.Errorf("a seal key lies in the storage: %s", p)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c.Stop()

	out, err := c.runCaddy(t, "seal-reseal", "--config", c.ConfigFile)
	if err != nil || strings.Contains(out, "failed:") || !strings.Contains(out, "failed 0") {
		t.Fatalf("seal-reseal: %v\n%s", err, out)
	}
	expectNoStackTrace(t, "seal-reseal", out)
	tarball := filepath.Join(c.HomeDir, "export.tar")
	out, err = c.runCaddy(t, "storage", "export", "--config", c.ConfigFile, "--output", tarball)
	if err != nil {
		t.Fatalf("storage export: %v\n%s", err, out)
	}
	expectNoStackTrace(t, "storage export", out)
	if fi, err := os.Stat(tarball); err != nil || fi.Size() == 0 {
		t.Fatalf("export wrote nothing: %v", err)
	}
	c.Start()
	expectServedSerials(t, c, served, "after reseal and export")
}

// expectNoStackTrace fails the test if a command's output has a Go stack
// trace (a function line followed by a tab-indented file:line).
func expectNoStackTrace(t *testing.T, cmd, out string) {
	t.Helper()
	if regexp.MustCompile(`(?m)^\S+\(.*\)?\n\t\S+\.go:\d+`).MatchString(out) {
		t.Errorf("%s printed a stack trace:\n%s", cmd, out)
	}
}

// TestDevKeyRotation follows docs/sealed-storage.md from the development
// key to a real key, restarting Caddy after every step: every certificate
// is served after each restart, and at the end every sealed value is
// sealed under the new key.
func TestDevKeyRotation(t *testing.T) {
	c, served, dataDir := devKeySetup(t)
	devKey := filepath.Join(c.HomeDir, "config", "caddy", "domaincerts", "seal.key")

	// 1. a new key, in a file readable by Caddy only
	out, err := c.runCaddy(t, "seal-keygen")
	if err != nil {
		t.Fatalf("seal-keygen: %v\n%s", err, out)
	}
	keyFile := filepath.Join(c.HomeDir, "seal.key")
	if err := os.WriteFile(keyFile, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	// 2. the new key seals, the development key still opens
	c.rewriteConfig(t, func(cfg map[string]any) {
		cfg["storage"] = map[string]any{"module": "sealed", "key_file": keyFile, "old_keys": []any{"{file." + devKey + "}"}}
	})
	c.Restart()
	expectServedSerials(t, c, served, "with the new key and the development key as old key")
	// 3. everything resealed under the new key
	c.Stop()
	if out, err := c.runCaddy(t, "seal-reseal", "--config", c.ConfigFile); err != nil || !strings.Contains(out, "failed 0") {
		t.Fatalf("seal-reseal: %v\n%s", err, out)
	}
	c.Start()
	expectServedSerials(t, c, served, "after seal-reseal")
	// 4. the development key is not needed any more
	c.rewriteConfig(t, func(cfg map[string]any) {
		cfg["storage"] = map[string]any{"module": "sealed", "key_file": keyFile}
	})
	c.Restart()
	expectServedSerials(t, c, served, "with the new key alone")

	newKey, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(newKey)))
	if err != nil {
		t.Fatal(err)
	}
	wantID := keyIDOf(k)
	n := 0
	_ = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if bytes.HasPrefix(b, sealedMagic) {
			n++
			if !bytes.Equal(b[5:13], wantID) {
				t.Errorf("%s is sealed under key id %x; want the new key's %x", p, b[5:13], wantID)
			}
		}
		return nil
	})
	if n < 4 {
		t.Fatalf("%d sealed values; want the upload's, the managed certificate's and the CA's", n)
	}
}

// keyIDOf computes a seal key's id as the envelope carries it (see
// docs/sealed-storage.md).
func keyIDOf(key []byte) []byte {
	h := sha256.Sum256(append([]byte("domaincerts/sealed/key-id/v1\x00"), key...))
	return h[:8]
}
