package integration

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestMetricsEndpoint checks that Caddy's /metrics on the admin endpoint
// reports the plugin's figures after an upload, an attach and handshakes,
// with a cache_memory bound set in the config: the handshakes answered by
// Caddy's cache (hot certificates) are counted as served too.
func TestMetricsEndpoint(t *testing.T) {
	ca := testpki.NewChain(t, "Metrics")
	const cacheMemory = 1 << 20
	c := startCaddy(t, caddyOpts{App: map[string]any{"cache_memory": cacheMemory}})
	l := ca.Leaf(t, "metrics.example.test")
	certID := c.uploadLeaf(t, l)
	c.createDomain(t, "metrics.example.test", certID)
	for range 3 {
		expectServes(t, c, "metrics.example.test", l, ca.Roots())
	}

	values := metricValues(t, c)
	for name, ok := range map[string]func(float64) bool{
		`domaincerts_domains{state="uploaded"}`: func(v float64) bool { return v == 1 },
		"domaincerts_cache_entries":             func(v float64) bool { return v == 1 },
		"domaincerts_cache_capacity":            func(v float64) bool { return v == 10000 },
		// the first handshake is answered by the manager from the
		// cache, which promotes the certificate into Caddy's cache; that
		// one answers the next two
		"domaincerts_cache_hits_total":                  func(v float64) bool { return v == 1 },
		"domaincerts_hot_certificates":                  func(v float64) bool { return v == 1 },
		"domaincerts_hot_promotions_total":              func(v float64) bool { return v == 1 },
		"domaincerts_hot_certificates_capacity":         func(v float64) bool { return v == 5000 },
		`domaincerts_handshakes_total{result="served"}`: func(v float64) bool { return v == 3 },
		"domaincerts_cache_misses_total":                func(v float64) bool { return v == 0 },
		"domaincerts_cache_evictions_total":             func(v float64) bool { return v == 0 },
		"domaincerts_cache_max_bytes":                   func(v float64) bool { return v == cacheMemory },
		// one ECDSA certificate: about 3 KB
		"domaincerts_cache_bytes": func(v float64) bool { return v > 2000 && v < 5000 },
	} {
		if v, present := values[name]; !present || !ok(v) {
			t.Errorf("%s = %v (present %v)", name, v, present)
		}
	}
	if t.Failed() {
		t.Logf("domaincerts metrics: %v", values)
	}
}

// metricValues scrapes Caddy's /metrics on the admin endpoint and returns
// the domaincerts metrics by name with their labels, as /metrics writes
// them (`domaincerts_domains{state="issued"}`).
func metricValues(t *testing.T, c *caddyProc) map[string]float64 {
	t.Helper()
	body := scrapeMetrics(t, c)
	values := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(name, "domaincerts_") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		values[name] = v
	}
	return values
}

// scrapeMetrics returns the text of c's /metrics.
func scrapeMetrics(t *testing.T, c *caddyProc) string {
	t.Helper()
	resp, err := adminClient.Get("http://" + c.AdminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	return string(body)
}
