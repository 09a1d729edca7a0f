// Command dcbench measures Caddy with the domaincerts plugin against stock
// Caddy, side by side, in one run on one machine: loading N domains with
// their own certificates (through the admin API for ours, load_files for
// stock), full TLS 1.3 handshake throughput and latency with one server
// name and with names spread over all N, the time until a new certificate
// is served (an API call for ours, a config reload for stock), resident
// memory, and cold start. It prints a table with the ratio ours/stock and
// PASS/FAIL for the goals of issue 5, and can write the results as JSON.
//
// It builds both Caddy binaries itself (run it from the module root) or
// takes them with -ours and -stock, runs every Caddy on 127.0.0.1 with its
// own HOME and storage in a temporary directory, and stops them on every
// exit path. docs/benchmarks.md explains the rows and reports numbers.
//
// Usage:
//
//	go run ./cmd/dcbench -n 10000 -duration 5s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

// Module paths of the two binaries.
const (
	oursPackage  = "github.com/domaincerts/caddy-domaincerts/cmd/caddy"
	stockPackage = "github.com/caddyserver/caddy/v2/cmd/caddy"
	modulePath   = "github.com/domaincerts/caddy-domaincerts"
	sealedModule = "caddy.storage.sealed"
)

// idleWindow is how long the CPU of idle Caddys is measured.
const idleWindow = 5 * time.Second

// apiClients is how many clients upload at once in the concurrent load.
const apiClients = 8

// maxSequential bounds the domains loaded by one client: the first half of
// N, at most this many; the rest is loaded by apiClients clients.
const maxSequential = 2000

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dcbench:", err)
		os.Exit(1)
	}
}

// envPattern is a KEY=VALUE pair for -env; HOME and XDG_* are dcbench's.
var envPattern = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=.*$`)

// envFlag collects repeated -env flags.
type envFlag []string

func (e *envFlag) String() string { return strings.Join(*e, " ") }

func (e *envFlag) Set(kv string) error {
	k, _, _ := strings.Cut(kv, "=")
	if !envPattern.MatchString(kv) || k == "HOME" || strings.HasPrefix(k, "XDG_") {
		return fmt.Errorf("%q: use KEY=VALUE with an upper-case key other than HOME and XDG_*", kv)
	}
	*e = append(*e, kv)
	return nil
}

// options are the command-line flags.
type options struct {
	n           int
	duration    time.Duration
	concurrency int
	keys        []keyKind
	samples     int
	skipStock   bool
	cache       int
	hot         int
	storeDir    string
	warmup      time.Duration
	cacheMemory int64
	keep        bool
	ours, stock string
	jsonPath    string
	sealed      bool
	profileDir  string
	timeout     time.Duration
	env         envFlag
	flags       map[string]string
	writePairs  string
	// zipfS is the exponent of the many-names phase's Zipf distribution;
	// negative means uniform
	zipfS float64
}

func parseFlags(args []string, out io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("dcbench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.n, "n", 1000, "number of `domains`, each with its own certificate")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "length of each measured throughput phase, per server")
	fs.IntVar(&o.concurrency, "concurrency", 8, "handshakes in flight at once during throughput phases")
	key := fs.String("key", "both", "key type of the certificates: ecdsa (P-256), rsa (2048) or both")
	fs.IntVar(&o.samples, "samples", 50, "samples of the time until a new certificate is served, per server")
	fs.BoolVar(&o.skipStock, "skip-stock", false, "measure ours only")
	fs.StringVar(&o.storeDir, "store", "", "measure ours alone on a sealed store of N domains kept in this `directory`: built on the first run (through the API), reused by later runs with the same -n and -key")
	fs.DurationVar(&o.warmup, "warmup", 0, "with -store: run the many-names distribution this long, unmeasured, before the throughput phases (a warm cache, as on an edge that has served for a while)")
	fs.IntVar(&o.hot, "hot", 0, "hot_certificates of ours: 0 the default, -1 off, or a count")
	fs.IntVar(&o.cache, "cache", 0, "cache_capacity of ours; 0 means N+samples, at least 10000, so that every certificate stays cached as in stock")
	cacheMemory := fs.String("cache-memory", "", "cache_memory of ours, e.g. 400MiB; default none")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs, storage, logs, binaries)")
	fs.StringVar(&o.ours, "ours", "", "Caddy binary with the plugin; default: build "+oursPackage)
	fs.StringVar(&o.stock, "stock", "", "stock Caddy binary; default: build "+stockPackage)
	fs.StringVar(&o.jsonPath, "json", "", "also write the results to this `file` as JSON")
	fs.BoolVar(&o.sealed, "sealed", true, "also measure ours on sealed storage ("+sealedModule+"), if the binary has it")
	fs.StringVar(&o.profileDir, "profile", "", "write profiles of the Caddy processes to this `directory`: CPU during the API load, extra handshake phases and the first phase after restart; heap after loading")
	fs.DurationVar(&o.timeout, "timeout", 45*time.Minute, "give up after this long")
	fs.Var(&o.env, "env", "`KEY=VALUE` for the environment of every Caddy it starts, e.g. GOGC=50 or GOMEMLIMIT=900MiB; repeatable")
	sni := fs.String("sni", "uniform", "how the many-names phase draws its SNI: uniform, or zipf:<s> (e.g. zipf:1.0) for Zipf-distributed popularity")
	fs.StringVar(&o.writePairs, "write-pairs", "", "only write -n certificate/key pairs (-key ecdsa or rsa) as PEM files into this `directory`, 1,000 a subdirectory, for `caddy domaincerts import`, and exit")
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: dcbench [flags]\n\nMeasures Caddy with the domaincerts plugin against stock Caddy. See docs/benchmarks.md.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q; all options are flags", fs.Args())
	}
	switch *key {
	case "ecdsa":
		o.keys = []keyKind{keyECDSA}
	case "rsa":
		o.keys = []keyKind{keyRSA}
	case "both":
		o.keys = []keyKind{keyECDSA, keyRSA}
	default:
		return nil, fmt.Errorf("-key %q: use ecdsa, rsa or both", *key)
	}
	o.zipfS = -1
	if *sni != "uniform" {
		v, ok := strings.CutPrefix(*sni, "zipf:")
		exp, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil || exp < 0 || exp > 5 {
			return nil, fmt.Errorf("-sni %q: use uniform or zipf:<s> with s from 0 to 5, e.g. zipf:1.0", *sni)
		}
		o.zipfS = exp
	}
	if *cacheMemory != "" {
		n, err := humanize.ParseBytes(*cacheMemory)
		if err != nil || n == 0 || n > math.MaxInt64 {
			return nil, fmt.Errorf("-cache-memory %q: use a positive size such as 400MiB", *cacheMemory)
		}
		o.cacheMemory = int64(n)
	}
	switch {
	case o.n < 1 || o.n > 10_000_000:
		return nil, fmt.Errorf("-n %d: use 1 to 10000000", o.n)
	case o.duration < 50*time.Millisecond || o.duration > time.Hour:
		return nil, fmt.Errorf("-duration %v: use 50ms to 1h", o.duration)
	case o.concurrency < 1 || o.concurrency > 1024:
		return nil, fmt.Errorf("-concurrency %d: use 1 to 1024", o.concurrency)
	case o.samples < 1 || o.samples > 100_000:
		return nil, fmt.Errorf("-samples %d: use 1 to 100000", o.samples)
	case o.cache < 0:
		return nil, fmt.Errorf("-cache %d: use 0 (automatic) or a positive capacity", o.cache)
	case o.hot < -1:
		return nil, fmt.Errorf("-hot %d: use -1 (off), 0 (default) or a count", o.hot)
	case o.timeout <= 0:
		return nil, fmt.Errorf("-timeout %v: must be positive", o.timeout)
	}
	if o.storeDir != "" {
		o.skipStock = true // a kept store measures ours alone
	}
	o.flags = make(map[string]string)
	fs.VisitAll(func(f *flag.Flag) { o.flags[f.Name] = f.Value.String() })
	return o, nil
}

// bench is one run.
type bench struct {
	o      *options
	out    io.Writer
	tmp    string
	reg    *procs
	ca     *authority
	rp     *report
	start  time.Time
	ours   string // binaries
	stock  string
	sealed string // why sealed storage is not measured; "" if it is
}

// logf prints a progress line.
func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.out, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// run is the whole tool; main only wires up signals and the exit status.
func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	o, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if o.writePairs != "" {
		return writePairs(ctx, o, stdout)
	}

	b := &bench{o: o, out: stdout, reg: &procs{}, start: time.Now()}
	b.tmp, err = os.MkdirTemp("", "dcbench-")
	if err != nil {
		return fmt.Errorf("making temporary directory: %w", err)
	}
	defer func() {
		if o.keep {
			fmt.Fprintf(stdout, "kept %s\n", b.tmp)
		} else if rerr := os.RemoveAll(b.tmp); rerr != nil && err == nil {
			err = fmt.Errorf("removing temporary directory: %w", rerr)
		}
	}()
	// deferred after the removal, so it runs before it
	defer b.reg.stopAll()

	if err := b.binaries(ctx); err != nil {
		return err
	}
	if b.ca, err = newAuthority(); err != nil {
		return err
	}
	b.rp = &report{
		StartedAt: b.start.UTC(), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(),
		Flags: o.flags, Ours: b.ours, Stock: b.stock, SealedInBin: b.sealed == "",
		LoadStart: loadAverage(),
	}
	b.notes()
	for _, n := range b.rp.Notes {
		fmt.Fprintln(stdout, "note:", n)
	}
	for _, kind := range o.keys {
		suite := b.suite
		if o.storeDir != "" {
			suite = b.storeSuite
		}
		sr, err := suite(ctx, kind)
		if sr != nil {
			b.rp.Suites = append(b.rp.Suites, sr)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
	}
	b.rp.Elapsed = time.Since(b.start).Round(time.Second).String()
	b.rp.LoadEnd = loadAverage()
	b.rp.totals()
	for _, sr := range b.rp.Suites {
		writeTable(stdout, sr)
	}
	b.summary()
	if o.jsonPath != "" {
		if err := writeJSON(o.jsonPath, b.rp); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", o.jsonPath)
	}
	if b.rp.WrongCerts > 0 {
		return fmt.Errorf("%d handshakes got a wrong certificate; see first_error in the phases", b.rp.WrongCerts)
	}
	return nil
}

// notes are the caveats printed above the tables.
func (b *bench) notes() {
	o := b.o
	add := func(format string, args ...any) { b.rp.Notes = append(b.rp.Notes, fmt.Sprintf(format, args...)) }
	add("the load client runs in this process on the same %d CPUs as the Caddy under test (GOMAXPROCS %d): its own TLS work takes a large share of the CPU, so absolute rates are lower than with a separate client machine; ours and stock pay the same share, so ratios compare", runtime.NumCPU(), runtime.GOMAXPROCS(0))
	add("every handshake is a new TCP connection and a full TLS 1.3 handshake (no session cache; a resumed session would count as an error); the served leaf is checked on every handshake (serial number and name) and a wrong one counts as an error")
	add("throughput phases (ours and stock, one SNI and random SNI) are preceded by a warm-up and run round-robin in slices of at most %v, %d handshakes in flight, %v each", maxSlice, o.concurrency, o.duration)
	if len(o.env) > 0 {
		add("every Caddy runs with %s in its environment", strings.Join(o.env, " "))
	}
	if slices.Contains(o.keys, keyRSA) {
		add("RSA: the RSA-2048 certificates share a pool of %d keys (RSA key generation is slow); each certificate is still uploaded, stored and parsed on its own", rsaPoolSize)
	}
	add("one ECDSA P-256 CA signs every leaf; each chain is leaf + CA")
	add("cold start is from process start until a handshake for a random domain gets its certificate; dcbench leaves the page cache as it finds it (files it just wrote are in it; to start cold, drop it before the run: sync; echo 3 > /proc/sys/vm/drop_caches)")
	if b.sealed != "" {
		add("sealed storage: %s", b.sealed)
	}
	if o.profileDir != "" {
		add("CPU profiles are taken in extra handshake phases after the measured ones, into %s", o.profileDir)
	}
}

// binaries builds or checks the two Caddy binaries.
func (b *bench) binaries(ctx context.Context) error {
	b.ours, b.stock = b.o.ours, b.o.stock
	if b.o.skipStock {
		b.stock = ""
	}
	if b.ours == "" || (b.stock == "" && !b.o.skipStock) {
		goBin, err := exec.LookPath("go")
		if err != nil {
			return fmt.Errorf("finding the go command to build Caddy (or give -ours and -stock): %w", err)
		}
		root, err := moduleRoot(ctx, goBin)
		if err != nil {
			return err
		}
		build := func(pkg, name string) (string, error) {
			out := filepath.Join(b.tmp, "bin", name)
			t0 := time.Now()
			cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, pkg)
			cmd.Dir = root
			if msg, err := cmd.CombinedOutput(); err != nil {
				return "", fmt.Errorf("building %s: %w\n%s", pkg, err, msg)
			}
			b.logf("built %s in %v", name, time.Since(t0).Round(time.Millisecond))
			return out, nil
		}
		if b.ours == "" {
			if b.ours, err = build(oursPackage, "ours"); err != nil {
				return err
			}
		}
		if b.stock == "" && !b.o.skipStock {
			if b.stock, err = build(stockPackage, "stock"); err != nil {
				return err
			}
		}
	}
	for _, bin := range []string{b.ours, b.stock} {
		if bin == "" {
			continue
		}
		if ok, err := hasModule(ctx, bin, "tls.get_certificate.domaincerts"); err != nil {
			return err
		} else if ok != (bin == b.ours) {
			return fmt.Errorf("%s: the plugin is %s; -ours needs Caddy with the plugin, -stock without", bin, map[bool]string{true: "in it", false: "missing"}[ok])
		}
	}
	switch ok, err := hasModule(ctx, b.ours, sealedModule); {
	case err != nil:
		return err
	case !b.o.sealed:
		b.sealed = "not measured (-sealed=false)"
	case !ok:
		b.sealed = "not available: " + sealedModule + " is not in " + b.ours + " (caddy list-modules)"
	}
	return nil
}

// moduleRoot returns the directory of this module's go.mod.
func moduleRoot(ctx context.Context, goBin string) (string, error) {
	out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	mod, err := os.ReadFile(gomod)
	if gomod == "" || gomod == os.DevNull || err != nil || !strings.Contains(string(mod), "module "+modulePath+"\n") {
		return "", fmt.Errorf("run dcbench inside the %s module (found go.mod %q), or give -ours and -stock", modulePath, gomod)
	}
	return filepath.Dir(gomod), nil
}

// summary prints the goals' results.
func (b *bench) summary() {
	counts := map[string]int{}
	var failed []string
	for _, sr := range b.rp.Suites {
		for _, r := range sr.Rows {
			if r.Result == "" {
				continue
			}
			res := strings.TrimSuffix(r.Result, "*")
			counts[res]++
			if res == fail {
				failed = append(failed, fmt.Sprintf("%s %s (%s)", sr.Key, r.Metric, r.Goal))
			}
		}
	}
	fmt.Fprintf(b.out, "\ngoals: %d PASS, %d FAIL, %d n/a; handshake errors %d, wrong certificates %d; took %s; load average %s at start, %s at end\n",
		counts[pass], counts[fail], counts[na], b.rp.Errors, b.rp.WrongCerts, b.rp.Elapsed, b.rp.LoadStart, b.rp.LoadEnd)
	for _, f := range failed {
		fmt.Fprintf(b.out, "  FAIL: %s\n", f)
	}
}

// suite runs every measurement for one key type.
func (b *bench) suite(ctx context.Context, kind keyKind) (*suiteResult, error) {
	o := b.o
	sr := &suiteResult{Key: kind, N: o.n}
	withStock := b.stock != ""
	budget := max(time.Minute, 12*o.duration) // for each sampling phase

	// certificates
	t0 := time.Now()
	is, err := newIssuer(ctx, b.ca, kind)
	if err != nil {
		return nil, err
	}
	prefix := string(kind[0])
	names := siteNames(kind, o.n)
	extraNames := make([]string, o.samples)
	for i := range extraNames {
		extraNames[i] = fmt.Sprintf("new-%s%06d.dcbench.test", prefix, i)
	}
	sites, err := is.issueAll(ctx, names)
	if err != nil {
		return nil, err
	}
	extra, err := is.issueAll(ctx, extraNames)
	if err != nil {
		return nil, err
	}
	b.logf("%s: generated %d certificates in %v", kind, o.n+o.samples, time.Since(t0).Round(time.Millisecond))
	cacheCap := o.cache
	if cacheCap == 0 {
		cacheCap = max(10_000, o.n+o.samples)
	}
	stockCap := max(10_000, o.n+o.samples+16)
	// ours gets twice stock's tls cache capacity: hot certificates take at
	// most half of it by default, the rest stays for Caddy's own
	cache := cacheBounds{capacity: cacheCap, memory: o.cacheMemory, hot: o.hot, tlsCache: 2 * stockCap}
	memNote := ""
	if o.cacheMemory > 0 {
		memNote = fmt.Sprintf(", cache_memory %s", humanize.IBytes(uint64(o.cacheMemory)))
	}
	hotNote := "hot_certificates default (min of cache_capacity and half the tls cache capacity)"
	switch {
	case o.hot < 0:
		hotNote = "hot_certificates off"
	case o.hot > 0:
		hotNote = fmt.Sprintf("hot_certificates %d", o.hot)
	}
	sr.Notes = append(sr.Notes, fmt.Sprintf("ours: cache_capacity %d%s, %s, tls cache capacity %d; stock: tls cache capacity %d (stock's default, 10,000, would evict and then fail handshakes beyond it)", cacheCap, memNote, hotNote, 2*stockCap, stockCap))

	// ours: start and load through the admin API
	ours, err := newInstance("ours-"+string(kind), b.ours, b.tmp, o.env)
	if err != nil {
		return sr, err
	}
	if err := ours.writeConfig(ours.oursConfig(cache, "")); err != nil {
		return sr, err
	}
	if _, err := ours.start(b.reg); err != nil {
		return sr, err
	}
	defer ours.stop()
	if err := ours.waitReady(ctx); err != nil {
		return sr, err
	}
	half := min(o.n/2, maxSequential)
	seq, err := b.loadAPI(ctx, ours, sites[:half], 1)
	if err != nil {
		return sr, err
	}
	var conc *apiLoad
	err = b.profileDuring(ctx, ours, "api-load", func() error {
		conc, err = b.loadAPI(ctx, ours, sites[half:], apiClients)
		return err
	})
	if err != nil {
		return sr, err
	}
	b.logf("%s: ours loaded %d domains through the API: sequential %.0f/s, %d clients %.0f/s", kind, o.n, seq.rate, apiClients, conc.rate)
	r := sr.row("load_seq", fmt.Sprintf("load via API, 1 client, %d domains", half), "domains/s").set(f64(seq.rate), nil)
	r.Detail = seq.detail()
	if half == 0 {
		r.set(nil, nil)
	}
	loadRow := sr.row("load", fmt.Sprintf("load: ours API %d clients (%d domains) | stock one POST /load (%d)", apiClients, o.n-half, o.n), "domains/s").set(f64(conc.rate), nil)
	loadRow.Detail = "ours " + conc.detail()

	// stock: start empty, then one POST /load with N load_files
	var stock *instance
	var certDir string
	if withStock {
		certDir = filepath.Join(b.tmp, "stock-certs-"+string(kind))
		if err := writeStockFiles(ctx, certDir, append(sites[:len(sites):len(sites)], extra...)); err != nil {
			return sr, err
		}
		if stock, err = newInstance("stock-"+string(kind), b.stock, b.tmp, o.env); err != nil {
			return sr, err
		}
		if err := stock.writeConfig(stock.stockConfig(nil, certDir, stockCap)); err != nil {
			return sr, err
		}
		if _, err := stock.start(b.reg); err != nil {
			return sr, err
		}
		defer stock.stop()
		if err := stock.waitReady(ctx); err != nil {
			return sr, err
		}
		cfg := stock.stockConfig(sites, certDir, stockCap)
		body, err := json.Marshal(cfg)
		if err != nil {
			return sr, err
		}
		t := time.Now()
		if err := stock.admin.load(ctx, body); err != nil {
			return sr, fmt.Errorf("loading %d certificates into stock: %w", o.n, err)
		}
		took := time.Since(t)
		b.logf("%s: stock loaded %d certificates with POST /load in %v", kind, o.n, took.Round(time.Millisecond))
		loadRow.set(f64(conc.rate), f64(float64(o.n)/took.Seconds()))
		if err := stock.writeConfig(cfg); err != nil {
			return sr, err
		}
	}

	// both serve the first site before anything is measured
	for _, in := range []*instance{ours, stock} {
		if in == nil {
			continue
		}
		if _, _, err := waitServed(ctx, in.httpsAddr(), sites[0], 10*time.Millisecond, 30*time.Second); err != nil {
			return sr, fmt.Errorf("%s does not serve %s: %w; log %s:\n%s", in.name, sites[0].name, err, in.proc.log, tail(in.proc.log, 10))
		}
	}

	// memory after loading
	var stockMem memory
	oursMem, err := ours.readMemory()
	if err != nil {
		return sr, err
	}
	if withStock {
		if stockMem, err = stock.readMemory(); err != nil {
			return sr, err
		}
	}
	if o.profileDir != "" {
		path := filepath.Join(o.profileDir, ours.name+"-heap-after-load.pprof")
		if err := b.saveProfile(ctx, ours, "/debug/pprof/heap", path); err != nil {
			return sr, err
		}
	}
	mib := func(v int64) float64 { return float64(v) / (1 << 20) }
	rss := sr.row("rss", fmt.Sprintf("VmRSS after loading %d", o.n), "MiB")
	hwm := sr.row("hwm", fmt.Sprintf("VmHWM after loading %d", o.n), "MiB")
	if withStock {
		rss.set(f64(mib(oursMem.RSS)), f64(mib(stockMem.RSS)))
		hwm.set(f64(mib(oursMem.HWM)), f64(mib(stockMem.HWM)))
	} else {
		rss.set(f64(mib(oursMem.RSS)), nil)
		hwm.set(f64(mib(oursMem.HWM)), nil)
	}
	rss.check("< 1 GiB at N=100k", oursMem.RSS < 1<<30, o.n, true)

	// throughput and latency: one name, then names over all N
	if err := b.throughput(ctx, sr, ours, stock, sites); err != nil {
		return sr, err
	}

	// a new certificate until it is served
	added, err := b.changes(ctx, sr, ours, stock, sites, extra, certDir, stockCap, budget)
	if err != nil {
		return sr, err
	}

	if o.profileDir != "" {
		if err := b.profiles(ctx, kind, ours, stock, sites); err != nil {
			return sr, err
		}
	}

	// cold starts with the records of this run
	probe := sites[len(sites)/3]
	ours.stop()
	cold := sr.row("cold", fmt.Sprintf("cold start with %d records", o.n+o.samples), "s")
	oursCold, err := b.coldStart(ctx, ours, probe)
	if err != nil {
		return sr, err
	}
	var stockCold *float64
	if withStock {
		stock.stop()
		if err := stock.writeConfig(stock.stockConfig(append(sites[:len(sites):len(sites)], extra[:added]...), certDir, stockCap)); err != nil {
			return sr, err
		}
		c, err := b.coldStart(ctx, stock, probe)
		if err != nil {
			return sr, err
		}
		stockCold = f64(c.Seconds())
		stock.stop()
	}
	cold.set(f64(oursCold.Seconds()), stockCold)
	if withStock {
		cold.Detail = fmt.Sprintf("stock had %d load_files", o.n+added)
	}
	b.logf("%s: cold start ours %v", kind, oursCold.Round(time.Millisecond))
	var st *loadStats
	err = b.profileDuring(ctx, ours, "random-sni-after-restart", func() error {
		st = sr.phase("ours random-after-restart", runSlice(ctx, &target{addr: ours.httpsAddr(), sites: sites, pid: ours.pid(), pids: []int{ours.pid()}}, o.concurrency, o.duration, 7))
		return nil
	})
	if err != nil {
		return sr, err
	}
	r = sr.row("hs_rand_cold", "handshakes/s, random SNI, first phase after restart", "hs/s").set(f64(st.rate()), nil)
	r.Detail = fmt.Sprintf("lazy loads from storage into the cache; p50 %.2f ms, p99 %.2f ms; %s", st.percentile(50), st.percentile(99), b.phaseDetail([]*loadStats{st}))
	ours.stop()

	// sealed storage
	if err := b.sealedSuite(ctx, sr, kind, sites, cache); err != nil {
		return sr, err
	}
	return sr, nil
}

// siteNames are the names of a run's N domains of key type kind.
func siteNames(kind keyKind, n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%07d.dcbench.test", string(kind[0]), i)
	}
	return names
}

// apiLoad is the outcome of loading domains through the admin API.
type apiLoad struct {
	rate           float64 // domains per second, each an upload and an attach
	upload, attach []time.Duration
}

func (l *apiLoad) detail() string {
	return fmt.Sprintf("upload call p50 %.2f ms p99 %.2f ms, attach call p50 %.2f ms p99 %.2f ms",
		percentileMS(l.upload, 50), percentileMS(l.upload, 99), percentileMS(l.attach, 50), percentileMS(l.attach, 99))
}

// loadAPI uploads and attaches the certificates of sites with clients
// concurrent clients.
func (b *bench) loadAPI(ctx context.Context, in *instance, sites []*site, clients int) (*apiLoad, error) {
	l := &apiLoad{upload: make([]time.Duration, len(sites)), attach: make([]time.Duration, len(sites))}
	if len(sites) == 0 {
		return l, nil
	}
	t0 := time.Now()
	progress := time.Now()
	err := parallelN(ctx, clients, len(sites), func(i int) error {
		u, a, err := in.admin.upload(ctx, sites[i])
		l.upload[i], l.attach[i] = u, a
		return err
	}, func(done int) {
		if time.Since(progress) > 15*time.Second {
			progress = time.Now()
			b.logf("%s: %d of %d domains loaded", in.name, done, len(sites))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", in.name, err)
	}
	l.rate = float64(len(sites)) / time.Since(t0).Seconds()
	return l, nil
}

// throughput measures handshakes with one name and with names over all
// sites, ours and stock alternately.
func (b *bench) throughput(ctx context.Context, sr *suiteResult, ours, stock *instance, sites []*site) error {
	o := b.o
	// all four phases (ours and stock, one name and all names) run in
	// interleaved slices, so that the background load of a shared machine
	// falls on each alike
	pids := []int{ours.pid()}
	if stock != nil {
		pids = append(pids, stock.pid())
	}
	var targets []*target
	var z *zipf
	many, dist := "random-sni", fmt.Sprintf("SNI random over %d", o.n)
	if o.zipfS >= 0 {
		z = newZipf(len(sites), o.zipfS)
		many, dist = fmt.Sprintf("zipf-%g-sni", o.zipfS), fmt.Sprintf("SNI Zipf(%g) over %d", o.zipfS, o.n)
	}
	for _, mode := range []string{"one-sni", many} {
		set, dz := sites, z
		if mode == "one-sni" {
			set, dz = sites[:1], nil
		}
		targets = append(targets, &target{label: "ours " + mode, addr: ours.httpsAddr(), sites: set, zipf: dz, pid: ours.pid(), pids: pids})
		if stock != nil {
			targets = append(targets, &target{label: "stock " + mode, addr: stock.httpsAddr(), sites: set, zipf: dz, pid: stock.pid(), pids: pids})
		}
	}
	// every name once on each server, as on an edge that has served for
	// a while (ours' uploads, cached when stored, become hot on first use);
	// a kept store has its own warm-up (-warmup) instead
	t0 := time.Now()
	for _, in := range []*instance{ours, stock} {
		if in != nil && o.storeDir == "" {
			if err := prime(ctx, in.httpsAddr(), sites, o.concurrency); err != nil {
				return fmt.Errorf("%s: %w", in.name, err)
			}
		}
	}
	b.logf("%s: one handshake per name on each server in %v", sr.Key, time.Since(t0).Round(time.Millisecond))
	// what each Caddy spends with no traffic (background work: syncing,
	// maintenance), which the CPU per handshake rows include
	idle := []*instance{ours, stock}
	var before [2]uint64
	for i, in := range idle {
		before[i] = procTicks(in.pid())
	}
	t0 = time.Now()
	sleep(ctx, idleWindow)
	el := time.Since(t0).Seconds()
	var idleMS [2]*float64
	for i, in := range idle {
		if in != nil {
			idleMS[i] = f64(float64(procTicks(in.pid())-before[i]) * 1000 / clockTicks / el)
		}
	}
	sr.row("idle_cpu", fmt.Sprintf("Caddy CPU with no traffic (%v)", idleWindow), "ms/s").set(idleMS[0], idleMS[1])
	b.logf("%s: measuring throughput, one SNI and %s, ours and stock interleaved (%v each)", sr.Key, dist, o.duration)
	stats, err := measure(ctx, targets, o.concurrency, o.duration)
	if err != nil {
		return err
	}
	for i, t := range targets {
		sr.phase(t.label, stats[i])
	}
	var one, rnd [2]*loadStats
	if stock != nil {
		one[0], one[1], rnd[0], rnd[1] = stats[0], stats[1], stats[2], stats[3]
	} else {
		one[0], rnd[0] = stats[0], stats[1]
	}
	rate := func(s *loadStats) *float64 {
		if s == nil {
			return nil
		}
		return f64(s.rate())
	}
	pct := func(s *loadStats, p float64) *float64 {
		if s == nil {
			return nil
		}
		return f64(s.percentile(p))
	}
	cpu := func(s *loadStats) *float64 {
		if s == nil || s.cpuPerHandshake() == 0 {
			return nil
		}
		return f64(s.cpuPerHandshake())
	}
	r := sr.row("hs_one", "full handshakes/s, one SNI", "hs/s").set(rate(one[0]), rate(one[1]))
	if one[1] != nil && r.Ratio != nil {
		r.check("≥ 0.97× stock", *r.Ratio >= 0.97, o.n, false)
	} else {
		r.skip("≥ 0.97× stock", "stock not measured (-skip-stock)")
	}
	r.Detail = pairedDetail(one) + b.phaseDetail(one[:])
	sr.row("hs_one_p50", "latency p50, one SNI", "ms").set(pct(one[0], 50), pct(one[1], 50))
	sr.row("hs_one_p99", "latency p99, one SNI", "ms").set(pct(one[0], 99), pct(one[1], 99))
	sr.row("cpu_one", "Caddy CPU time per handshake, one SNI", "µs").set(cpu(one[0]), cpu(one[1]))

	r = sr.row("hs_rand", "full handshakes/s, "+dist, "hs/s").set(rate(rnd[0]), rate(rnd[1]))
	r.check("≥ 0.95× ours one-SNI", rnd[0].rate() >= 0.95*one[0].rate(), o.n, true)
	m, q1, q3, _ := pairedRatio(rnd[0], one[0])
	r.Detail = fmt.Sprintf("ours random/one = %.3f (per round: median %.3f, quartiles %.3f–%.3f); %s%s%s",
		rnd[0].rate()/one[0].rate(), m, q1, q3, pairedDetail(rnd), b.phaseDetail(rnd[:]), zipfDetail(z))
	sr.row("hs_rand_p50", "latency p50, "+dist, "ms").set(pct(rnd[0], 50), pct(rnd[1], 50))
	r = sr.row("hs_rand_p99", "latency p99, "+dist, "ms").set(pct(rnd[0], 99), pct(rnd[1], 99))
	r.check("≤ 1.2× ours one-SNI p99", rnd[0].percentile(99) <= 1.2*one[0].percentile(99), o.n, true)
	r.Detail = fmt.Sprintf("ours random p99 / one-SNI p99 = %.3f", rnd[0].percentile(99)/one[0].percentile(99))
	sr.row("cpu_rand", "Caddy CPU time per handshake, "+dist, "µs").set(cpu(rnd[0]), cpu(rnd[1]))
	if hot, err := ours.admin.metrics(ctx, "domaincerts_hot_certificates", "domaincerts_hot_promotions_total", "domaincerts_cache_entries"); err == nil {
		sr.Notes = append(sr.Notes, fmt.Sprintf("ours after the throughput phases: %.0f hot certificates (served from Caddy's cache; %.0f promotions), %.0f in its own cache",
			hot[0], hot[1], hot[2]))
	} else {
		b.logf("reading ours's metrics: %v", err)
	}
	return nil
}

// metrics returns the values of unlabelled metrics on /metrics, in order.
func (a *adminClient) metrics(ctx context.Context, names ...string) ([]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	vals := make([]float64, len(names))
	for i, name := range names {
		found := false
		for _, line := range strings.Split(string(text), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				if vals[i], err = strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					found = true
					break
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("no metric %s on /metrics", name)
		}
	}
	return vals, nil
}

// zipfDetail says how concentrated a Zipf phase's traffic was.
func zipfDetail(z *zipf) string {
	if z == nil {
		return ""
	}
	return fmt.Sprintf("; Zipf(%g): the most popular 1%% of names (at least one) draw %.0f%% of handshakes by expectation, 10%% draw %.0f%%",
		z.s, 100*z.share(0.01), 100*z.share(0.10))
}

// pairedDetail gives the median and quartiles of the per-round ratios
// ours/stock, or nothing without stock.
func pairedDetail(st [2]*loadStats) string {
	if st[1] == nil {
		return ""
	}
	m, q1, q3, n := pairedRatio(st[0], st[1])
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("ours/stock per round of slices: median %.3f, quartiles %.3f–%.3f, %d rounds; ", m, q1, q3, n)
}

// phaseDetail describes handshake counts, errors and the key exchange.
func (b *bench) phaseDetail(stats []*loadStats) string {
	var parts []string
	for i, s := range stats {
		if s == nil {
			continue
		}
		p := fmt.Sprintf("%s %d handshakes, %d errors, %d wrong certs", []string{"ours", "stock"}[i], s.Handshakes, s.Errors, s.WrongCerts)
		if s.Curve != "" {
			p += ", " + s.Curve
		}
		if c := s.cpuPerHandshake(); c > 0 {
			p += fmt.Sprintf(", CPU per handshake: Caddy %.0f µs, client %.0f µs", c, s.clientCPUPerHandshake())
		}
		p += fmt.Sprintf(", other processes used %.0f%% of the CPU", 100*s.OthersCPU)
		if s.FirstError != "" {
			p += ", first error: " + s.FirstError
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// changes measures how long a new certificate takes to be served: ours
// through upload + attach, stock through a config reload with one more
// load_files entry. It returns how many certificates stock got.
func (b *bench) changes(ctx context.Context, sr *suiteResult, ours, stock *instance, sites, extra []*site, certDir string, stockCap int, budget time.Duration) (int, error) {
	o := b.o
	b.logf("%s: measuring upload+attach → served (%d samples)", sr.Key, len(extra))
	var fromStart, fromReturn, calls []time.Duration
	t0 := time.Now()
	for _, s := range extra {
		if time.Since(t0) > budget {
			break
		}
		start := time.Now()
		if _, _, err := ours.admin.upload(ctx, s); err != nil {
			return 0, err
		}
		returned := time.Now()
		served, _, err := waitServed(ctx, ours.httpsAddr(), s, 0, 10*time.Second)
		if err != nil {
			return 0, fmt.Errorf("ours: %w", err)
		}
		fromStart = append(fromStart, served.Sub(start))
		fromReturn = append(fromReturn, served.Sub(returned))
		calls = append(calls, returned.Sub(start))
	}
	oursN := len(fromStart)

	var stockStart, stockCalls []time.Duration
	if stock != nil {
		b.logf("%s: measuring stock config reload → served (up to %d samples, %v)", sr.Key, len(extra), budget)
		t0 := time.Now()
		for k, s := range extra {
			if time.Since(t0) > budget {
				break
			}
			body, err := json.Marshal(stock.stockConfig(append(sites[:len(sites):len(sites)], extra[:k+1]...), certDir, stockCap))
			if err != nil {
				return 0, err
			}
			start := time.Now()
			if err := stock.admin.load(ctx, body); err != nil {
				return 0, fmt.Errorf("reloading stock: %w", err)
			}
			loaded := time.Now()
			served, _, err := waitServed(ctx, stock.httpsAddr(), s, 0, 30*time.Second)
			if err != nil {
				return 0, fmt.Errorf("stock: %w", err)
			}
			stockStart = append(stockStart, served.Sub(start))
			stockCalls = append(stockCalls, loaded.Sub(start))
		}
	}
	pct := func(ds []time.Duration, p float64) *float64 {
		if len(ds) == 0 {
			return nil
		}
		return f64(percentileMS(ds, p))
	}
	r := sr.row("change_p50", "new cert → served from request start, p50 (ours upload+attach | stock reload)", "ms").set(pct(fromStart, 50), pct(stockStart, 50))
	r.Detail = fmt.Sprintf("ours %d samples, upload+attach calls p50 %.2f ms p99 %.2f ms", oursN, percentileMS(calls, 50), percentileMS(calls, 99))
	if stock != nil {
		r.Detail += fmt.Sprintf("; stock %d of %d samples within %v, POST /load p50 %.2f ms p99 %.2f ms", len(stockStart), o.samples, budget, percentileMS(stockCalls, 50), percentileMS(stockCalls, 99))
	}
	sr.row("change_p99", "new cert → served from request start, p99", "ms").set(pct(fromStart, 99), pct(stockStart, 99))
	r = sr.row("served_p50", "ours: upload+attach returned → first handshake served it, p50", "ms").set(pct(fromReturn, 50), nil)
	r.check("< 10 ms", r.Ours != nil && *r.Ours < 10, o.n, false)
	r = sr.row("served_p99", "ours: upload+attach returned → served, p99", "ms").set(pct(fromReturn, 99), nil)
	r.check("< 50 ms", r.Ours != nil && *r.Ours < 50, o.n, false)
	return len(stockStart), nil
}

// coldStart starts in and returns the time from process start until a
// handshake for s gets its certificate. It leaves the process running.
func (b *bench) coldStart(ctx context.Context, in *instance, s *site) (time.Duration, error) {
	p, err := in.start(b.reg)
	if err != nil {
		return 0, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-wctx.Done():
		}
	}()
	served, _, err := waitServed(wctx, in.httpsAddr(), s, 2*time.Millisecond, readyTimeout)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("cold start of %s: %w; log %s:\n%s", in.name, err, p.log, tail(p.log, 15))
	}
	return served.Sub(p.started), nil
}

// sealedSuite loads the sites into ours on sealed storage and measures
// the load and a cold start.
func (b *bench) sealedSuite(ctx context.Context, sr *suiteResult, kind keyKind, sites []*site, cache cacheBounds) error {
	o := b.o
	load := sr.row("load_sealed", fmt.Sprintf("load via API, %d clients, sealed storage", apiClients), "domains/s")
	cold := sr.row("cold_sealed", fmt.Sprintf("cold start with %d sealed records", o.n), "s")
	rnd := sr.row("hs_rand_cold_sealed", "handshakes/s, random SNI, first phase after restart, sealed", "hs/s")
	if b.sealed != "" {
		load.Note, rnd.Note = b.sealed, b.sealed
		cold.skip("< 2 s at N=100k", b.sealed)
		return nil
	}
	in, err := newInstance("ours-sealed-"+string(kind), b.ours, b.tmp, o.env)
	if err != nil {
		return err
	}
	key, err := seal.GenerateKey()
	if err != nil {
		return err
	}
	if err := in.writeConfig(in.oursConfig(cache, seal.EncodeKey(key))); err != nil {
		return err
	}
	if _, err := in.start(b.reg); err != nil {
		return err
	}
	defer in.stop()
	if err := in.waitReady(ctx); err != nil {
		return err
	}
	var l *apiLoad
	err = b.profileDuring(ctx, in, "api-load", func() error {
		l, err = b.loadAPI(ctx, in, sites, apiClients)
		return err
	})
	if err != nil {
		return err
	}
	load.set(f64(l.rate), nil)
	load.Detail = l.detail()
	b.logf("%s: ours on sealed storage loaded %d domains at %.0f/s", kind, len(sites), l.rate)
	if err := checkSealed(in.storageDir()); err != nil {
		load.Note = err.Error()
	}
	in.stop()
	c, err := b.coldStart(ctx, in, sites[len(sites)/3])
	if err != nil {
		return err
	}
	cold.set(f64(c.Seconds()), nil)
	cold.check("< 2 s at N=100k", c < 2*time.Second, o.n, true)
	b.logf("%s: cold start ours sealed %v", kind, c.Round(time.Millisecond))
	var st *loadStats
	err = b.profileDuring(ctx, in, "random-sni-after-restart", func() error {
		st = sr.phase("ours-sealed random-after-restart", runSlice(ctx, &target{addr: in.httpsAddr(), sites: sites, pid: in.pid(), pids: []int{in.pid()}}, o.concurrency, o.duration, 9))
		return nil
	})
	if err != nil {
		return err
	}
	rnd.set(f64(st.rate()), nil)
	rnd.Detail = fmt.Sprintf("lazy loads with unsealing; p50 %.2f ms, p99 %.2f ms; %s", st.percentile(50), st.percentile(99), b.phaseDetail([]*loadStats{st}))
	return nil
}

// checkSealed reports an error unless the first private key file found in
// the storage under dir is a sealed envelope (one is enough: either the
// storage seals or it does not).
func checkSealed(dir string) error {
	var found string
	errFound := errors.New("found")
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".key") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !seal.IsSealed(b) {
			return fmt.Errorf("private key stored unsealed: %s", path)
		}
		found = path
		return errFound
	})
	switch {
	case errors.Is(err, errFound):
		return nil
	case err != nil:
		return err
	case found == "":
		return fmt.Errorf("no private key file in %s", dir)
	}
	return nil
}

// profiles takes CPU profiles of each Caddy during extra handshake phases.
func (b *bench) profiles(ctx context.Context, kind keyKind, ours, stock *instance, sites []*site) error {
	if err := os.MkdirAll(b.o.profileDir, 0o755); err != nil {
		return err
	}
	secs := max(1, int(b.o.duration.Seconds()))
	for _, in := range []*instance{ours, stock} {
		if in == nil {
			continue
		}
		for mode, set := range [][]*site{sites[:1], sites} {
			name := fmt.Sprintf("%s-%s.pprof", in.name, []string{"one-sni", "random-sni"}[mode])
			path := filepath.Join(b.o.profileDir, name)
			got := make(chan error, 1)
			go func() { got <- in.admin.save(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), path) }()
			st := runSlice(ctx, &target{addr: in.httpsAddr(), sites: set, pid: in.pid()}, b.o.concurrency, time.Duration(secs)*time.Second+200*time.Millisecond, 11)
			if err := <-got; err != nil {
				return fmt.Errorf("profiling %s: %w", in.name, err)
			}
			b.logf("%s: wrote %s (%s)", kind, path, b.phaseDetail([]*loadStats{st}))
		}
	}
	return nil
}

// profileDuring runs fn while taking a CPU profile of in, when -profile
// is set; the profile covers up to -duration (at least 1 s, at most 30 s)
// from the start of fn.
func (b *bench) profileDuring(ctx context.Context, in *instance, what string, fn func() error) error {
	if b.o.profileDir == "" {
		return fn()
	}
	if err := os.MkdirAll(b.o.profileDir, 0o755); err != nil {
		return err
	}
	secs := min(30, max(1, int(b.o.duration.Seconds())))
	path := filepath.Join(b.o.profileDir, in.name+"-"+what+".pprof")
	got := make(chan error, 1)
	go func() { got <- in.admin.save(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), path) }()
	err := fn()
	if perr := <-got; perr != nil && err == nil {
		return fmt.Errorf("profiling %s: %w", in.name, perr)
	}
	if err == nil {
		b.logf("wrote %s", path)
	}
	return err
}

// saveProfile fetches a profile from in's admin endpoint into path.
func (b *bench) saveProfile(ctx context.Context, in *instance, what, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := in.admin.save(ctx, what, path); err != nil {
		return fmt.Errorf("profiling %s: %w", in.name, err)
	}
	b.logf("wrote %s", path)
	return nil
}

// save writes the reply to a GET of path to file.
func (a *adminClient) save(ctx context.Context, path, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeStockFiles writes each site's chain and key as stock's load_files
// expect them.
func writeStockFiles(ctx context.Context, dir string, sites []*site) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return parallel(ctx, len(sites), func(i int) error {
		crt, key := stockFiles(dir, sites[i])
		if err := os.WriteFile(crt, sites[i].chainPEM, 0o600); err != nil {
			return err
		}
		return os.WriteFile(key, sites[i].keyPEM, 0o600)
	})
}
