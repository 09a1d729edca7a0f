package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
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
