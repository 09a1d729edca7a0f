package certsource

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/mholt/acmez/v3/acme"
)

// anyCNAME is a CNAMEChecker that is never asked here; classify only
// needs to know that CNAMEs are checked.
type anyCNAME struct{}

func (anyCNAME) CheckCNAME(context.Context, string, string) error { return nil }

func (anyCNAME) CheckAddresses(context.Context, string, []netip.Addr) error { return nil }

func TestClassify(t *testing.T) {
	checked := &ACME{opts: ACMEOptions{
		Zones:           []string{"operator.test"},
		Checker:         anyCNAME{},
		CNAMETarget:     func(string) string { return "x.cname.operator.test" },
		ChallengeTarget: func(string) string { return "x.acme.operator.test" },
	}}
	unchecked := &ACME{opts: ACMEOptions{Zones: []string{"operator.test"}}}
	problem := func(typ string) error {
		return fmt.Errorf("obtaining: %w", &acme.Problem{Type: "urn:ietf:params:acme:error:" + typ, Detail: "detail"})
	}
	tests := []struct {
		name string
		a    *ACME
		host string
		err  error
		want string
	}{
		{"CAA is the owner's", checked, "shop.customer.test", problem("caa"), "DNS_ERROR"},
		{"CAA in the operator's zone", checked, "app.operator.test", problem("caa"), "DNS_ERROR"},
		{"unreachable, CNAME checked", checked, "shop.customer.test", problem("connection"), "INTERNAL_ERROR"},
		{"wrong response, CNAME checked", checked, "shop.customer.test", problem("unauthorized"), "INTERNAL_ERROR"},
		{"CA lookup failed, CNAME checked", checked, "shop.customer.test", problem("dns"), "INTERNAL_ERROR"},
		{"wildcard, both CNAMEs checked", checked, "*.customer.test", problem("unauthorized"), "INTERNAL_ERROR"},
		{"operator's zone", unchecked, "app.operator.test", problem("connection"), "INTERNAL_ERROR"},
		{"unreachable, nothing checked", unchecked, "shop.customer.test", problem("connection"), "DNS_ERROR"},
		{"wrong response, nothing checked", unchecked, "shop.customer.test", problem("incorrectResponse"), "DNS_ERROR"},
		{"CA refuses the name", unchecked, "shop.customer.test", problem("rejectedIdentifier"), "INTERNAL_ERROR"},
		{"rate limited", checked, "shop.customer.test", problem("rateLimited"), "INTERNAL_ERROR"},
		{"not an ACME problem", unchecked, "shop.customer.test", fmt.Errorf("dial tcp: connection refused"), "INTERNAL_ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.classify(tt.err, tt.host).code; got != tt.want {
				t.Errorf("classify = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestDecorateTargets(t *testing.T) {
	n := 0
	a := &ACME{opts: ACMEOptions{
		Zones:           []string{"operator.test"},
		CNAMETarget:     func(string) string { n++; return fmt.Sprintf("t%d.cname.operator.test", n) },
		ChallengeTarget: func(string) string { n++; return fmt.Sprintf("t%d.acme.operator.test", n) },
	}}
	d := &domainstore.Domain{Domain: "*.customer.test", Policy: &domainstore.Policy{Authority: "le"}}
	a.Decorate(d)
	if d.CNAMETarget == nil || d.ACMEChallengeCNAMETarget == nil || *d.CNAMETarget == *d.ACMEChallengeCNAMETarget {
		t.Fatalf("new wildcard: targets %v, %v; want two distinct ones", d.CNAMETarget, d.ACMEChallengeCNAMETarget)
	}
	if d.Status == nil || d.Status.ProvisioningJob == nil {
		t.Errorf("new managed domain: status %+v, want a queued job", d.Status)
	}
	// a policy change keeps the targets the customer's DNS points to
	cname, acme := *d.CNAMETarget, *d.ACMEChallengeCNAMETarget
	d.Status = nil
	a.Decorate(d)
	if *d.CNAMETarget != cname || *d.ACMEChallengeCNAMETarget != acme {
		t.Errorf("targets changed from %s, %s to %s, %s", cname, acme, *d.CNAMETarget, *d.ACMEChallengeCNAMETarget)
	}
	// the operator's own names have none
	own := &domainstore.Domain{Domain: "app.operator.test", CNAMETarget: &cname}
	a.Decorate(own)
	if own.CNAMETarget != nil || own.ACMEChallengeCNAMETarget != nil {
		t.Errorf("a name in the operator's zones kept targets %v, %v", own.CNAMETarget, own.ACMEChallengeCNAMETarget)
	}
	// an upload-only domain gets its traffic target too, no status
	up := &domainstore.Domain{Domain: "shop.customer.test", CertificateID: "cert_x"}
	a.Decorate(up)
	if up.CNAMETarget == nil || up.ACMEChallengeCNAMETarget != nil || up.Status != nil {
		t.Errorf("upload: %+v", up)
	}
}
