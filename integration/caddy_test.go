package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// startTimeout bounds how long startCaddy waits for the admin endpoint
	// and the listeners.
	startTimeout = 30 * time.Second
	// stopTimeout bounds a graceful stop before the process is killed.
	stopTimeout = 15 * time.Second
)

// caddyOpts adjusts the default configuration of startCaddy. The zero value
// runs the default configuration described in the package tests' brief.
type caddyOpts struct {
	// App replaces the "domaincerts" app object. Default: {}.
	App map[string]any
	// NoApp removes the domaincerts app and the get_certificate manager, for
	// plain Caddy configurations (harness self-tests).
	NoApp bool
	// Storage replaces the global "storage" object. Default: file_system
	// rooted at StorageDir.
	Storage map[string]any
	// TLS keys are set on the "tls" app object, replacing the default key of
	// the same name (for example "certificates" or "automation").
	TLS map[string]any
	// HTTPPort and HTTPSPort fix Caddy's ports (for ACME tests that need the
	// HTTP-01 port Pebble validates on). Default: free ports.
	HTTPPort, HTTPSPort int
	// IdleStdin gives Caddy a standard input that stays open and never
	// has data, like a terminal nobody types into (the default is
	// /dev/null, which reads as end of file at once).
	IdleStdin bool
	// Mutate, if set, edits the final configuration. The caddyProc has its
	// ports and directories set when Mutate runs.
	Mutate func(cfg map[string]any, c *caddyProc)
	// Bin is the Caddy binary to run. Default: caddyBin, the plugin's
	// build under test.
	Bin string
}

// caddyProc is one Caddy subprocess with its ports, directories and log.
type caddyProc struct {
	t *testing.T

	AdminAddr  string // 127.0.0.1:<port>
	HTTPPort   int
	HTTPSPort  int
	StorageDir string // the file_system storage root; survives Restart
	HomeDir    string // HOME, XDG_DATA_HOME and XDG_CONFIG_HOME live here
	ConfigFile string
	Config     map[string]any

	log       *syncBuffer
	bin       string
	idleStdin bool
	stdinW    *os.File // the write end of an IdleStdin pipe

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the current process has exited
	runs int
}

// HTTPSAddr is the address of the "edge" server (TLS).
func (c *caddyProc) HTTPSAddr() string { return "127.0.0.1:" + strconv.Itoa(c.HTTPSPort) }

// HTTPAddr is the address of the "plain" server.
func (c *caddyProc) HTTPAddr() string { return "127.0.0.1:" + strconv.Itoa(c.HTTPPort) }

// Log returns everything Caddy wrote to stdout and stderr so far, across
// restarts.
func (c *caddyProc) Log() string { return c.log.String() }

// startCaddy writes the configuration, runs `caddy run --config` and waits
// until the admin endpoint answers GET /config/ and the servers listen.
// The process is stopped in t.Cleanup; its config and log are dumped with
// t.Log if the test failed (or always, with DOMAINCERTS_TEST_LOG=1).
func startCaddy(t *testing.T, opts caddyOpts) *caddyProc {
	t.Helper()
	c := &caddyProc{
		t:          t,
		AdminAddr:  "127.0.0.1:" + strconv.Itoa(freePort(t)),
		HTTPPort:   opts.HTTPPort,
		HTTPSPort:  opts.HTTPSPort,
		StorageDir: t.TempDir(),
		HomeDir:    t.TempDir(),
		log:        &syncBuffer{},
		bin:        opts.Bin,
		idleStdin:  opts.IdleStdin,
	}
	if c.bin == "" {
		c.bin = caddyBin
	}
	if c.HTTPPort == 0 {
		c.HTTPPort = freePort(t)
	}
	if c.HTTPSPort == 0 {
		c.HTTPSPort = freePort(t)
	}
	c.Config = defaultConfig(c, opts)
	if opts.Mutate != nil {
		opts.Mutate(c.Config, c)
	}
	raw, err := json.MarshalIndent(c.Config, "", "  ")
	if err != nil {
		t.Fatalf("encoding config: %v", err)
	}
	c.ConfigFile = filepath.Join(c.HomeDir, "caddy.json")
	if err := os.WriteFile(c.ConfigFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stop(false)
		if t.Failed() || os.Getenv("DOMAINCERTS_TEST_LOG") != "" {
			t.Logf("caddy config:\n%s", raw)
			t.Logf("caddy log (%s):\n%s", c.AdminAddr, c.Log())
		}
	})
	c.start()
	return c
}

func defaultConfig(c *caddyProc, opts caddyOpts) map[string]any {
	storage := map[string]any{"module": "file_system", "root": c.StorageDir}
	if opts.Storage != nil {
		storage = opts.Storage
	}
	app := map[string]any{}
	if opts.App != nil {
		app = opts.App
	}
	tlsApp := map[string]any{
		"automation": map[string]any{
			"policies": []any{
				map[string]any{"get_certificate": []any{map[string]any{"via": "domaincerts"}}},
			},
		},
	}
	if opts.NoApp {
		delete(tlsApp, "automation")
	}
	for k, v := range opts.TLS {
		tlsApp[k] = v
	}
	apps := map[string]any{
		"http": map[string]any{
			"http_port":    c.HTTPPort,
			"https_port":   c.HTTPSPort,
			"grace_period": 1,
			"servers": map[string]any{
				"edge": map[string]any{
					"listen": []any{c.HTTPSAddr()},
					"routes": []any{map[string]any{"handle": []any{
						map[string]any{"handler": "static_response", "body": "ok"}}}},
					"tls_connection_policies": []any{map[string]any{}},
					"automatic_https":         map[string]any{"disable": true},
				},
				"plain": map[string]any{
					"listen": []any{c.HTTPAddr()},
					"routes": []any{map[string]any{"handle": []any{
						map[string]any{"handler": "static_response", "body": "plain"}}}},
					"automatic_https": map[string]any{"disable": true},
				},
			},
		},
		"tls": tlsApp,
	}
	if !opts.NoApp {
		apps["domaincerts"] = app
	}
	return map[string]any{
		"admin":   map[string]any{"listen": c.AdminAddr},
		"storage": storage,
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "DEBUG"}}},
		"apps":    apps,
	}
}

// start runs the process and waits until it is ready; it fails the test
// with the log if Caddy exits or is not ready within startTimeout.
func (c *caddyProc) start() {
	t := c.t
	t.Helper()
	c.mu.Lock()
	c.runs++
	fmt.Fprintf(c.log, "===== harness: starting caddy (run %d) =====\n", c.runs)
	cmd := exec.Command(c.bin, "run", "--config", c.ConfigFile)
	cmd.Dir = c.HomeDir
	cmd.Env = append(filteredEnv(),
		"HOME="+c.HomeDir,
		"XDG_DATA_HOME="+filepath.Join(c.HomeDir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(c.HomeDir, "config"),
		"XDG_CACHE_HOME="+filepath.Join(c.HomeDir, "cache"),
	)
	cmd.Stdout = c.log
	cmd.Stderr = c.log
	var stdinW *os.File
	if c.idleStdin {
		r, w, err := os.Pipe()
		if err != nil {
			c.mu.Unlock()
			t.Fatalf("making caddy's stdin: %v", err)
		}
		cmd.Stdin, stdinW = r, w
		defer r.Close() // the child has its own copy once started
	}
	if err := cmd.Start(); err != nil {
		c.mu.Unlock()
		if stdinW != nil {
			stdinW.Close()
		}
		t.Fatalf("starting caddy: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		if stdinW != nil {
			stdinW.Close()
		}
		fmt.Fprintf(c.log, "===== harness: caddy exited: %v =====\n", cmd.ProcessState)
		close(done)
	}()
	c.cmd, c.done, c.stdinW = cmd, done, stdinW
	c.mu.Unlock()

	if err := c.waitReady(done); err != nil {
		t.Fatalf("caddy did not become ready: %v (the log follows)", err)
	}
}

func (c *caddyProc) waitReady(done chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	client := &http.Client{Timeout: 2 * time.Second}
	adminOK := false
	for {
		select {
		case <-done:
			return fmt.Errorf("caddy exited during start-up")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s (admin answered: %v)", startTimeout, adminOK)
		}
		if !adminOK {
			resp, err := client.Get("http://" + c.AdminAddr + "/config/")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				adminOK = resp.StatusCode == http.StatusOK
			}
		}
		// The admin endpoint starts before the apps; wait for the listeners
		// of the servers in the config too.
		if adminOK && c.listening() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listening reports whether every listen address of every http server in
// the configuration accepts TCP connections.
func (c *caddyProc) listening() bool {
	for _, addr := range c.listenAddrs() {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		conn.Close()
	}
	return true
}

func (c *caddyProc) listenAddrs() []string {
	var addrs []string
	apps, _ := c.Config["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	for _, s := range servers {
		srv, _ := s.(map[string]any)
		list, _ := srv["listen"].([]any)
		for _, l := range list {
			if s, ok := l.(string); ok && strings.HasPrefix(s, "127.0.0.1:") {
				addrs = append(addrs, s)
			}
		}
	}
	return addrs
}

// CloseStdin closes the IdleStdin of the running process, which then
// reads end of file.
func (c *caddyProc) CloseStdin() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stdinW != nil {
		c.stdinW.Close()
	}
}

// Stop stops Caddy gracefully (POST /stop, then SIGINT) and waits for it to
// exit, killing it after stopTimeout. It is safe to call more than once.
func (c *caddyProc) Stop() {
	c.t.Helper()
	c.stop(true)
}

// take returns the running process and forgets it, or nil.
func (c *caddyProc) take() (*exec.Cmd, chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cmd, done := c.cmd, c.done
	c.cmd = nil
	return cmd, done
}

func (c *caddyProc) stop(report bool) {
	cmd, done := c.take()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		if report {
			c.t.Errorf("caddy had already exited")
		}
		return
	default:
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Post("http://"+c.AdminAddr+"/stop", "application/json", nil)
	if err == nil {
		resp.Body.Close()
	} else {
		_ = cmd.Process.Signal(syscall.SIGINT)
	}
	select {
	case <-done:
		return
	case <-time.After(stopTimeout):
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	if report {
		c.t.Errorf("caddy did not stop within %s and was killed", stopTimeout)
	}
}

// Kill kills Caddy with SIGKILL, as a crash or kill -9 would: nothing is
// flushed, no lock released. It waits for the process to exit.
func (c *caddyProc) Kill() {
	cmd, done := c.take()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Signal sends sig to the running Caddy process (SIGSTOP and SIGCONT
// pause and resume it, as a VM pause or a debugger would).
func (c *caddyProc) Signal(sig os.Signal) {
	c.t.Helper()
	c.mu.Lock()
	cmd := c.cmd
	c.mu.Unlock()
	if cmd == nil {
		c.t.Fatal("caddy is not running")
	}
	if err := cmd.Process.Signal(sig); err != nil {
		c.t.Fatal(err)
	}
}

// Start runs Caddy again after Stop or Kill, with the same configuration
// file, ports and storage.
func (c *caddyProc) Start() {
	c.t.Helper()
	c.start()
}

// Restart stops Caddy and runs it again with the same configuration file,
// ports and storage.
func (c *caddyProc) Restart() {
	c.t.Helper()
	c.Stop()
	c.start()
}

// filteredEnv is the test's environment without the variables that would
// point Caddy at the real home directory.
func filteredEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "CADDY_ADMIN":
			continue
		}
		env = append(env, kv)
	}
	return env
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// freePort asks the kernel for a free TCP port on 127.0.0.1 that this test
// binary has not handed out before.
func freePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		portsMu.Lock()
		used := portsUsed[p]
		portsUsed[p] = true
		portsMu.Unlock()
		if !used {
			return p
		}
	}
	t.Fatal("no free port found")
	return 0
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// issuanceLogLines returns the log lines that show CertMagic starting to
// obtain a certificate (an ACME order or any other issuer).
func (c *caddyProc) issuanceLogLines() []string {
	var lines []string
	for _, line := range strings.Split(c.Log(), "\n") {
		l := strings.ToLower(line)
		if strings.Contains(l, "obtaining") || strings.Contains(l, "cert_obtaining") {
			lines = append(lines, line)
		}
	}
	return lines
}

// assertNoIssuance fails the test if Caddy tried to obtain a certificate
// or created CertMagic's certificates/ directory in storage.
func (c *caddyProc) assertNoIssuance(t *testing.T) {
	t.Helper()
	if lines := c.issuanceLogLines(); len(lines) > 0 {
		t.Errorf("caddy tried to obtain a certificate:\n%s", strings.Join(lines, "\n"))
	}
	if _, err := os.Stat(filepath.Join(c.StorageDir, "certificates")); err == nil {
		t.Errorf("storage has a certificates/ directory (an issuance happened):\n%s", treeOf(c.StorageDir))
	}
}

// treeOf lists the files under dir, for failure messages.
func treeOf(dir string) string {
	var sb strings.Builder
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			rel += "/"
		}
		sb.WriteString(rel + "\n")
		return nil
	})
	return sb.String()
}
