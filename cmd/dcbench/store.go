package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

// A kept store (-store DIR) is ours' sealed storage with N domains, built
// once through the API and reused by later runs with the same -n and -key,
// so that a run at 1,000,000 domains does not start by generating and
// uploading a million certificates. DIR/<key>-<n> holds:
//
//	storage/   the sealed file_system storage
//	seal.key   its seal key
//	sites.tsv  every domain's name and its leaf's serial number
//	ready      written last: the store is complete
//
// Runs add their sample domains to it (named after the run), so a kept
// store grows by -samples domains per run.

// keptStore is one kept store.
type keptStore struct{ dir string }

func (k keptStore) storage() string  { return filepath.Join(k.dir, "storage") }
func (k keptStore) keyFile() string  { return filepath.Join(k.dir, "seal.key") }
func (k keptStore) manifest() string { return filepath.Join(k.dir, "sites.tsv") }
func (k keptStore) marker() string   { return filepath.Join(k.dir, "ready") }

func (k keptStore) ready() bool {
	_, err := os.Stat(k.marker())
	return err == nil
}

// writeManifest writes the names and serials of sites.
func (k keptStore) writeManifest(sites []*site) error {
	f, err := os.Create(k.manifest())
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for _, s := range sites {
		fmt.Fprintf(w, "%s\t%d\n", s.name, s.serial)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readManifest returns the sites of the store, with names and serials
// only (no key material: the store has it).
func (k keptStore) readManifest(n int) ([]*site, error) {
	f, err := os.Open(k.manifest())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sites := make([]*site, 0, n)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, serial, ok := strings.Cut(sc.Text(), "\t")
		v, err := strconv.ParseInt(serial, 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("%s: bad line %q", k.manifest(), sc.Text())
		}
		sites = append(sites, &site{name: name, serial: v})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(sites) != n {
		return nil, fmt.Errorf("%s lists %d sites; want %d", k.manifest(), len(sites), n)
	}
	return sites, nil
}

// storeSuite measures ours alone on a kept store: cold start, memory,
// throughput with one SNI and with -sni's distribution, and new
// certificates served. Stock is not run (N load_files at 1,000,000 is not
// a configuration anyone runs).
func (b *bench) storeSuite(ctx context.Context, kind keyKind) (*suiteResult, error) {
	o := b.o
	sr := &suiteResult{Key: kind, N: o.n}
	ks := keptStore{dir: filepath.Join(o.storeDir, fmt.Sprintf("%s-%d", string(kind), o.n))}
	cache := cacheBounds{capacity: o.cache, memory: o.cacheMemory, hot: o.hot}
	if cache.capacity == 0 {
		cache.capacity = 10_000
	}
	// the hot set may take all of ours' cache; Caddy's cache keeps as
	// much again for its own
	cache.tlsCache = 2 * cache.capacity
	sr.Notes = append(sr.Notes, fmt.Sprintf("ours alone on a kept sealed store (%s); cache_capacity %d, tls cache capacity %d", ks.dir, cache.capacity, cache.tlsCache))

	build := sr.row("store_build", fmt.Sprintf("build the kept store: generate and upload+attach %d certificates", o.n), "s")
	if !ks.ready() {
		took, err := b.buildStore(ctx, kind, ks, cache)
		if err != nil {
			return sr, err
		}
		build.set(f64(took.Seconds()), nil)
		build.Detail = fmt.Sprintf("%.0f domains/s; later runs with the same -n and -key reuse it", float64(o.n)/took.Seconds())
	} else {
		build.Note = "reused; built by an earlier run"
	}
	t0 := time.Now()
	sites, err := ks.readManifest(o.n)
	if err != nil {
		return sr, err
	}
	b.logf("%s: read the kept store's %d names in %v", kind, o.n, time.Since(t0).Round(time.Millisecond))

	key, err := os.ReadFile(ks.keyFile())
	if err != nil {
		return sr, err
	}
	ours, err := newInstance("ours-kept-"+string(kind), b.ours, b.tmp, o.env)
	if err != nil {
		return sr, err
	}
	ours.storage = ks.storage()
	if err := ours.writeConfig(ours.oursConfig(cache, strings.TrimSpace(string(key)))); err != nil {
		return sr, err
	}
	cold, err := b.coldStart(ctx, ours, sites[len(sites)/3])
	if err != nil {
		return sr, err
	}
	defer ours.stop()
	r := sr.row("cold_sealed", fmt.Sprintf("cold start to first correct handshake, %d sealed records", o.n), "s").set(f64(cold.Seconds()), nil)
	r.check("< 3 s sealed at N=1M", cold < 3*time.Second, o.n, false)
	b.logf("%s: cold start %v", kind, cold.Round(time.Millisecond))

	// an edge serving real traffic has a warm cache: the draws of the
	// distribution run for -warmup first, unmeasured (a name's first
	// handshake reads it from storage)
	if o.warmup > 0 {
		var z *zipf
		if o.zipfS >= 0 {
			z = newZipf(len(sites), o.zipfS)
		}
		b.logf("%s: warming the cache with the many-names distribution for %v", kind, o.warmup)
		w := runSlice(ctx, &target{label: "warm-up", addr: ours.httpsAddr(), sites: sites, zipf: z, pid: ours.pid(), pids: []int{ours.pid()}}, o.concurrency, o.warmup, 13)
		if stats, err := ours.admin.metrics(ctx, "domaincerts_cache_entries", "domaincerts_hot_certificates"); err == nil {
			sr.Notes = append(sr.Notes, fmt.Sprintf("warm-up: %v of the many-names draws (%d handshakes, not measured); then %.0f certificates cached, %.0f hot",
				o.warmup, w.Handshakes, stats[0], stats[1]))
		}
	}
	if err := b.throughput(ctx, sr, ours, nil, sites); err != nil {
		return sr, err
	}
	if o.profileDir != "" {
		var z *zipf
		if o.zipfS >= 0 {
			z = newZipf(len(sites), o.zipfS)
		}
		err := b.profileDuring(ctx, ours, "many-names", func() error {
			sr.phase("ours many-names (profiled)", runSlice(ctx, &target{addr: ours.httpsAddr(), sites: sites, zipf: z, pid: ours.pid(), pids: []int{ours.pid()}}, o.concurrency, o.duration, 17))
			return nil
		})
		if err != nil {
			return sr, err
		}
		path := filepath.Join(o.profileDir, ours.name+"-heap.pprof")
		if err := b.saveProfile(ctx, ours, "/debug/pprof/heap", path); err != nil {
			return sr, err
		}
	}
	mem, err := ours.readMemory()
	if err != nil {
		return sr, err
	}
	mib := func(v int64) float64 { return float64(v) / (1 << 20) }
	r = sr.row("rss", fmt.Sprintf("VmRSS after the handshake phases, %d domains", o.n), "MiB").set(f64(mib(mem.RSS)), nil)
	r.check("< 2 GiB at N=1M", mem.RSS < 2<<30, o.n, false)
	sr.row("hwm", "VmHWM", "MiB").set(f64(mib(mem.HWM)), nil)

	// new certificates, named after this run so that runs do not collide
	is, err := newIssuer(ctx, b.ca, kind)
	if err != nil {
		return sr, err
	}
	extraNames := make([]string, o.samples)
	for i := range extraNames {
		extraNames[i] = fmt.Sprintf("new-%d-%06d.dcbench.test", b.start.Unix(), i)
	}
	extra, err := is.issueAll(ctx, extraNames)
	if err != nil {
		return sr, err
	}
	if _, err := b.changes(ctx, sr, ours, nil, sites, extra, "", 0, max(time.Minute, 12*o.duration)); err != nil {
		return sr, err
	}
	return sr, nil
}

// buildStore generates the certificates, uploads and attaches them to ours
// on a new sealed storage, and writes the manifest.
func (b *bench) buildStore(ctx context.Context, kind keyKind, ks keptStore, cache cacheBounds) (time.Duration, error) {
	o := b.o
	t0 := time.Now()
	if err := os.RemoveAll(ks.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	if err := os.MkdirAll(ks.storage(), 0o700); err != nil {
		return 0, err
	}
	key, err := seal.GenerateKey()
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(ks.keyFile(), []byte(seal.EncodeKey(key)+"\n"), 0o600); err != nil {
		return 0, err
	}
	is, err := newIssuer(ctx, b.ca, kind)
	if err != nil {
		return 0, err
	}
	names := siteNames(kind, o.n)
	b.logf("%s: building a kept store of %d domains in %s", kind, o.n, ks.dir)
	sites, err := is.issueAll(ctx, names)
	if err != nil {
		return 0, err
	}
	b.logf("%s: generated %d certificates in %v", kind, o.n, time.Since(t0).Round(time.Second))
	in, err := newInstance("ours-build-"+string(kind), b.ours, b.tmp, o.env)
	if err != nil {
		return 0, err
	}
	in.storage = ks.storage()
	if err := in.writeConfig(in.oursConfig(cache, seal.EncodeKey(key))); err != nil {
		return 0, err
	}
	if _, err := in.start(b.reg); err != nil {
		return 0, err
	}
	defer in.stop()
	if err := in.waitReady(ctx); err != nil {
		return 0, err
	}
	const chunk = 50_000
	for i := 0; i < len(sites); i += chunk {
		part := sites[i:min(i+chunk, len(sites))]
		l, err := b.loadAPI(ctx, in, part, 2*apiClients)
		if err != nil {
			return 0, err
		}
		b.logf("%s: uploaded and attached %d of %d (%.0f/s)", kind, i+len(part), len(sites), l.rate)
	}
	in.stop() // writes the index snapshot
	if err := ks.writeManifest(sites); err != nil {
		return 0, err
	}
	if err := os.WriteFile(ks.marker(), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return 0, err
	}
	took := time.Since(t0)
	b.logf("%s: built the kept store in %v", kind, took.Round(time.Second))
	return took, nil
}
