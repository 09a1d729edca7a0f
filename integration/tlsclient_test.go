package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// handshakeTimeout bounds every TLS dial of the tests.
const handshakeTimeout = 10 * time.Second

// failFast is how quickly a refused handshake must fail.
const failFast = 3 * time.Second

// handshake dials addr with crypto/tls, sending sni as the server name (no
// SNI when sni is ""), and returns the leaf the server presented. It does not
// verify the chain; use verifyChain for that.
func handshake(t testing.TB, addr, sni string) (*x509.Certificate, error) {
	t.Helper()
	state, err := handshakeState(addr, sni)
	if err != nil {
		return nil, err
	}
	return state.PeerCertificates[0], nil
}

// handshakeState is handshake without a testing.T (for goroutines); it
// returns the whole connection state.
func handshakeState(addr, sni string) (*tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	d := &tls.Dialer{Config: &tls.Config{
		ServerName:         sni,
		InsecureSkipVerify: true, // the chain is checked by verifyChain where it matters
		MinVersion:         tls.VersionTLS12,
	}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	state := conn.(*tls.Conn).ConnectionState()
	if len(state.PeerCertificates) == 0 {
		return nil, errors.New("server presented no certificate")
	}
	return &state, nil
}

// verifyChain checks that the chain a server presented for sni verifies to
// roots for that name.
func verifyChain(t testing.TB, state *tls.ConnectionState, roots *x509.CertPool, sni string) {
	t.Helper()
	inter := x509.NewCertPool()
	for _, c := range state.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := state.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName:       sni,
		Roots:         roots,
		Intermediates: inter,
	}); err != nil {
		t.Errorf("chain served for %q does not verify: %v", sni, err)
	}
}

// expectServes requires a handshake for sni to succeed with the leaf whose
// serial is want (lowercase hex) and a chain that verifies to roots (if not
// nil).
func expectServes(t testing.TB, c *caddyProc, sni string, want *testpki.ChainLeaf, roots *x509.CertPool) {
	t.Helper()
	state, err := handshakeState(c.HTTPSAddr(), sni)
	if err != nil {
		t.Errorf("handshake for %q: %v, want the leaf %s", sni, err, want.Serial)
		return
	}
	got := state.PeerCertificates[0]
	if s := testpki.SerialHex(got.SerialNumber); s != want.Serial {
		t.Errorf("handshake for %q served serial %s (%v), want %s (%v)", sni, s, got.DNSNames, want.Serial, want.Cert.DNSNames)
		return
	}
	if roots != nil {
		verifyChain(t, state, roots, sni)
	}
}

// expectFails requires a handshake for sni to fail, and to fail fast,
// with a TLS alert from Caddy (not, say, a refused connection).
func expectFails(t testing.TB, c *caddyProc, sni string) {
	t.Helper()
	start := time.Now()
	cert, err := handshake(t, c.HTTPSAddr(), sni)
	elapsed := time.Since(start)
	if err == nil {
		t.Errorf("handshake for %q succeeded with serial %s %v, want a failure", sni, testpki.SerialHex(cert.SerialNumber), cert.DNSNames)
		return
	}
	if !strings.Contains(err.Error(), "remote error") {
		t.Errorf("handshake for %q: %v; want a TLS alert from Caddy", sni, err)
	}
	if elapsed > failFast {
		t.Errorf("handshake for %q failed after %s, want a failure within %s (err %v)", sni, elapsed, failFast, err)
	}
}

// requireTool returns the path of a tool the test needs; a missing tool
// fails the test (it never skips).
func requireTool(t testing.TB, path string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is required by this test: %v", path, err)
	}
	return path
}

// runTool runs a command with a bound and returns its combined output.
func runTool(t testing.TB, timeout time.Duration, stdin string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(filteredEnv(), "HOME="+t.TempDir())
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s timed out after %s", name, timeout)
	}
	return string(out), err
}
