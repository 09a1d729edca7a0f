package domainstore

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// TestExpiryIndex checks the index against counting by hand, through
// random adds and removes.
func TestExpiryIndex(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var x expiryIndex
	live := map[string]int64{}
	base := int64(1_800_000_000)
	for step := range 5000 {
		if len(live) > 0 && rng.IntN(3) == 0 {
			for id, at := range live { // remove any one
				x.remove(at, id)
				delete(live, id)
				break
			}
		} else {
			id := "c" + strings.Repeat("x", step%3) + string(rune('a'+step%26)) + time.Duration(step).String()
			at := base + rng.Int64N(90*86400) - 10*86400
			x.add(at, id)
			x.add(at, id) // twice is once
			live[id] = at
		}
		if step%97 != 0 {
			continue
		}
		if x.n != len(live) {
			t.Fatalf("step %d: n = %d; want %d", step, x.n, len(live))
		}
		for _, by := range []int64{base - 20*86400, base, base + 7*86400 + 1, base + 45*86400, base + 200*86400} {
			want := 0
			for _, at := range live {
				if at <= by {
					want++
				}
			}
			if got := x.countBy(by); got != want {
				t.Fatalf("step %d: countBy(%d) = %d; want %d", step, by, got, want)
			}
			var seen []int64
			x.eachBy(by, func(it expiryItem) { seen = append(seen, it.t) })
			if len(seen) != want || !slices.IsSorted(seen) {
				t.Fatalf("step %d: eachBy(%d) gave %d items, sorted %v; want %d", step, by, len(seen), slices.IsSorted(seen), want)
			}
		}
		min, ok := x.earliest()
		if ok != (len(live) > 0) {
			t.Fatalf("step %d: earliest ok = %v with %d live", step, ok, len(live))
		}
		for _, at := range live {
			if at < min {
				t.Fatalf("step %d: earliest %d, but %d is live", step, min, at)
			}
		}
	}
	// built at once (a snapshot's load), it answers as built one by one
	var items []expiryItem
	for id, at := range live {
		items = append(items, expiryItem{at, id}, expiryItem{at, id})
	}
	var built expiryIndex
	built.build(items)
	if built.n != x.n || !slices.Equal(built.keys, x.keys) {
		t.Fatalf("built index: %d items over %d days; want %d over %d", built.n, len(built.keys), x.n, len(x.keys))
	}
	for by := base - 11*86400; by < base+81*86400; by += 3607 {
		if built.countBy(by) != x.countBy(by) {
			t.Fatalf("built index counts %d by %d; want %d", built.countBy(by), by, x.countBy(by))
		}
	}
	for id, at := range live { // and it changes like the other
		built.remove(at, id)
		built.add(at+86400, id)
		x.remove(at, id)
		x.add(at+86400, id)
	}
	if built.countBy(base+30*86400) != x.countBy(base+30*86400) {
		t.Fatal("built index diverged after changes")
	}
	// added in batches, small (one by one) and large (a rebuild)
	var batched expiryIndex
	var batch []expiryItem
	for id, at := range live {
		batch = append(batch, expiryItem{at + 86400, id})
	}
	batched.addMany(batch[:10])
	batched.addMany(batch[10:])
	batched.addMany(batch[:5]) // again: no change
	if batched.n != x.n || batched.countBy(base+30*86400) != x.countBy(base+30*86400) {
		t.Fatalf("batched index: %d items, %d by day 30; want %d, %d", batched.n, batched.countBy(base+30*86400), x.n, x.countBy(base+30*86400))
	}

	// the exact second counts: ending at by is ending by it
	var y expiryIndex
	y.add(base, "a")
	if y.countBy(base-1) != 0 || y.countBy(base) != 1 {
		t.Fatalf("countBy around the second of expiry: %d, %d; want 0, 1", y.countBy(base-1), y.countBy(base))
	}
	if dayOf(-1) != -1 || dayOf(0) != 0 || dayOf(86399) != 0 || dayOf(86400) != 1 {
		t.Fatal("dayOf rounds toward zero for negative times")
	}
}

// TestExpiryFigures follows uploads, issuance, attachment and deletion
// in the figures, and keeps them across restarts: from the snapshot, and
// from a listing of the records (read in the background).
func TestExpiryFigures(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	s := openOn(t, st)
	chain := testpki.NewChain(t, "Expiry")
	now := time.Now()
	day := 24 * time.Hour
	put := func(name string, left time.Duration) *Certificate {
		t.Helper()
		leaf := chain.LeafWith(t, testpki.LeafOptions{NotAfter: now.Add(left)}, name)
		c, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.ChainPEM, PrivateKeyPEM: leaf.KeyPEM})
		if err != nil {
			t.Fatalf("uploading %s: %v", name, err)
		}
		return c
	}
	expired := put("expired.test", -day)
	in3 := put("in3.test", 3*day)
	put("in10.test", 10*day)
	in20 := put("in20.test", 20*day)
	put("in60.test", 60*day)
	d, err := s.CreateDomain(ctx, DomainInput{Domain: "in3.test", CertificateID: in3.ID})
	if err != nil {
		t.Fatal(err)
	}
	// a managed certificate that ends in 20 days
	md, err := s.CreateDomain(ctx, DomainInput{Domain: "managed.test"})
	if err != nil {
		t.Fatal(err)
	}
	mleaf := chain.LeafWith(t, testpki.LeafOptions{NotAfter: now.Add(20 * day)}, "managed.test")
	if err := s.SetManagedState(ctx, md.ID, *md.Policy, &Status{}, &IssuedCertificate{CertificatePEM: mleaf.ChainPEM, KeyStorageKey: "k", IssuedAt: now}); err != nil {
		t.Fatal(err)
	}

	windows := []time.Duration{7 * day, 14 * day, 30 * day}
	check := func(s *Store, what string, wantUp, wantManaged ExpiryFigures) {
		t.Helper()
		up, managed := s.ExpiryFigures(now, windows...)
		for _, c := range []struct {
			source    string
			got, want ExpiryFigures
		}{{"upload", up, wantUp}, {"managed", managed, wantManaged}} {
			if c.got.Expired != c.want.Expired || !slices.Equal(c.got.Within, c.want.Within) {
				t.Fatalf("%s: %s: expired %d within %v; want %d, %v", what, c.source, c.got.Expired, c.got.Within, c.want.Expired, c.want.Within)
			}
			if !c.got.Earliest.Equal(c.want.Earliest) {
				t.Fatalf("%s: %s: earliest %v; want %v", what, c.source, c.got.Earliest, c.want.Earliest)
			}
		}
	}
	mNotAfter := mleaf.Cert.NotAfter.UTC()
	wantManaged := ExpiryFigures{Within: []int{0, 0, 1}, Earliest: mNotAfter}
	check(s, "after uploads", ExpiryFigures{Expired: 1, Within: []int{1, 2, 3}, Earliest: expired.NotAfter}, wantManaged)

	soon := s.ExpiringCertificates(now.Add(30 * day))
	var ids []string
	for _, c := range soon {
		ids = append(ids, c.ID)
	}
	if len(soon) != 5 || soon[0].ID != expired.ID || soon[1].ID != in3.ID {
		t.Fatalf("expiring within 30 days: %v (%+v); want 5, the expired one first, then in3.test's", ids, soon)
	}
	mdNow, err := s.GetDomain(ctx, md.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range soon {
		if c.Managed != (c.ID == mdNow.CertificateID) {
			t.Fatalf("expiring certificate %+v", c)
		}
	}
	users := s.DomainsUsing([]string{in3.ID, expired.ID, mdNow.CertificateID})
	if !slices.Equal(users[in3.ID], []string{d.ID}) || users[expired.ID] == nil || len(users[expired.ID]) != 0 || !slices.Equal(users[mdNow.CertificateID], []string{md.ID}) {
		t.Fatalf("DomainsUsing = %v; want in3 used by %s, the expired one by none, the managed one by %s", users, d.ID, md.ID)
	}

	if err := s.DeleteCertificate(ctx, in20.ID); err != nil {
		t.Fatal(err)
	}
	afterDelete := ExpiryFigures{Expired: 1, Within: []int{1, 2, 2}, Earliest: expired.NotAfter}
	check(s, "after a deletion", afterDelete, wantManaged)

	// a restart from the snapshot that Close writes knows the dates
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openOn(t, st)
	if n := s2.DatesPending(); n != 0 {
		t.Fatalf("%d certificates without dates after a start from the snapshot", n)
	}
	check(s2, "restarted from the snapshot", afterDelete, wantManaged)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}

	// a start by listing the records (no snapshot) reads the dates in the
	// background, and the next snapshot carries them
	snaps, _ := st.List(ctx, snapshotsDir, false)
	for _, k := range snaps {
		_ = st.Delete(ctx, k)
	}
	s3 := openOn(t, st)
	<-s3.Reconciled()
	deadline := time.Now().Add(10 * time.Second)
	for s3.DatesPending() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d certificates still without dates", s3.DatesPending())
		}
		time.Sleep(10 * time.Millisecond)
	}
	check(s3, "restarted from a listing", afterDelete, wantManaged)
	if err := s3.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := st.Load(ctx, extraKey(s3.position()))
	if err != nil {
		t.Fatalf("no extra file beside the snapshot written after the dates were read: %v", err)
	}
	line := "c " + in3.ID + " "
	i := strings.Index(string(b), line)
	if i < 0 || !strings.HasPrefix(string(b), extraHeader) {
		t.Fatalf("the extra file lacks %s:\n%s", in3.ID, b)
	}
	fields := strings.Fields(strings.SplitN(string(b[i:]), "\n", 2)[0])
	if len(fields) != 5 || fields[3] != itoa(in3.NotAfter.Unix()) || fields[4] != "u" {
		t.Fatalf("extra line %q; want the dates of %s", fields, in3.ID)
	}
	snap, err := st.Load(ctx, snapshotKey(s3.position()))
	if err != nil || !strings.HasPrefix(string(snap), snapshotHeader+" ") || strings.Contains(string(snap), in3.NotAfter.Format("2006")) {
		t.Fatalf("the snapshot is not in the format earlier releases read (%v):\n%s", err, snap)
	}
}

// TestExpiryFromSnapshotWithoutDates starts from a snapshot without its
// dates file (written by an earlier release) and reads the dates.
func TestExpiryFromSnapshotWithoutDates(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	s := openOn(t, st)
	chain := testpki.NewChain(t, "Older")
	leaf := chain.LeafWith(t, testpki.LeafOptions{NotAfter: time.Now().Add(48 * time.Hour)}, "older.test")
	c, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.ChainPEM, PrivateKeyPEM: leaf.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	pos := s.position()
	if err := st.Delete(ctx, extraKey(pos)); err != nil {
		t.Fatalf("no extra file beside the snapshot: %v", err)
	}
	s2 := openOn(t, st)
	deadline := time.Now().Add(10 * time.Second)
	for s2.DatesPending() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("dates never read")
		}
		time.Sleep(10 * time.Millisecond)
	}
	up, _ := s2.ExpiryFigures(time.Now(), 7*24*time.Hour)
	if up.Within[0] != 1 || !up.Earliest.Equal(c.NotAfter) {
		t.Fatalf("figures from a snapshot without dates: %+v; want 1 within 7 days ending %v", up, c.NotAfter)
	}
	// the next close writes the dates at the same position
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(ctx, extraKey(pos)); err != nil {
		t.Fatalf("the dates read were not written beside the snapshot: %v", err)
	}
}

func FuzzDecodeExtra(f *testing.F) {
	f.Add([]byte(extraHeader+" 9\nc cert_01m8djch0ss9fesqghxx6mv9mk 1700000000 1707776000 u\nf rd_01m8djch0z1t3s0se2ynhqbc0m\n"), uint64(9))
	f.Add([]byte(extraHeader+" a\nc cert_01m8djch0ss9fesqghxx6mv9mk -5 7 m\n"), uint64(10))
	f.Fuzz(func(t *testing.T, b []byte, seq uint64) {
		dates, failing, err := decodeExtra(b, seq)
		if err != nil {
			return
		}
		snap := &snapshot{seq: seq}
		for _, d := range dates {
			if d.notAfter == 0 {
				t.Fatalf("accepted dates %+v", d)
			}
			snap.certs = append(snap.certs, d)
		}
		for id := range failing {
			snap.domains = append(snap.domains, &Entry{DomainID: id, Managed: true, Failing: true})
		}
		again, againFailing, err := decodeExtra(snap.encodeExtra(), seq)
		if err != nil || len(again) != len(dates) || len(againFailing) != len(failing) {
			t.Fatalf("round trip: %v, %d of %d dates, %d of %d failing", err, len(again), len(dates), len(againFailing), len(failing))
		}
		if !slices.Equal(again, dates) {
			t.Fatalf("round trip changed the dates: %+v to %+v", dates, again)
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestClaimAnnouncements: two instances on one storage claim each
// certificate once a day between them, also when they claim at once.
func TestClaimAnnouncements(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	a, b := openOn(t, st), openOn(t, st)
	today := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)
	claim := func(s *Store, at time.Time, ids ...string) []string {
		t.Helper()
		got, err := s.ClaimAnnouncements(ctx, at, ids)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := claim(a, today, "x", "y"); !slices.Equal(got, []string{"x", "y"}) {
		t.Fatalf("first claim: %v", got)
	}
	if got := claim(b, today.Add(30*time.Minute), "y", "z"); !slices.Equal(got, []string{"z"}) {
		t.Fatalf("second instance, same day: %v; want [z]", got)
	}
	// at once, from both: every ID is claimed by exactly one
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = "c" + strconv.Itoa(i)
	}
	results := make(chan []string, 2)
	for _, s := range []*Store{a, b} {
		go func() {
			got, err := s.ClaimAnnouncements(ctx, today, ids)
			if err != nil {
				t.Error(err)
			}
			results <- got
		}()
	}
	all := append(<-results, <-results...)
	slices.Sort(all)
	want := slices.Clone(ids)
	slices.Sort(want)
	if !slices.Equal(all, want) {
		t.Fatalf("concurrent claims gave %v; want each of %v once", all, want)
	}
	// the next UTC day, all are fresh again, and the day before is gone
	tomorrow := today.Add(2 * time.Hour)
	if got := claim(b, tomorrow, "x", "z"); !slices.Equal(got, []string{"x", "z"}) {
		t.Fatalf("next day: %v; want [x z]", got)
	}
	keys, _ := st.List(ctx, announcementsDir, false)
	for _, k := range keys {
		if d, _ := partDay(k); d != "2026-12-01" {
			t.Fatalf("announcement records %v; want only 2026-12-01's", keys)
		}
	}
	// an instance whose clock is behind (still the day before) claims
	// nothing, and leaves the later day's record alone
	if got := claim(a, today.Add(59*time.Minute), "x", "new"); len(got) != 0 {
		t.Fatalf("a late clock claimed %v; want nothing", got)
	}
	if got := claim(a, tomorrow, "x", "new"); !slices.Equal(got, []string{"new"}) {
		t.Fatalf("after a late clock's claim: %v; want [new]", got)
	}
}

// TestClaimAnnouncementsParts claims one certificate at a time, as uploads
// of expiring certificates do: each claim writes one small part, and the
// parts are merged past maxDayParts, so that a claim never rewrites the
// day's whole record; another instance still sees every claim.
func TestClaimAnnouncementsParts(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	// records of an earlier release: the earlier day's goes, today's
	// stays for the instances of that release still running
	for _, day := range []string{"2026-11-29", "2026-11-30"} {
		if err := st.Store(ctx, legacyAnnounced+"/"+day, []byte("old\n")); err != nil {
			t.Fatal(err)
		}
	}
	a, b := openOn(t, st), openOn(t, st)
	day := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	n := maxDayParts + 40
	for i := range n {
		got, err := a.ClaimAnnouncements(ctx, day, []string{"c" + strconv.Itoa(i)})
		if err != nil || len(got) != 1 {
			t.Fatalf("claim %d: %v, %v", i, got, err)
		}
	}
	parts, _ := st.List(ctx, announcementsDir, false)
	if len(parts) > maxDayParts {
		t.Fatalf("%d parts after %d claims; want them merged (at most %d)", len(parts), n, maxDayParts)
	}
	if keys, _ := st.List(ctx, legacyAnnounced, false); len(keys) != 1 || !strings.HasSuffix(keys[0], "2026-11-30") {
		t.Fatalf("records of an earlier release: %v; want only today's", keys)
	}
	ids := []string{"new"}
	for i := range n {
		ids = append(ids, "c"+strconv.Itoa(i))
	}
	got, err := b.ClaimAnnouncements(ctx, day, ids)
	if err != nil || !slices.Equal(got, []string{"new"}) {
		t.Fatalf("the other instance claimed %v (%v); want only [new]", got, err)
	}
	if got, _ := a.ClaimAnnouncements(ctx, day, []string{"new", "c0"}); len(got) != 0 {
		t.Fatalf("claimed again: %v", got)
	}
}

func TestPartDay(t *testing.T) {
	tests := []struct {
		key, day string
		ok       bool
	}{
		{announcementsDir + "/2026-11-30_1796070000000000000-a1b2c3d4e5f6", "2026-11-30", true},
		{"2026-12-01_x", "2026-12-01", true},
		{announcementsDir + "/2026-11-30", "", false}, // an earlier release's day file
		{announcementsDir + "/2026-13-30_x", "", false},
		{announcementsDir + "/2026-11-30-x", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		day, ok := partDay(tt.key)
		if day != tt.day || ok != tt.ok {
			t.Errorf("partDay(%q) = %q, %v; want %q, %v", tt.key, day, ok, tt.day, tt.ok)
		}
	}
}
