package integration

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestExampleCaddyfile runs examples/Caddyfile, the config of `make run`,
// on free ports (through its port variables): an upload and a managed
// domain from the internal CA are served, and normal operation logs
// nothing at WARN or above except the development key's notice (and
// Caddy's own notes that its plain HTTP port has no HTTP/2 or HTTP/3).
func TestExampleCaddyfile(t *testing.T) {
	caddyfile, err := filepath.Abs("../examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	c := startCaddy(t, caddyOpts{Mutate: func(cfg map[string]any, c *caddyProc) {
		t.Setenv("DOMAINCERTS_HTTPS_PORT", strconv.Itoa(c.HTTPSPort))
		t.Setenv("DOMAINCERTS_HTTP_PORT", strconv.Itoa(c.HTTPPort))
		t.Setenv("DOMAINCERTS_ADMIN", c.AdminAddr)
		cmd := exec.Command(c.bin, "adapt", "--config", caddyfile, "--adapter", "caddyfile")
		cmd.Env = append(filteredEnv(), "HOME="+c.HomeDir)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output() // the config alone; logs go to stderr
		if err != nil {
			t.Fatalf("adapting %s: %v\n%s", caddyfile, err, stderr.String())
		}
		var adapted map[string]any
		if err := json.Unmarshal(out, &adapted); err != nil {
			t.Fatalf("adapted config: %v\n%s", err, out)
		}
		clear(cfg)
		for k, v := range adapted {
			cfg[k] = v
		}
	}})
	ca := testpki.NewChain(t, "Example")
	// ending in 90 days, outside the default expiry_warning
	up := ca.LeafWith(t, testpki.LeafOptions{NotAfter: time.Now().Add(90 * 24 * time.Hour)}, "shop.example.test")
	c.createDomain(t, "shop.example.test", c.uploadLeaf(t, up))
	expectServes(t, c, "shop.example.test", up, ca.Roots())
	managed := c.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/domains", map[string]any{"domain": "app.example.test"})
	serial := waitManagedSerial(t, c, managed["id"].(string))
	if got := servedSerial(t, c, "app.example.test"); got != serial {
		t.Errorf("app.example.test serves %s, want the managed %s", got, serial)
	}

	allowed := regexp.MustCompile(`sealed storage uses a development key|HTTP/[23] skipped because it requires TLS`)
	for _, line := range strings.Split(c.Log(), "\n") {
		if (strings.Contains(line, `"level":"warn"`) || strings.Contains(line, `"level":"error"`)) && !allowed.MatchString(line) {
			t.Errorf("logged at WARN or above in normal operation: %s", line)
		}
	}
}
