package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the whole tool in-process with tiny numbers against both
// servers, which it builds itself, and checks that every row is there with
// plausible values. It checks no speed goal: the numbers of a 300 ms phase
// on a shared machine say nothing.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	var out bytes.Buffer
	// the many-names phase draws Zipf(1.0)-distributed names (the cold
	// phase after a restart draws them uniformly)
	args := []string{"-n", "20", "-duration", "300ms", "-samples", "5", "-concurrency", "4", "-key", "both", "-sni", "zipf:1.0", "-json", jsonPath}
	start := time.Now()
	if err := run(ctx, args, &out); err != nil {
		t.Fatalf("run %v: %v\noutput:\n%s", args, err, out.String())
	}
	t.Logf("run took %v", time.Since(start).Round(time.Millisecond))
	text := out.String()
	if !strings.Contains(text, "SNI Zipf(1) over 20") || !strings.Contains(text, "the most popular 1% of names (at least one) draw") {
		t.Errorf("the report does not show the Zipf phase:\n%s", text)
	}

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rp report
	if err := json.Unmarshal(b, &rp); err != nil {
		t.Fatalf("decoding %s: %v", jsonPath, err)
	}
	// the binary the test builds always has sealed storage (module.go), so
	// its rows must be measured, not "not available"
	if !rp.SealedInBin {
		t.Fatalf("sealed storage not found in the built binary, so not measured\n%s", out.String())
	}
	if rp.WrongCerts != 0 || rp.Errors != 0 {
		t.Errorf("wrong certificates %d, handshake errors %d; want none\n%s", rp.WrongCerts, rp.Errors, text)
	}
	if len(rp.Suites) != 2 || rp.Suites[0].Key != keyECDSA || rp.Suites[1].Key != keyRSA {
		t.Fatalf("suites %+v; want ecdsa then rsa", rp.Suites)
	}
	for _, want := range []string{"the load client runs in this process", "RSA-2048 certificates share a pool", "goals:"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// which columns each row must fill
	const (
		both = iota
		oursOnly
		sealed // ours only, on sealed storage
		coarse // both, but may be missing: CPU ticks are 10 ms, a tiny phase may see none
		zeroOK // both measured, and 0 is a fine value (an idle server)
	)
	rows := []struct {
		id   string
		cols int
		goal bool
	}{
		{"load_seq", oursOnly, false},
		{"load", both, false},
		{"rss", both, true},
		{"hwm", both, false},
		{"hs_one", both, true},
		{"hs_one_p50", both, false},
		{"hs_one_p99", both, false},
		{"cpu_one", coarse, false},
		{"hs_rand", both, true},
		{"hs_rand_p50", both, false},
		{"hs_rand_p99", both, true},
		{"cpu_rand", coarse, false},
		{"idle_cpu", zeroOK, false},
		{"change_p50", both, false},
		{"change_p99", both, false},
		{"served_p50", oursOnly, true},
		{"served_p99", oursOnly, true},
		{"cold", both, false},
		{"hs_rand_cold", oursOnly, false},
		{"load_sealed", sealed, false},
		{"cold_sealed", sealed, true},
		{"hs_rand_cold_sealed", sealed, false},
	}
	for _, sr := range rp.Suites {
		t.Run(string(sr.Key), func(t *testing.T) {
			if sr.N != 20 {
				t.Errorf("n = %d, want 20", sr.N)
			}
			if len(sr.Rows) != len(rows) {
				t.Errorf("%d rows, want %d", len(sr.Rows), len(rows))
			}
			for _, want := range rows {
				r := sr.find(want.id)
				if r == nil {
					t.Errorf("row %s missing", want.id)
					continue
				}
				if !strings.Contains(text, r.Metric) {
					t.Errorf("row %s (%q) not in the printed table", want.id, r.Metric)
				}
				positive := func(col string, v *float64) {
					if v == nil || !(*v > 0) {
						t.Errorf("row %s: %s = %v, want > 0", want.id, col, deref(v))
					}
				}
				switch {
				case want.cols == zeroOK:
					for col, v := range map[string]*float64{"ours": r.Ours, "stock": r.Stock} {
						if v == nil || *v < 0 {
							t.Errorf("row %s: %s = %v, want ≥ 0", want.id, col, deref(v))
						}
					}
					continue
				case want.cols == coarse:
					for col, v := range map[string]*float64{"ours": r.Ours, "stock": r.Stock} {
						if v != nil && !(*v > 0) {
							t.Errorf("row %s: %s = %v, want > 0 or none", want.id, col, *v)
						}
					}
					continue
				default:
					positive("ours", r.Ours)
				}
				if want.cols == both {
					positive("stock", r.Stock)
					positive("ratio", r.Ratio)
				} else if r.Stock != nil {
					t.Errorf("row %s: stock = %v, want none", want.id, *r.Stock)
				}
				if want.goal {
					switch strings.TrimSuffix(r.Result, "*") {
					case pass, fail:
					case na:
						t.Errorf("row %s: goal not checked: %s", want.id, r.Note)
					default:
						t.Errorf("row %s: result %q, want PASS or FAIL", want.id, r.Result)
					}
				}
			}
			if r := sr.find("load_sealed"); r != nil && r.Note != "" {
				t.Errorf("sealed load: %s", r.Note) // checkSealed found a clear key, or none
			}
			for name, p := range sr.Phases {
				if p.Handshakes == 0 || p.WrongCerts != 0 || p.Errors != 0 {
					t.Errorf("phase %s: %d handshakes, %d errors, %d wrong certificates (%s)", name, p.Handshakes, p.Errors, p.WrongCerts, p.FirstError)
				}
				if len(p.SliceRates) == 0 {
					t.Errorf("phase %s: no slice rates", name)
				}
			}
		})
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}

func deref(v *float64) any {
	if v == nil {
		return nil
	}
	return *v
}

// TestFlags checks that bad flags are refused before anything starts.
func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-key", "dsa"},
		{"-n", "0"},
		{"-duration", "1ms"},
		{"-concurrency", "0"},
		{"-cache", "-1"},
		{"-cache-memory", "lots"},
		{"-cache-memory", "0"},
		{"-env", "GOGC"},
		{"-env", "HOME=/"},
		{"-env", "XDG_DATA_HOME=/tmp"},
		{"-env", "gogc=50"},
		{"extra"},
		{"-sni", "zipf"},
		{"-sni", "zipf:-1"},
		{"-sni", "pareto:1"},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), args, &out); err == nil {
			t.Errorf("run %v: no error", args)
		}
	}
}

func TestCacheMemoryFlag(t *testing.T) {
	var out bytes.Buffer
	o, err := parseFlags([]string{"-cache-memory", "400MiB"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if o.cacheMemory != 400<<20 {
		t.Fatalf("cacheMemory = %d, want %d", o.cacheMemory, 400<<20)
	}
	in := &instance{}
	app := in.oursConfig(cacheBounds{capacity: 5, memory: o.cacheMemory}, "")
	apps := app["apps"].(map[string]any)
	dc := apps["domaincerts"].(map[string]any)
	if dc["cache_capacity"] != 5 || dc["cache_memory"] != int64(400<<20) {
		t.Fatalf("domaincerts app = %v", dc)
	}
}

func TestPercentile(t *testing.T) {
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[len(ds)-1-i] = time.Duration(i+1) * time.Millisecond
	}
	for _, c := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {1, 1}} {
		if got := percentileMS(ds, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentileMS(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
}

func TestPairedRatio(t *testing.T) {
	for _, c := range []struct {
		name        string
		a, b        []float64
		med, q1, q3 float64
		n           int
	}{
		{"equal", []float64{100, 200, 300}, []float64{100, 200, 300}, 1, 1, 1, 3},
		{"one slice disturbed", []float64{100, 100, 50, 100, 100}, []float64{100, 100, 100, 100, 100}, 1, 1, 1, 5},
		{"odd", []float64{90, 100, 110, 120}, []float64{100, 100, 100, 100}, 1.05, 0.975, 1.125, 4},
		{"unequal lengths", []float64{50, 50, 50}, []float64{100, 100}, 0.5, 0.5, 0.5, 2},
		{"zero skipped", []float64{50, 50}, []float64{0, 100}, 0.5, 0.5, 0.5, 1},
		{"none", nil, nil, 0, 0, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			med, q1, q3, n := pairedRatio(&loadStats{SliceRates: c.a}, &loadStats{SliceRates: c.b})
			if med != c.med || q1 != c.q1 || q3 != c.q3 || n != c.n {
				t.Errorf("got median %v quartiles %v–%v n %d; want %v %v–%v %d", med, q1, q3, n, c.med, c.q1, c.q3, c.n)
			}
		})
	}
}

func TestCaddyEnv(t *testing.T) {
	t.Setenv("GOGC", "100")
	t.Setenv("XDG_DATA_HOME", "/elsewhere")
	env := caddyEnv("/d", []string{"GOGC=50", "GOMEMLIMIT=900MiB"})
	got := map[string][]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = append(got[k], v)
	}
	for k, want := range map[string]string{
		"GOGC":          "50",
		"GOMEMLIMIT":    "900MiB",
		"HOME":          "/d/home",
		"XDG_DATA_HOME": "/d/data",
	} {
		if len(got[k]) != 1 || got[k][0] != want {
			t.Errorf("%s = %q, want exactly %q", k, got[k], want)
		}
	}
}

// TestWritePairs writes a small import directory whose pairs parse and
// match.
func TestWritePairs(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	if err := run(context.Background(), []string{"-write-pairs", dir, "-n", "3", "-key", "ecdsa"}, &out); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		name := fmt.Sprintf("d%07d.import.test", i)
		chain, err := os.ReadFile(filepath.Join(dir, "0", name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		key, err := os.ReadFile(filepath.Join(dir, "0", name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(chain, key)
		if err != nil || pair.Leaf == nil || pair.Leaf.DNSNames[0] != name {
			t.Fatalf("pair %d: %v", i, err)
		}
	}
	if err := run(context.Background(), []string{"-write-pairs", dir, "-n", "3"}, &out); err == nil {
		t.Error("-write-pairs with both key types was accepted")
	}
}

// TestZipf draws names as Zipf's law says: with s = 1 over 1,000 names the
// first gets 1/H(1000) of the draws, the second half of that; s = 0 is
// uniform.
func TestZipf(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		s          float64
		want0      float64 // share of rank 0
		want1ratio float64 // rank 1 / rank 0
	}{
		{1.0, 1 / 7.485470860550345, 0.5}, // H(1000) = 7.4855
		{0, 0.001, 1},
	} {
		z := newZipf(1000, tc.s)
		counts := make([]int, 1000)
		const draws = 400_000
		for range draws {
			counts[z.draw(r)]++
		}
		got0 := float64(counts[0]) / draws
		if math.Abs(got0-tc.want0) > 0.15*tc.want0+0.0005 {
			t.Errorf("s=%g: rank 0 got %.4f of draws, want %.4f", tc.s, got0, tc.want0)
		}
		if tc.s > 0 {
			if ratio := float64(counts[1]) / float64(counts[0]); math.Abs(ratio-tc.want1ratio) > 0.05 {
				t.Errorf("s=%g: rank 1 / rank 0 = %.3f, want %.3f", tc.s, ratio, tc.want1ratio)
			}
		}
		if share := z.share(0.01); tc.s == 1.0 && (share < 0.35 || share > 0.45) {
			t.Errorf("s=1: the top 1%% share is %.3f, want about 0.39", share)
		}
	}
}

// TestStoreSmoke runs the kept-store mode twice on one directory: the
// first run builds the store, the second reuses it (no build row value,
// the same domains served).
func TestStoreSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	for i, wantBuilt := range []bool{true, false} {
		jsonPath := filepath.Join(t.TempDir(), "report.json")
		var out bytes.Buffer
		args := []string{"-n", "20", "-duration", "300ms", "-samples", "3", "-concurrency", "4", "-key", "ecdsa",
			"-sni", "zipf:1.2", "-store", dir, "-warmup", "300ms", "-json", jsonPath}
		if err := run(ctx, args, &out); err != nil {
			t.Fatalf("run %d %v: %v\noutput:\n%s", i, args, err, out.String())
		}
		b, err := os.ReadFile(jsonPath)
		if err != nil {
			t.Fatal(err)
		}
		var rp report
		if err := json.Unmarshal(b, &rp); err != nil {
			t.Fatal(err)
		}
		if rp.WrongCerts != 0 || rp.Errors != 0 || len(rp.Suites) != 1 {
			t.Fatalf("run %d: wrong certificates %d, errors %d, %d suites\n%s", i, rp.WrongCerts, rp.Errors, len(rp.Suites), out.String())
		}
		rows := map[string]*row{}
		for _, r := range rp.Suites[0].Rows {
			rows[r.ID] = r
		}
		if built := rows["store_build"] != nil && rows["store_build"].Ours != nil; built != wantBuilt {
			t.Errorf("run %d: store built %v; want %v", i, built, wantBuilt)
		}
		for _, id := range []string{"cold_sealed", "hs_one", "hs_rand", "rss", "served_p50"} {
			if r := rows[id]; r == nil || r.Ours == nil {
				t.Errorf("run %d: row %s has no value", i, id)
			}
		}
		if text := out.String(); !strings.Contains(text, "hot certificates") || !strings.Contains(text, "warm-up:") {
			t.Errorf("run %d: the report lacks the hot certificates or warm-up notes:\n%s", i, text)
		}
	}
}
