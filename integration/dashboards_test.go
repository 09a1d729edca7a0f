package integration

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// TestExampleDashboards checks examples/prometheus-alerts.yml as
// `promtool check rules` does (Prometheus's own rule parser), and that
// every series selector of those rules and of the panels of
// examples/grafana-dashboard.json matches a series on a real Caddy's
// /metrics, with an upload and a managed domain in the store.
func TestExampleDashboards(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile("../examples/prometheus-alerts.yml", false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("alert rules: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}
	exprs := map[string]string{} // where -> PromQL
	alerts := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			exprs["alert "+r.Alert] = r.Expr
			alerts[r.Alert] = true
		}
	}
	// the alerts the operators asked for are there
	for _, name := range []string{"DomaincertsUploadExpiringSoon", "DomaincertsProvisioningFailuresRising", "DomaincertsUnknownNamesRising"} {
		if !alerts[name] {
			t.Errorf("examples/prometheus-alerts.yml has no alert %s", name)
		}
	}

	b, err := os.ReadFile("../examples/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title         string         `json:"title"`
		UID           string         `json:"uid"`
		SchemaVersion int            `json:"schemaVersion"`
		Panels        []grafanaPanel `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana dashboard: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || dash.SchemaVersion == 0 || len(dash.Panels) == 0 {
		t.Fatalf("grafana dashboard lacks a title, uid, schemaVersion or panels")
	}
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, panel := range ps {
			walk(panel.Panels)
			if panel.Type == "row" {
				continue
			}
			if len(panel.Targets) == 0 {
				t.Errorf("panel %q has no query", panel.Title)
			}
			for _, tg := range panel.Targets {
				exprs["panel "+panel.Title+" "+tg.RefID] = tg.Expr
			}
		}
	}
	walk(dash.Panels)

	// a Caddy with an expiring upload and a managed certificate, and
	// handshakes, so that every family has its series
	m := startManaged(t, nil)
	certPEM, keyPEM := opensslLeaf(t, "dash.example.test", 5)
	cert := m.mustAPI(t, http.StatusCreated, "POST", "/domaincerts/tls_certificates",
		map[string]any{"certificate_pem": certPEM, "private_key_pem": keyPEM})
	m.createDomain(t, "dash.example.test", cert["id"].(string))
	const managedName = "dash-managed.operator.test"
	m.p.DNS.SetA(managedName, "127.0.0.1")
	t.Cleanup(func() { m.p.DNS.Delete(managedName) })
	id, _ := m.createManaged(t, managedName, nil)
	m.waitIssued(t, id)
	if _, err := handshake(t, m.HTTPSAddr(), "dash.example.test"); err != nil {
		t.Fatal(err)
	}
	series := scrapeSeries(t, m.caddyProc)

	for where, expr := range exprs {
		e, err := p.ParseExpr(expr)
		if err != nil {
			t.Errorf("%s: %q: %v", where, expr, err)
			continue
		}
		for _, matchers := range parser.ExtractSelectors(e) {
			if !anySeriesMatches(series, matchers) {
				t.Errorf("%s: no series on /metrics matches %v", where, matchers)
			}
		}
	}
}

type grafanaPanel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a row's
}

// scrapeSeries returns the label sets (the name as __name__) of every
// series on c's /metrics.
func scrapeSeries(t *testing.T, c *caddyProc) []map[string]string {
	t.Helper()
	tp := expfmt.NewTextParser(model.UTF8Validation)
	families, err := tp.TextToMetricFamilies(strings.NewReader(scrapeMetrics(t, c)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	var out []map[string]string
	for name, f := range families {
		for _, m := range f.GetMetric() {
			ls := map[string]string{"__name__": name}
			for _, l := range m.GetLabel() {
				ls[l.GetName()] = l.GetValue()
			}
			out = append(out, ls)
			// histograms and summaries are selected by their parts' names
			if f.GetType().String() == "HISTOGRAM" || f.GetType().String() == "SUMMARY" {
				for _, part := range []string{"_bucket", "_sum", "_count"} {
					pl := map[string]string{}
					for k, v := range ls {
						pl[k] = v
					}
					pl["__name__"] = name + part
					out = append(out, pl)
				}
			}
		}
	}
	return out
}

func anySeriesMatches(series []map[string]string, matchers []*labels.Matcher) bool {
	for _, ls := range series {
		ok := true
		for _, m := range matchers {
			if !m.Matches(ls[m.Name]) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}
