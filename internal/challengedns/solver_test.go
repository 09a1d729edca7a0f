package challengedns

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

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
