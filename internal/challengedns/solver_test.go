package challengedns

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
)

const zone = "acme.example.net"

// testTarget maps identifiers to one label under zone, as the stored
// acme_challenge_cname_target of the identifier's domain does.
func testTarget(identifier string) (string, error) {
	if identifier == "fail.example" {
		return "", errors.New("unknown domain")
	}
	if identifier == "outside.example" {
		return "x.elsewhere.example", nil
	}
	return strings.ReplaceAll(identifier, ".", "-") + "." + zone + ".", nil
}

func challenge(identifier, keyAuth string) acme.Challenge {
	return acme.Challenge{
		Type:             acme.ChallengeTypeDNS01,
		Token:            "token",
		KeyAuthorization: keyAuth,
		Identifier:       acme.Identifier{Type: "dns", Value: identifier},
	}
}

func TestSolver(t *testing.T) {
	ctx := context.Background()
	txt, _ := newStore(t)
	_, addr := startServer(t, txt)
	solver := &Solver{TXT: txt, Target: testTarget}

	// The wildcard and base authorizations of one name share a target.
	base := challenge("customer.com", "tok1.thumb")
	wild := challenge("customer.com", "tok2.thumb")
	const target = "customer-com.acme.example.net."

	lookup := func(network string) *dns.Msg {
		return exchange(t, network, addr, query{name: target, qtype: dns.TypeTXT})
	}
	for _, chal := range []acme.Challenge{base, wild} {
		if err := solver.Present(ctx, chal); err != nil {
			t.Fatalf("Present: %v", err)
		}
	}
	want := []string{base.DNS01KeyAuthorization(), wild.DNS01KeyAuthorization()}
	slices.Sort(want)
	for _, network := range []string{"udp", "tcp"} {
		resp := lookup(network)
		if resp.Rcode != dns.RcodeSuccess || !resp.Authoritative || !slices.Equal(txts(resp.Answer), want) {
			t.Fatalf("%s after Present: %s AA=%v TXT=%q, want NOERROR AA %q",
				network, dns.RcodeToString[resp.Rcode], resp.Authoritative, txts(resp.Answer), want)
		}
	}

	// CleanUp runs even on a canceled context.
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := solver.CleanUp(canceled, base); err != nil {
		t.Fatalf("CleanUp: %v", err)
	}
	if got := txts(lookup("udp").Answer); !slices.Equal(got, []string{wild.DNS01KeyAuthorization()}) {
		t.Fatalf("after one CleanUp: TXT = %q, want only the other value", got)
	}
	if err := solver.CleanUp(ctx, wild); err != nil {
		t.Fatalf("CleanUp: %v", err)
	}
	if resp := lookup("udp"); resp.Rcode != dns.RcodeNameError || len(resp.Answer) != 0 {
		t.Fatalf("after CleanUp: %s with %d answers, want NXDOMAIN", dns.RcodeToString[resp.Rcode], len(resp.Answer))
	}
}

func TestSolverErrors(t *testing.T) {
	ctx := context.Background()
	txt, _ := newStore(t)
	tests := []struct {
		name    string
		solver  *Solver
		chal    acme.Challenge
		wantErr string
	}{
		{"target fails", &Solver{TXT: txt, Target: testTarget}, challenge("fail.example", "k"), "choosing dns-01 target for fail.example: unknown domain"},
		{"no target", &Solver{TXT: txt}, challenge("customer.com", "k"), "no target configured"},
		{"bad target", &Solver{TXT: txt, Target: func(string) (string, error) { return "../x", nil }}, challenge("customer.com", "k"), "invalid name"},
		{"no store", &Solver{Target: testTarget}, challenge("customer.com", "k"), "no storage configured"},
		{"not dns-01", &Solver{TXT: txt, Target: testTarget}, acme.Challenge{Type: acme.ChallengeTypeHTTP01}, "only dns-01 is supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for op, fn := range map[string]func(context.Context, acme.Challenge) error{
				"Present": tt.solver.Present, "CleanUp": tt.solver.CleanUp,
			} {
				if err := fn(ctx, tt.chal); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("%s = %v, want an error containing %q", op, err, tt.wantErr)
				}
			}
		})
	}
}

// memProvider is an in-memory libdns provider: RecordAppender and
// RecordDeleter over a map of zones, giving each record an ID in
// ProviderData as real providers do.
type memProvider struct {
	mu     sync.Mutex
	zones  map[string][]libdns.TXT
	nextID int
	fail   error
}

func (p *memProvider) AppendRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return nil, p.fail
	}
	if p.zones == nil {
		p.zones = make(map[string][]libdns.TXT)
	}
	var added []libdns.Record
	for _, r := range recs {
		rr := r.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("unexpected type %s", rr.Type)
		}
		p.nextID++
		txt := libdns.TXT{Name: rr.Name, TTL: rr.TTL, Text: rr.Data, ProviderData: p.nextID}
		p.zones[zone] = append(p.zones[zone], txt)
		added = append(added, txt)
	}
	return added, nil
}

func (p *memProvider) DeleteRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var deleted []libdns.Record
	for _, r := range recs {
		rr := r.RR()
		id := 0
		if txt, ok := r.(libdns.TXT); ok && txt.ProviderData != nil {
			id = txt.ProviderData.(int)
		}
		p.zones[zone] = slices.DeleteFunc(p.zones[zone], func(have libdns.TXT) bool {
			match := have.Name == rr.Name && have.Text == rr.Data && (id == 0 || have.ProviderData == id)
			if match {
				deleted = append(deleted, have)
			}
			return match
		})
	}
	return deleted, nil
}

func (p *memProvider) records(zone string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, r := range p.zones[zone] {
		out = append(out, r.Name+" "+r.Text)
	}
	slices.Sort(out)
	return out
}

func TestProviderSolver(t *testing.T) {
	ctx := context.Background()
	prov := &memProvider{}
	solver := &ProviderSolver{Provider: prov, Zone: "ACME.example.net", Target: testTarget, TTL: time.Minute}
	base := challenge("customer.com", "tok1.thumb")
	wild := challenge("customer.com", "tok2.thumb")

	for _, chal := range []acme.Challenge{base, wild} {
		if err := solver.Present(ctx, chal); err != nil {
			t.Fatalf("Present: %v", err)
		}
	}
	want := []string{"customer-com " + base.DNS01KeyAuthorization(), "customer-com " + wild.DNS01KeyAuthorization()}
	slices.Sort(want)
	if got := prov.records("acme.example.net."); !slices.Equal(got, want) {
		t.Fatalf("zone acme.example.net. holds %q, want %q (zone passed with trailing dot, names relative)", got, want)
	}
	if prov.zones["acme.example.net."][0].TTL != time.Minute {
		t.Errorf("TTL = %v, want 1m", prov.zones["acme.example.net."][0].TTL)
	}

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := solver.CleanUp(canceled, base); err != nil {
		t.Fatalf("CleanUp: %v", err)
	}
	if got := prov.records("acme.example.net."); !slices.Equal(got, []string{"customer-com " + wild.DNS01KeyAuthorization()}) {
		t.Fatalf("after one CleanUp: %q", got)
	}

	// A solver that did not present (another process, a restart) still
	// cleans up by name and value.
	fresh := &ProviderSolver{Provider: prov, Zone: "acme.example.net.", Target: testTarget}
	if err := fresh.CleanUp(ctx, wild); err != nil {
		t.Fatalf("CleanUp without Present: %v", err)
	}
	if got := prov.records("acme.example.net."); len(got) != 0 {
		t.Fatalf("after CleanUp: %q, want none", got)
	}

	// The apex itself is "@".
	apex := &ProviderSolver{Provider: prov, Zone: zone, Target: func(string) (string, error) { return zone, nil }}
	if err := apex.Present(ctx, base); err != nil {
		t.Fatal(err)
	}
	if got := prov.records("acme.example.net."); !slices.Equal(got, []string{"@ " + base.DNS01KeyAuthorization()}) {
		t.Fatalf("apex record: %q", got)
	}
}

func TestProviderSolverErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		solver  *ProviderSolver
		chal    acme.Challenge
		wantErr string
	}{
		{"outside zone", &ProviderSolver{Provider: &memProvider{}, Zone: zone, Target: testTarget}, challenge("outside.example", "k"), "challenge target x.elsewhere.example is not in zone acme.example.net."},
		{"no provider", &ProviderSolver{Zone: zone, Target: testTarget}, challenge("customer.com", "k"), "no DNS provider configured"},
		{"no zone", &ProviderSolver{Provider: &memProvider{}, Target: testTarget}, challenge("customer.com", "k"), "invalid dns-01 challenge zone"},
		{"target fails", &ProviderSolver{Provider: &memProvider{}, Zone: zone, Target: testTarget}, challenge("fail.example", "k"), "unknown domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.solver.Present(ctx, tt.chal); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Present = %v, want an error containing %q", err, tt.wantErr)
			}
			if err := tt.solver.CleanUp(ctx, tt.chal); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("CleanUp = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	prov := &memProvider{fail: errors.New("api down")}
	s := &ProviderSolver{Provider: prov, Zone: zone, Target: testTarget}
	if err := s.Present(ctx, challenge("customer.com", "k")); !errors.Is(err, prov.fail) {
		t.Errorf("Present = %v, want it to wrap the provider's error", err)
	}
}

func TestProviderSolverWait(t *testing.T) {
	s := &ProviderSolver{}
	if err := s.Wait(context.Background(), acme.Challenge{}); err != nil {
		t.Fatal(err)
	}
	s.PropagationDelay = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.Wait(ctx, acme.Challenge{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v, want the context's error", err)
	}
	s.PropagationDelay = 10 * time.Millisecond
	if err := s.Wait(context.Background(), acme.Challenge{}); err != nil {
		t.Errorf("Wait = %v", err)
	}
}
