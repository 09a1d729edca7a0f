package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// caddyBin is the Caddy binary every test runs, set by TestMain.
var caddyBin string

// suiteDir is a temporary directory that lives as long as the test binary:
// the built Caddy and the Pebble harness files go there.
var suiteDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	var err error
	suiteDir, err = os.MkdirTemp("", "domaincerts-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "creating suite dir:", err)
		return 1
	}
	defer os.RemoveAll(suiteDir)

	// Pebble reads these when it is constructed (lazily, by the first test
	// that needs it); the package has no parallel test that depends on them.
	os.Setenv("PEBBLE_VA_NOSLEEP", "1")
	os.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	// every order validates: Pebble otherwise reuses half of the valid
	// authorizations at random, so a test whose CA can no longer reach
	// Caddy (a failing renewal) could see every renewal succeed anyway
	os.Setenv("PEBBLE_AUTHZREUSE", "0")

	if bin := os.Getenv("DOMAINCERTS_CADDY_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "DOMAINCERTS_CADDY_BIN:", err)
			return 1
		}
		if st, err := os.Stat(abs); err != nil || st.IsDir() {
			fmt.Fprintf(os.Stderr, "DOMAINCERTS_CADDY_BIN=%s is not a file: %v\n", bin, err)
			return 1
		}
		caddyBin = abs
	} else {
		caddyBin = filepath.Join(suiteDir, "caddy")
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", caddyBin,
			"github.com/domaincerts/caddy-domaincerts/cmd/caddy")
		out, err := cmd.CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building caddy with the plugin failed: %v\n%s\n", err, out)
			return 1
		}
		fmt.Fprintf(os.Stderr, "built %s in %s\n", caddyBin, time.Since(start).Round(time.Millisecond))
	}

	code := m.Run()
	shutdownPebble()
	return code
}
