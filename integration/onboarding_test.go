package integration

import (
	"net/http"
	"strings"
	"testing"
)

// TestRandomTargets: cname_target and acme_challenge_cname_target are
// random per registration: two domains get unrelated ones, and a name
// deleted and registered again gets new ones, so the CNAME its former
// customer left in place does not validate the new registration.
func TestRandomTargets(t *testing.T) {
	m := startManaged(t, func(app map[string]any) {
		app["retry_min_interval"], app["retry_max_interval"] = "1s", "2s"
	})
	pebbleMark := m.p.logMark()
	_, a := m.createManaged(t, "a.random.test", nil)
	_, b := m.createManaged(t, "b.random.test", nil)
	_, w := m.createManaged(t, "*.random.test", nil)
	ta, tb := a["cname_target"].(string), b["cname_target"].(string)
	tw, cw := w["cname_target"].(string), w["acme_challenge_cname_target"].(string)
	seen := map[string]bool{}
	for _, target := range []string{ta, tb, tw} {
		label, zone, _ := strings.Cut(target, ".")
		if zone != cnameZone || len(label) != 16 {
			t.Errorf("cname_target %q, want a 16-character label under %s", target, cnameZone)
		}
		if seen[target] {
			t.Errorf("cname_target %q given twice", target)
		}
		seen[target] = true
	}
	if label, zone, _ := strings.Cut(cw, "."); zone != challengeZone || len(label) != 16 {
		t.Errorf("acme_challenge_cname_target %q, want a 16-character label under %s", cw, challengeZone)
	}

	// the former customer of a.random.test set the CNAME, then left
	m.setCNAME(t, "a.random.test", ta)
	idA := a["id"].(string)
	m.waitIssued(t, idA)
	m.deleteDomain(t, idA)
	id2, a2 := m.createManaged(t, "a.random.test", nil)
	ta2 := a2["cname_target"].(string)
	if ta2 == ta || !strings.HasSuffix(ta2, "."+cnameZone) {
		t.Fatalf("cname_target after registering the name again = %q, want a new one (was %q)", ta2, ta)
	}
	m.waitJobError(t, id2, "DNS_ERROR", "create a DNS record: a.random.test CNAME "+ta2+" (found CNAME to "+ta+")")
	if d := m.getDomain(t, id2); d["certificate"] != nil {
		t.Errorf("the new registration got certificate %v through the former customer's CNAME", d["certificate"])
	}
	if n := pebbleOrders(m.p.LogSince(pebbleMark)); n != 1 {
		t.Errorf("pebble got %d orders, want 1 (the first registration's)", n)
	}
	status, resp := m.api(t, "GET", "/domaincerts/domains/"+idA, nil)
	assertAPIError(t, status, resp, http.StatusNotFound, "NOT_FOUND")
}
