package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Goal results.
const (
	pass = "PASS"
	fail = "FAIL"
	na   = "n/a"
)

// goalN is the number of domains the scale goals are stated for.
const goalN = 100_000

// row is one line of the table: a metric of ours and of stock.
type row struct {
	ID     string   `json:"id"`
	Metric string   `json:"metric"`
	Unit   string   `json:"unit"`
	Ours   *float64 `json:"ours"`
	Stock  *float64 `json:"stock"`
	Ratio  *float64 `json:"ratio"` // ours / stock
	Goal   string   `json:"goal,omitempty"`
	Result string   `json:"result,omitempty"` // PASS, FAIL or n/a
	Note   string   `json:"note,omitempty"`   // why a value or result is missing, or a caveat
	Detail string   `json:"detail,omitempty"`
}

// suiteResult is the outcome for one key type.
type suiteResult struct {
	Key    keyKind               `json:"key"`
	N      int                   `json:"n"`
	Rows   []*row                `json:"rows"`
	Phases map[string]*loadStats `json:"phases"` // by "<server> <phase>"
	Notes  []string              `json:"notes,omitempty"`
}

// row returns the row id, adding it in order on first use.
func (sr *suiteResult) row(id, metric, unit string) *row {
	for _, r := range sr.Rows {
		if r.ID == id {
			return r
		}
	}
	r := &row{ID: id, Metric: metric, Unit: unit}
	sr.Rows = append(sr.Rows, r)
	return r
}

// find returns the row id, or nil.
func (sr *suiteResult) find(id string) *row {
	for _, r := range sr.Rows {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// phase records the stats of a load phase and returns them.
func (sr *suiteResult) phase(name string, st *loadStats) *loadStats {
	if sr.Phases == nil {
		sr.Phases = make(map[string]*loadStats)
	}
	if len(st.SliceRates) == 0 {
		st.SliceRates = []float64{st.rate()} // a phase run in one piece
	}
	sr.Phases[name] = st
	return st
}

func f64(v float64) *float64 { return &v }

// set fills in the values and the ratio.
func (r *row) set(ours, stock *float64) *row {
	r.Ours, r.Stock = ours, stock
	if ours != nil && stock != nil && *stock != 0 {
		r.Ratio = f64(*ours / *stock)
	}
	return r
}

// check records a goal and whether it is met. scale marks goals stated
// for N=100,000: met or missed at another N, the result says so.
func (r *row) check(goal string, met bool, n int, scale bool) {
	r.Goal = goal
	r.Result = fail
	if met {
		r.Result = pass
	}
	if scale && n != goalN {
		r.Result += "*"
	}
}

// skip records a goal that could not be checked, and why.
func (r *row) skip(goal, why string) {
	r.Goal, r.Result = goal, na
	if r.Note == "" {
		r.Note = why
	}
}

// report is everything a run found; -json writes it.
type report struct {
	StartedAt   time.Time         `json:"started_at"`
	Elapsed     string            `json:"elapsed"`
	GoVersion   string            `json:"go_version"`
	CPUs        int               `json:"cpus"`
	Flags       map[string]string `json:"flags"`
	Ours        string            `json:"ours_binary"`
	Stock       string            `json:"stock_binary,omitempty"`
	SealedInBin bool              `json:"sealed_storage_available"`
	LoadStart   string            `json:"load_average_start"`
	LoadEnd     string            `json:"load_average_end"`
	Notes       []string          `json:"notes"`
	Suites      []*suiteResult    `json:"suites"`
	WrongCerts  int               `json:"wrong_certificates"`
	Errors      int               `json:"handshake_errors"`
}

// totals counts failed handshakes and wrong certificates of every phase.
func (rp *report) totals() {
	rp.WrongCerts, rp.Errors = 0, 0
	for _, s := range rp.Suites {
		for _, p := range s.Phases {
			rp.WrongCerts += p.WrongCerts
			rp.Errors += p.Errors
		}
	}
}

// format prints a value in its unit.
func format(v *float64, unit string) string {
	if v == nil {
		return "-"
	}
	switch unit {
	case "ms":
		return fmt.Sprintf("%.2f", *v)
	case "s":
		return fmt.Sprintf("%.3f", *v)
	case "MiB", "µs":
		return fmt.Sprintf("%.1f", *v)
	default:
		return thousands(*v)
	}
}

// thousands prints v rounded, with thousands separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// writeTable prints a suite's table.
func writeTable(w io.Writer, sr *suiteResult) {
	fmt.Fprintf(w, "\n== %s, N=%s domains ==\n", sr.Key, thousands(float64(sr.N)))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tours\tstock\tours/stock\tgoal\tresult\t")
	scaleNote := false
	for _, r := range sr.Rows {
		ratio := "-"
		if r.Ratio != nil {
			ratio = fmt.Sprintf("%.2f", *r.Ratio)
		}
		metric := r.Metric
		if r.Unit != "" {
			metric += " (" + r.Unit + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", metric, format(r.Ours, r.Unit), format(r.Stock, r.Unit), ratio, r.Goal, r.Result)
		scaleNote = scaleNote || strings.HasSuffix(r.Result, "*")
	}
	tw.Flush()
	for _, r := range sr.Rows {
		if r.Detail != "" {
			fmt.Fprintf(w, "  %s: %s\n", r.Metric, r.Detail)
		}
	}
	for _, r := range sr.Rows {
		if r.Note != "" {
			fmt.Fprintf(w, "  note, %s: %s\n", r.Metric, r.Note)
		}
	}
	if scaleNote {
		fmt.Fprintf(w, "  * the goal is stated for N=%s; this run checked it at N=%s\n", thousands(goalN), thousands(float64(sr.N)))
	}
	for _, n := range sr.Notes {
		fmt.Fprintf(w, "  %s\n", n)
	}
}

// writeJSON writes the report to path.
func writeJSON(path string, rp *report) error {
	b, err := json.MarshalIndent(rp, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	return nil
}
