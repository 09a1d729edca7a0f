package caddymod

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

func TestRenewalOverdue(t *testing.T) {
	day := 24 * time.Hour
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		lifetime time.Duration
		at       time.Duration // after nb
		ratio    float64
		want     bool
	}{
		// 90 days, renewal at 60 days (a third left), overdue a day later
		{"90d before the renewal point", 90 * day, 59 * day, 1.0 / 3, false},
		{"90d at the renewal point", 90 * day, 60 * day, 1.0 / 3, false},
		{"90d renewal under a day late", 90 * day, 60*day + 23*time.Hour, 1.0 / 3, false},
		{"90d renewal over a day late", 90 * day, 61*day + time.Minute, 1.0 / 3, true},
		{"90d expired", 90 * day, 91 * day, 1.0 / 3, true},
		// 6 days: renewal at 4 days, overdue half a day later
		{"6d within the grace", 6 * day, 4*day + 11*time.Hour, 1.0 / 3, false},
		{"6d past the grace", 6 * day, 4*day + 13*time.Hour, 1.0 / 3, true},
		// a wider window starts earlier
		{"ratio 0.5 at 47 of 90 days", 90 * day, 46*day + time.Hour, 0.5, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := renewalOverdue(nb, nb.Add(tc.lifetime), tc.ratio, nb.Add(tc.at)); got != tc.want {
				t.Fatalf("renewalOverdue = %v; want %v", got, tc.want)
			}
		})
	}
}

func TestExpiryEvent(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		left     time.Duration
		name     string
		daysLeft int
	}{
		{5*24*time.Hour + time.Hour, "certificate_expiring", 5},
		{23 * time.Hour, "certificate_expiring", 0},
		{time.Second, "certificate_expiring", 0},
		{0, "certificate_expired", 0},
		{-time.Hour, "certificate_expired", -1},
		{-49 * time.Hour, "certificate_expired", -3},
	} {
		name, data := expiryEvent("cert_x", nil, now.Add(tc.left), now)
		if name != tc.name || data["days_left"] != tc.daysLeft {
			t.Errorf("%v left: %s days_left %v; want %s %d", tc.left, name, data["days_left"], tc.name, tc.daysLeft)
		}
		if ids, ok := data["domain_ids"].([]string); !ok || ids == nil {
			t.Errorf("%v left: domain_ids %#v; want an empty list", tc.left, data["domain_ids"])
		}
		if data["not_after"] != now.Add(tc.left).Format(time.RFC3339) || data["certificate_id"] != "cert_x" {
			t.Errorf("%v left: data %v", tc.left, data)
		}
	}
}

// TestExpiryCheck: the uploads within expiry_warning and the managed
// certificates whose renewal is overdue are announced, once a day between
// two instances; a managed certificate in its normal renewal window is
// not.
func TestExpiryCheck(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	open := func() *domainstore.Store {
		s, err := domainstore.Open(ctx, st, domainstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		<-s.Reconciled()
		return s
	}
	a, b := open(), open()
	now := time.Now()
	day := 24 * time.Hour
	chain := testpki.NewChain(t, "Expiry")
	upload := func(name string, left time.Duration) string {
		l := chain.LeafWith(t, testpki.LeafOptions{NotAfter: now.Add(left)}, name)
		c, err := a.CreateCertificate(ctx, domainstore.CertificateInput{CertificatePEM: l.ChainPEM, PrivateKeyPEM: l.KeyPEM})
		if err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	soon := upload("soon.test", 5*day)
	gone := upload("gone.test", -day)
	upload("later.test", 40*day)
	// managed, issued 80 of 90 days ago (overdue: renewal was due at 60),
	// and 62 of 90 days ago (in its renewal window, within the grace)
	managed := func(name string, age time.Duration) string {
		d, err := a.CreateDomain(ctx, domainstore.DomainInput{Domain: name})
		if err != nil {
			t.Fatal(err)
		}
		l := chain.LeafWith(t, testpki.LeafOptions{NotBefore: now.Add(-age), NotAfter: now.Add(90*day - age)}, name)
		if err := a.SetManagedState(ctx, d.ID, *d.Policy, &domainstore.Status{}, &domainstore.IssuedCertificate{CertificatePEM: l.ChainPEM, KeyStorageKey: "k", IssuedAt: now}); err != nil {
			t.Fatal(err)
		}
		d, _ = a.GetDomain(ctx, d.ID)
		return d.CertificateID
	}
	overdue := managed("overdue.test", 80*day)
	managed("renewing.test", 60*day+12*time.Hour)
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	watch := func(s *domainstore.Store) *expiryWatch {
		return &expiryWatch{store: s, warning: 30 * day, interval: time.Hour, ratio: 1.0 / 3, log: zap.NewNop(), ctx: t.Context(), done: make(chan struct{})}
	}
	watch(a).check(now)
	watch(b).check(now)
	// one claim wrote every ID (the other instance found nothing fresh)
	keys, _ := st.List(ctx, "domaincerts/announcements", false)
	if len(keys) != 1 {
		t.Fatalf("announcement records %v; want one", keys)
	}
	rec, _ := st.Load(ctx, keys[0])
	got := strings.Fields(string(rec))
	want := []string{gone, soon, overdue} // earliest end first
	if !slices.Equal(got, want) {
		t.Fatalf("announced %v; want %v (each once)", got, want)
	}
}
