package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	"time"
)

// Bounds on waiting for a Caddy process.
const (
	readyTimeout = 3 * time.Minute  // start until the admin endpoint answers
	stopTimeout  = 5 * time.Second  // SIGTERM until SIGKILL
	adminTimeout = 10 * time.Minute // one admin request (a /load of 100,000 certificates is slow)
)

// instance is one Caddy server set up by the benchmark: its binary,
// directories, ports and config. It can be started more than once (for
// cold starts); proc is the running process, if any.
type instance struct {
	name      string // "ours", "stock", "ours-sealed"; names logs and dirs
	bin       string
	dir       string // HOME, XDG dirs, storage, config and logs live here
	adminAddr string
	httpsPort int
	httpPort  int
	admin     *adminClient

	storage string // the file_system root; default: storage under dir

	runs int // how many times it was started
	proc *process
	env  []string // extra KEY=VALUE pairs for the process environment
}

// newInstance makes the directories and picks free ports.
func newInstance(name, bin, parent string, env []string) (*instance, error) {
	dir := filepath.Join(parent, name)
	for _, d := range []string{"home", "data", "config", "storage"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("making %s directory: %w", name, err)
		}
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	in := &instance{
		name: name, bin: bin, dir: dir, env: env,
		adminAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		httpsPort: ports[1], httpPort: ports[2],
	}
	in.admin = newAdminClient(in.adminAddr)
	return in, nil
}

// httpsAddr is where the instance serves TLS.
func (in *instance) httpsAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(in.httpsPort))
}

func (in *instance) storageDir() string {
	if in.storage != "" {
		return in.storage
	}
	return filepath.Join(in.dir, "storage")
}
func (in *instance) configPath() string { return filepath.Join(in.dir, "caddy.json") }

// baseConfig is the config both servers share; tls is the "tls" app and
// storage the global storage.
func (in *instance) baseConfig(storage, tls map[string]any, extraApps map[string]any) map[string]any {
	apps := map[string]any{
		"http": map[string]any{
			"https_port": in.httpsPort,
			"http_port":  in.httpPort,
			"servers": map[string]any{"edge": map[string]any{
				"listen":                  []string{in.httpsAddr()},
				"routes":                  []any{map[string]any{"handle": []any{map[string]any{"handler": "static_response", "body": "ok"}}}},
				"tls_connection_policies": []any{map[string]any{}},
				"automatic_https":         map[string]any{"disable": true},
			}},
		},
		"tls": tls,
	}
	for k, v := range extraApps {
		apps[k] = v
	}
	return map[string]any{
		"admin":   map[string]any{"listen": in.adminAddr},
		"storage": storage,
		"apps":    apps,
	}
}

// cacheBounds are the cache options of ours.
type cacheBounds struct {
	capacity int   // cache_capacity
	memory   int64 // cache_memory in bytes; 0: none
	hot      int   // hot_certificates; 0: default (half of tlsCache), -1: off
	tlsCache int   // the tls app's cache capacity; 0: Caddy's default
}

// oursConfig is the config of Caddy with the plugin: storage is
// file_system, or sealed around it when sealKey is set.
func (in *instance) oursConfig(cache cacheBounds, sealKey string) map[string]any {
	storage := map[string]any{"module": "file_system", "root": in.storageDir()}
	if sealKey != "" {
		storage = map[string]any{"module": "sealed", "key": sealKey, "inner": storage}
	}
	tls := map[string]any{"automation": map[string]any{"policies": []any{
		map[string]any{"get_certificate": []any{map[string]any{"via": "domaincerts"}}},
	}}}
	if cache.tlsCache > 0 {
		tls["cache"] = map[string]any{"capacity": cache.tlsCache}
	}
	app := map[string]any{"cache_capacity": cache.capacity}
	if cache.memory > 0 {
		app["cache_memory"] = cache.memory
	}
	if cache.hot != 0 {
		app["hot_certificates"] = cache.hot
	}
	return in.baseConfig(storage, tls, map[string]any{"domaincerts": app})
}

// stockConfig is the config of stock Caddy with load_files for sites,
// whose files are in certDir. The certificate cache holds capacity
// certificates, so that none is evicted.
func (in *instance) stockConfig(sites []*site, certDir string, capacity int) map[string]any {
	files := make([]any, len(sites))
	for i, s := range sites {
		crt, key := stockFiles(certDir, s)
		files[i] = map[string]any{"certificate": crt, "key": key}
	}
	tls := map[string]any{"cache": map[string]any{"capacity": capacity}}
	if len(files) > 0 {
		tls["certificates"] = map[string]any{"load_files": files}
	}
	storage := map[string]any{"module": "file_system", "root": in.storageDir()}
	return in.baseConfig(storage, tls, nil)
}

// stockFiles returns the certificate and key file of a site.
func stockFiles(dir string, s *site) (crt, key string) {
	return filepath.Join(dir, s.name+".crt"), filepath.Join(dir, s.name+".key")
}

// writeConfig writes cfg as the instance's config file.
func (in *instance) writeConfig(cfg map[string]any) error {
	b, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encoding %s config: %w", in.name, err)
	}
	return os.WriteFile(in.configPath(), b, 0o600)
}

// process is a running Caddy.
type process struct {
	name    string
	cmd     *exec.Cmd
	log     string // path of the file with its stdout and stderr
	started time.Time
	done    chan struct{} // closed when it exited
	waitErr error
}

// procs is every process the benchmark started that may still run, so that
// every exit path can stop them.
type procs struct {
	mu   sync.Mutex
	list []*process
}

// start runs the instance with its config file and returns once the
// process has started (not once it is ready).
func (in *instance) start(reg *procs) (*process, error) {
	if in.proc != nil {
		return nil, fmt.Errorf("%s is already running", in.name)
	}
	in.runs++
	logPath := filepath.Join(in.dir, fmt.Sprintf("caddy-%d.log", in.runs))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s log: %w", in.name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(in.bin, "run", "--config", in.configPath())
	cmd.Dir = in.dir
	cmd.Env = caddyEnv(in.dir, in.env)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Own process group: a Ctrl-C in the terminal reaches dcbench only,
	// which stops Caddy itself. Pdeathsig kills Caddy if dcbench dies
	// without running its deferred stops (SIGKILL, a panic elsewhere).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &process{name: in.name, cmd: cmd, log: logPath, done: make(chan struct{})}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", in.name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	reg.list = append(reg.list, p)
	in.proc = p
	return p, nil
}

// caddyEnv is the environment of a Caddy process: ours, with HOME and the
// XDG directories inside dir, and the KEY=VALUE pairs of extra replacing
// any of ours with the same key.
func caddyEnv(dir string, extra []string) []string {
	override := map[string]bool{"HOME": true}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		override[k] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if override[k] || strings.HasPrefix(k, "XDG_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"HOME="+filepath.Join(dir, "home"),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
	)
	return append(env, extra...)
}

// waitReady waits until the admin endpoint answers.
func (in *instance) waitReady(ctx context.Context) error {
	p := in.proc
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited while starting (%v); log %s:\n%s", in.name, p.waitErr, p.log, tail(p.log, 15))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		err := in.admin.do(rctx, http.MethodGet, "/config/", nil, http.StatusOK, nil)
		cancel()
		if err == nil {
			return nil
		}
		sleep(ctx, 10*time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %v; log %s:\n%s", in.name, readyTimeout, p.log, tail(p.log, 15))
}

// stop ends the running process: SIGTERM, then SIGKILL after stopTimeout.
func (in *instance) stop() {
	if in.proc != nil {
		in.proc.stop()
		in.proc = nil
	}
}

func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stopAll stops every process that was started.
func (r *procs) stopAll() {
	r.mu.Lock()
	list := r.list
	r.list = nil
	r.mu.Unlock()
	for _, p := range list {
		p.stop()
	}
}

// memory is what /proc/<pid>/status says about a process's memory.
type memory struct {
	RSS int64 `json:"vm_rss_bytes"` // resident now
	HWM int64 `json:"vm_hwm_bytes"` // resident at its peak
}

// readMemory reads VmRSS and VmHWM of the running process.
func (in *instance) readMemory() (memory, error) {
	var m memory
	if in.proc == nil {
		return m, fmt.Errorf("%s is not running", in.name)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", in.proc.cmd.Process.Pid))
	if err != nil {
		return m, fmt.Errorf("reading memory of %s: %w", in.name, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		fields := strings.Fields(v) // "123456 kB"
		if len(fields) != 2 || fields[1] != "kB" {
			return m, fmt.Errorf("reading memory of %s: unexpected line %q", in.name, sc.Text())
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("reading memory of %s: %w", in.name, err)
		}
		if k == "VmRSS" {
			m.RSS = n << 10
		} else {
			m.HWM = n << 10
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("reading memory of %s: no VmRSS in /proc status", in.name)
	}
	return m, sc.Err()
}

// adminClient calls a Caddy admin endpoint.
type adminClient struct {
	base string
	hc   *http.Client
}

func newAdminClient(addr string) *adminClient {
	return &adminClient{
		base: "http://" + addr,
		hc: &http.Client{
			Timeout: adminTimeout,
			Transport: &http.Transport{
				Proxy:               nil,
				MaxIdleConnsPerHost: 32,
				IdleConnTimeout:     30 * time.Second,
			},
		},
	}
}

// apiError is a reply with an unexpected status.
type apiError struct {
	method, path string
	status       int
	body         string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: status %d: %s", e.method, e.path, e.status, e.body)
}

// do sends body (JSON-encoded unless it is []byte) and decodes the reply
// into out when the status is want.
func (a *adminClient) do(ctx context.Context, method, path string, body any, want int, out any) error {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading reply to %s %s: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return &apiError{method: method, path: path, status: resp.StatusCode, body: strings.TrimSpace(string(reply[:min(len(reply), 500)]))}
	}
	if out != nil {
		if err := json.Unmarshal(reply, out); err != nil {
			return fmt.Errorf("decoding reply to %s %s: %w", method, path, err)
		}
	}
	return nil
}

// upload uploads a site's certificate and attaches it to a new domain for
// the site's name, as an operator would.
func (a *adminClient) upload(ctx context.Context, s *site) (uploadTook, attachTook time.Duration, err error) {
	t0 := time.Now()
	var cert struct {
		ID string `json:"id"`
	}
	err = a.do(ctx, http.MethodPost, "/domaincerts/tls_certificates",
		map[string]string{"certificate_pem": string(s.chainPEM), "private_key_pem": string(s.keyPEM)},
		http.StatusCreated, &cert)
	if err != nil {
		return 0, 0, fmt.Errorf("uploading certificate of %s: %w", s.name, err)
	}
	if !strings.HasPrefix(cert.ID, "cert_") {
		return 0, 0, fmt.Errorf("uploading certificate of %s: reply has id %q", s.name, cert.ID)
	}
	t1 := time.Now()
	err = a.do(ctx, http.MethodPost, "/domaincerts/domains",
		map[string]string{"domain": s.name, "certificate_id": cert.ID}, http.StatusCreated, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("attaching certificate to %s: %w", s.name, err)
	}
	return t1.Sub(t0), time.Since(t1), nil
}

// load replaces the running config, as `caddy reload` does.
func (a *adminClient) load(ctx context.Context, cfg []byte) error {
	return a.do(ctx, http.MethodPost, "/load", cfg, http.StatusOK, nil)
}

// hasModule reports whether bin has the module id (caddy list-modules).
func hasModule(ctx context.Context, bin, id string) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, bin, "list-modules").Output()
	if err != nil {
		return false, fmt.Errorf("listing modules of %s: %w", bin, err)
	}
	for line := range strings.Lines(string(out)) {
		if strings.TrimSpace(line) == id {
			return true, nil
		}
	}
	return false, nil
}

// freePorts returns n free TCP ports on 127.0.0.1. They are free when
// returned; another program may take one before Caddy does.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// errTimeout reports a bounded wait that ran out.
var errTimeout = errors.New("timed out")

// cpuTimes are CPU times in clock ticks: of the whole machine (busy and
// idle) and of a set of processes (this one and its Caddys).
type cpuTimes struct {
	busy, idle, own uint64
}

// readCPU reads /proc/stat and /proc/<pid>/stat of self and pids. Missing
// or unreadable files give zeros: the figure is only a hint.
func readCPU(pids []int) cpuTimes {
	var t cpuTimes
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		for i := 1; i < len(f) && i <= 8; i++ {
			v, _ := strconv.ParseUint(f[i], 10, 64)
			if i == 4 || i == 5 {
				t.idle += v
			} else {
				t.busy += v
			}
		}
	}
	for _, pid := range append([]int{os.Getpid()}, pids...) {
		t.own += procTicks(pid)
	}
	return t
}

// clockTicks is USER_HZ, the unit of CPU times in /proc; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procTicks returns the CPU time (user + system) of process pid in clock
// ticks, or 0 if it cannot be read.
func procTicks(pid int) uint64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // state is f[0], utime f[11], stime f[12]
	if len(f) <= 12 {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return u + st
}

// othersShare is the share of the machine's CPU that other processes used
// between a and b.
func othersShare(a, b cpuTimes) float64 {
	total := float64((b.busy + b.idle) - (a.busy + a.idle))
	if total <= 0 {
		return 0
	}
	others := float64(b.busy-a.busy) - float64(b.own-a.own)
	return max(0, others/total)
}

// pid is the process ID of the running Caddy, or 0.
func (in *instance) pid() int {
	if in == nil || in.proc == nil {
		return 0
	}
	return in.proc.cmd.Process.Pid
}

// loadAverage returns /proc/loadavg's first three fields.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
