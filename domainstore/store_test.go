package domainstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), &certmagic.FileStorage{Path: dir}, Options{Authorities: []string{"letsencrypt", "local"}})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	<-s.Reconciled()
	return s
}

func wantCode(t *testing.T, err error, code dcerr.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error; want %s", code)
	}
	if got := dcerr.CodeOf(err); got != code {
		t.Fatalf("got code %s (%v); want %s", got, err, code)
	}
}

func upload(t *testing.T, s *Store, leaf *testpki.Leaf) *Certificate {
	t.Helper()
	c, err := s.CreateCertificate(context.Background(), CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	return c
}

func TestCertificateLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir)
	ca := testpki.NewCA(t, "Test CA")
	leaf := ca.Issue(t, "a.example.test", "b.example.test")

	c := upload(t, s, leaf)
	if !strings.HasPrefix(c.ID, "cert_") || len(c.ID) != len("cert_")+26 {
		t.Errorf("id = %q", c.ID)
	}
	if c.SerialNumber != leaf.Serial || c.PrivateKeyType != "ecdsa" || c.IssuedAt != nil {
		t.Errorf("record = serial %s type %s issued %v", c.SerialNumber, c.PrivateKeyType, c.IssuedAt)
	}

	// storage holds the record without the key, and the key apart (the
	// record is written right after the answer)
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec, err := os.ReadFile(filepath.Join(dir, "domaincerts", "certificates", c.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(rec), "PRIVATE KEY") {
		t.Fatal("certificate record holds the private key")
	}
	if _, err := os.Stat(filepath.Join(dir, "domaincerts", "certificates", c.ID+".key")); err != nil {
		t.Fatalf("private key not stored apart: %v", err)
	}

	got, err := s.GetCertificate(ctx, c.ID)
	if err != nil || got.SerialNumber != leaf.Serial {
		t.Fatalf("GetCertificate = %v, %v", got, err)
	}
	desc := "new description"
	if u, err := s.UpdateCertificate(ctx, c.ID, CertificatePatch{Description: &desc}); err != nil || u.Description != desc {
		t.Fatalf("UpdateCertificate = %v, %v", u, err)
	}
	kp, err := s.LoadKeyPair(ctx, c.ID)
	if err != nil || kp.Leaf.SerialNumber.Text(16) != leaf.Serial {
		t.Fatalf("LoadKeyPair = %v, %v", kp, err)
	}
	if err := s.DeleteCertificate(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetCertificate(ctx, c.ID)
	wantCode(t, err, dcerr.NotFound)
	if _, err := os.Stat(filepath.Join(dir, "domaincerts", "certificates", c.ID+".key")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("private key left behind: %v", err)
	}
	wantCode(t, s.DeleteCertificate(ctx, c.ID), dcerr.NotFound)
}

func TestRejectedWritesChangeNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir)
	ca := testpki.NewCA(t, "Test CA")
	other := ca.Issue(t, "other.example.test")
	leaf := ca.Issue(t, "a.example.test")
	cert := upload(t, s, leaf)
	if _, err := s.CreateDomain(ctx, DomainInput{Domain: "a.example.test", CertificateID: cert.ID}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", MaxDescription+1)
	huge := strings.Repeat("x", MaxMetadata+1)
	otherCert := upload(t, s, other)

	tests := []struct {
		name string
		err  error
		code dcerr.Code
	}{
		{"key mismatch", func() error {
			_, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: other.KeyPEM})
			return err
		}(), dcerr.KeyMismatch},
		{"description too long", func() error {
			_, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM, Description: long})
			return err
		}(), dcerr.FieldTooLarge},
		{"metadata too long", func() error {
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "m.example.test", Metadata: huge})
			return err
		}(), dcerr.FieldTooLarge},
		{"invalid domain", func() error {
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "under_score.example.test"})
			return err
		}(), dcerr.DomainInvalid},
		{"duplicate domain", func() error {
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "A.Example.Test."})
			return err
		}(), dcerr.DomainExists},
		{"cert and policy", func() error {
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "c.example.test", CertificateID: cert.ID, Policy: &Policy{}})
			return err
		}(), dcerr.CertAndPolicy},
		{"unknown authority", func() error {
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "c.example.test", Policy: &Policy{Authority: "nope"}})
			return err
		}(), dcerr.PolicyInvalid},
		{"unknown key type", func() error {
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "c.example.test", Policy: &Policy{PrivateKeyType: "dsa"}})
			return err
		}(), dcerr.PolicyInvalid},
		{"certificate not found", func() error {
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "c.example.test", CertificateID: "cert_00000000000000000000000000"})
			return err
		}(), dcerr.CertNotFound},
		{"certificate does not cover", func() error {
			_, err := s.CreateDomain(ctx, DomainInput{Domain: "c.example.test", CertificateID: cert.ID})
			return err
		}(), dcerr.CertDomainMismatch},
		{"certificate in use", s.DeleteCertificate(ctx, cert.ID), dcerr.CertInUse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCode(t, tt.err, tt.code)
		})
	}
	domains, certs := s.Len()
	if domains != 1 || certs != 2 {
		t.Fatalf("after rejected writes: %d domains, %d certificates; want 1, 2", domains, certs)
	}
	// a fresh store over the same storage sees the same
	s2 := openStore(t, dir)
	if d, c := s2.Len(); d != 1 || c != 2 {
		t.Fatalf("reloaded: %d domains, %d certificates; want 1, 2", d, c)
	}
	_ = otherCert
}

// TestAttachManagedCertificateRefused: a certificate that ACME issued for
// a managed domain cannot be attached to another domain, at create or by
// PATCH (its key is replaced at the owner's next issuance and its record
// deleted with it), and the refusal changes nothing.
func TestAttachManagedCertificateRefused(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	ca := testpki.NewCA(t, "Test CA")
	owner := mustCreate(t, s, DomainInput{Domain: "m.example.test"})
	issued := ca.Issue(t, "m.example.test", "y.example.test", "z.example.test")
	if err := s.SetManagedState(ctx, owner.ID, *owner.Policy, &Status{}, &IssuedCertificate{CertificatePEM: issued.CertPEM, KeyStorageKey: "k"}); err != nil {
		t.Fatal(err)
	}
	owner, err := s.GetDomain(ctx, owner.ID)
	if err != nil || owner.CertificateID == "" {
		t.Fatalf("the managed domain has no certificate: %v", err)
	}
	managed := owner.CertificateID
	up := upload(t, s, ca.Issue(t, "y.example.test"))
	y := mustCreate(t, s, DomainInput{Domain: "y.example.test", CertificateID: up.ID})
	domains, certs := s.Len()

	_, err = s.CreateDomain(ctx, DomainInput{Domain: "z.example.test", CertificateID: managed})
	wantCode(t, err, dcerr.BadRequest)
	_, err = s.UpdateDomain(ctx, y.ID, DomainPatch{CertificateID: &managed})
	wantCode(t, err, dcerr.BadRequest)
	if d, c := s.Len(); d != domains || c != certs {
		t.Fatalf("after refused attaches: %d domains, %d certificates; want %d, %d", d, c, domains, certs)
	}
	if got, _ := s.GetDomain(ctx, y.ID); got.CertificateID != up.ID {
		t.Fatalf("y points to %s; want its upload %s", got.CertificateID, up.ID)
	}
	// its own domain may name it, and a PATCH that repeats a domain's
	// certificate_id is no attach
	if _, err := s.UpdateDomain(ctx, y.ID, DomainPatch{CertificateID: &up.ID}); err != nil {
		t.Fatalf("repeating y's certificate_id: %v", err)
	}
	if _, err := s.UpdateDomain(ctx, owner.ID, DomainPatch{CertificateID: &managed}); err != nil {
		t.Fatalf("the owner naming its own certificate: %v", err)
	}
}

func TestDomainLifecycleAndIndex(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir)
	ca := testpki.NewCA(t, "Test CA")
	wild := upload(t, s, ca.Issue(t, "*.example.test"))
	exact := upload(t, s, ca.Issue(t, "a.example.test"))

	dw, err := s.CreateDomain(ctx, DomainInput{Domain: "*.example.test", CertificateID: wild.ID})
	if err != nil {
		t.Fatal(err)
	}
	da, err := s.CreateDomain(ctx, DomainInput{Domain: "a.example.test", CertificateID: exact.ID})
	if err != nil {
		t.Fatal(err)
	}
	managed, err := s.CreateDomain(ctx, DomainInput{Domain: "m.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if managed.Policy == nil || managed.Policy.Authority != "letsencrypt" || managed.Policy.PrivateKeyType != "ecdsa" {
		t.Fatalf("default policy = %+v", managed.Policy)
	}

	lookups := []struct{ sni, cert string }{
		{"a.example.test", exact.ID},
		{"b.example.test", wild.ID},
		{"B.EXAMPLE.TEST.", wild.ID},
		{"example.test", ""},
		{"x.y.example.test", ""},
	}
	check := func(t *testing.T, s *Store) {
		for _, l := range lookups {
			e, ok := s.Lookup(l.sni)
			got := ""
			if ok {
				got = e.CertificateID
			}
			if got != l.cert {
				t.Errorf("Lookup(%q) certificate = %q; want %q", l.sni, got, l.cert)
			}
		}
		if e, ok := s.Lookup("m.example.org"); !ok || !e.Managed || e.CertificateID != "" {
			t.Errorf("managed entry = %+v, %v", e, ok)
		}
	}
	check(t, s)
	check(t, openStore(t, dir)) // the index comes back from storage

	// detach, then the name has no certificate
	if err := s.DetachCertificate(ctx, da.ID); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Lookup("a.example.test"); e.CertificateID != "" {
		t.Fatalf("after detach: %+v", e)
	}
	wantCode(t, s.DetachCertificate(ctx, managed.ID), dcerr.DetachManaged)

	// PATCH: attach, immutable name
	if _, err := s.UpdateDomain(ctx, da.ID, DomainPatch{CertificateID: &wild.ID}); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Lookup("a.example.test"); e.CertificateID != wild.ID {
		t.Fatalf("after patch: %+v", e)
	}
	other := "b.example.test"
	_, err = s.UpdateDomain(ctx, da.ID, DomainPatch{Domain: &other})
	wantCode(t, err, dcerr.DomainImmutable)
	same := "a.example.test"
	if _, err := s.UpdateDomain(ctx, da.ID, DomainPatch{Domain: &same}); err != nil {
		t.Fatalf("patching the same name: %v", err)
	}

	// attaching an upload ends management; a policy detaches the upload
	if d, err := s.UpdateDomain(ctx, managed.ID, DomainPatch{Policy: &Policy{Authority: "local"}}); err != nil || d.Policy.Authority != "local" {
		t.Fatalf("policy patch = %+v, %v", d, err)
	}
	if err := s.DetachPolicy(ctx, managed.ID); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Lookup("m.example.org"); e.Managed {
		t.Fatal("still managed after DetachPolicy")
	}
	// an upload serving until the policy's certificate is issued stays
	// attached when the policy is detached
	if d, err := s.UpdateDomain(ctx, da.ID, DomainPatch{Policy: &Policy{Authority: "local"}}); err != nil || d.CertificateID != wild.ID {
		t.Fatalf("upload to policy = %+v, %v; want the upload still attached", d, err)
	}
	if err := s.DetachPolicy(ctx, da.ID); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Lookup("a.example.test"); e.Managed || e.CertificateID != wild.ID {
		t.Fatalf("after detaching the pending policy: %+v; want the upload %s, unmanaged", e, wild.ID)
	}
	if d, err := s.GetDomain(ctx, da.ID); err != nil || d.CertificateID != wild.ID || d.Policy != nil {
		t.Fatalf("record after detaching the pending policy: %+v, %v", d, err)
	}

	if err := s.DeleteDomain(ctx, dw.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup("b.example.test"); ok {
		t.Fatal("wildcard still matches after delete")
	}
	wantCode(t, s.DeleteDomain(ctx, dw.ID), dcerr.NotFound)
	// the wildcard certificate is still used by a.example.test
	wantCode(t, s.DeleteCertificate(ctx, wild.ID), dcerr.CertInUse)
	if err := s.DeleteCertificate(ctx, exact.ID); err != nil {
		t.Fatalf("deleting an unused certificate: %v", err)
	}
}

func TestPagination(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	var ids []string
	for i := 0; i < 7; i++ {
		d, err := s.CreateDomain(ctx, DomainInput{Domain: fmt.Sprintf("d%d.example.test", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.ID)
	}
	var seen []string
	before := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		page, more, err := s.ListDomains(ctx, 3, before)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page {
			seen = append(seen, d.ID)
		}
		if !more {
			break
		}
		before = page[len(page)-1].ID
	}
	if len(seen) != 7 {
		t.Fatalf("saw %d domains; want 7", len(seen))
	}
	for i, id := range seen {
		if want := ids[6-i]; id != want {
			t.Errorf("item %d = %s; want %s (newest first)", i, id, want)
		}
	}
}

// TestConcurrentWrites runs uploads, attaches, swaps and lookups in
// parallel (run it with -race) and checks that no update is lost.
func TestConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir)
	ca := testpki.NewCA(t, "Test CA")
	const writers, perWriter = 8, 10

	// a shared domain whose certificate every writer swaps
	shared := []*Certificate{upload(t, s, ca.Issue(t, "shared.example.test")), upload(t, s, ca.Issue(t, "shared.example.test"))}
	sd, err := s.CreateDomain(ctx, DomainInput{Domain: "shared.example.test", CertificateID: shared[0].ID})
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					s.Lookup("shared.example.test")
					s.Lookup("w3-5.example.test")
				}
			}
		}()
	}
	var wwg sync.WaitGroup
	errs := make(chan error, writers*perWriter*2)
	for w := 0; w < writers; w++ {
		wwg.Add(1)
		go func(w int) {
			defer wwg.Done()
			for i := 0; i < perWriter; i++ {
				name := fmt.Sprintf("w%d-%d.example.test", w, i)
				leaf := ca.Issue(t, name)
				c, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.CertPEM, PrivateKeyPEM: leaf.KeyPEM})
				if err != nil {
					errs <- err
					return
				}
				if _, err := s.CreateDomain(ctx, DomainInput{Domain: name, CertificateID: c.ID}); err != nil {
					errs <- err
					return
				}
				if _, err := s.UpdateDomain(ctx, sd.ID, DomainPatch{CertificateID: &shared[i%2].ID}); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wwg.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	check := func(s *Store) {
		d, c := s.Len()
		if d != writers*perWriter+1 || c != writers*perWriter+2 {
			t.Fatalf("%d domains, %d certificates; want %d, %d", d, c, writers*perWriter+1, writers*perWriter+2)
		}
		for w := 0; w < writers; w++ {
			for i := 0; i < perWriter; i++ {
				name := fmt.Sprintf("w%d-%d.example.test", w, i)
				e, ok := s.Lookup(name)
				if !ok || e.CertificateID == "" {
					t.Fatalf("%s lost", name)
				}
			}
		}
		// the index and the stored record of the shared domain agree
		e, _ := s.Lookup("shared.example.test")
		got, _ := s.GetDomain(ctx, sd.ID)
		if e.CertificateID != got.CertificateID {
			t.Fatalf("index says %s, record says %s", e.CertificateID, got.CertificateID)
		}
	}
	check(s)
	s2 := openStore(t, dir)
	check(s2)
	e1, _ := s.Lookup("shared.example.test")
	e2, _ := s2.Lookup("shared.example.test")
	if e1.CertificateID != e2.CertificateID {
		t.Fatalf("memory says %s, storage says %s", e1.CertificateID, e2.CertificateID)
	}
}

func TestNormalizeDomain(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"app.example.com", "app.example.com", true},
		{"App.Example.COM.", "app.example.com", true},
		{"*.example.com", "*.example.com", true},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", true},
		{"a-b.example.com", "a-b.example.com", true},
		{"", "", false},
		{"example", "", false},
		{"*.com", "", false},
		{"a.*.example.com", "", false},
		{"*example.com", "", false},
		{"**.example.com", "", false},
		{"a..example.com", "", false},
		{".example.com", "", false},
		{"under_score.example.com", "", false},
		{"-a.example.com", "", false},
		{"a-.example.com", "", false},
		{"192.168.1.1", "", false},
		{"::1", "", false},
		{"[::1]", "", false},
		{"bücher.example", "xn--bcher-kva.example", true},
		{"BÜCHER.Example.", "xn--bcher-kva.example", true},
		{"*.bücher.example", "*.xn--bcher-kva.example", true},
		{"\u212aelvin.example", "kelvin.example", true}, // IDNA maps the KELVIN SIGN to k
		{"ß.example", "xn--zca.example", true},          // nontransitional: ß stays
		{"ａｂｃ.example", "abc.example", true},            // fullwidth forms
		{"a\u3002b.example", "a.b.example", true},       // ideographic full stop
		{"xn--zz.example", "", false},                   // not punycode of a valid label
		{"XN--ZZ.example", "", false},
		{"\u200d.example", "", false}, // a joiner alone
		{"bü_cher.example", "", false},
		{"\xff.example", "", false},           // not UTF-8
		{"１２７.０.０.１", "", false},              // an IP address in fullwidth digits
		{"*.\u0627\u0061.example", "", false}, // breaks the Bidi rule
		{"bücher.example..", "", false},       // an empty label, as for ASCII names
		{"a.example..", "", false},
		{"bücher.example.", "xn--bcher-kva.example", true},
		{"ab--cd.example", "ab--cd.example", true}, // hyphens alike for ASCII and IDN labels
		{"bücher.ab--cd.example", "xn--bcher-kva.ab--cd.example", true},
		{"a b.example.com", "", false},
		{"example.123", "", false},
		{strings.Repeat("a", 64) + ".example.com", "", false},
		{strings.Repeat("a.", 127) + "com", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := NormalizeDomain(tt.in)
			if tt.ok {
				if err != nil || got != tt.want {
					t.Fatalf("NormalizeDomain(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
				}
				return
			}
			wantCode(t, err, dcerr.DomainInvalid)
		})
	}
}

// TestStoredNamesStayReadable: a name that an earlier version stored
// (checked lexically, without IDNA) is still read back from a record, even
// where IDNA would now refuse it as input.
func TestStoredNamesStayReadable(t *testing.T) {
	for _, name := range []string{"xn--zz.example", "app.example.com", "*.example.com", "xn--bcher-kva.example"} {
		if !storedName(name) {
			t.Errorf("storedName(%q) = false, want true", name)
		}
	}
	if _, err := NormalizeDomain("xn--zz.example"); err == nil {
		t.Error("NormalizeDomain accepts xn--zz.example as new input")
	}
	for _, name := range []string{"App.example.com", "a..example", "under_score.example"} {
		if storedName(name) {
			t.Errorf("storedName(%q) = true, want false", name)
		}
	}
}

func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{"a.example.com", "*.example.com", "A.B.", "_x.y", "1.2.3.4", "*.*.x", "", "bücher.example", "xn--bcher-kva.example", "\u212aelvin.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := NormalizeDomain(in)
		if err != nil {
			if dcerr.CodeOf(err) != dcerr.DomainInvalid {
				t.Fatalf("error without DOMAIN_INVALID: %v", err)
			}
			return
		}
		again, err := NormalizeDomain(got)
		if err != nil || again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, got, again, err)
		}
		for i := 0; i < len(got); i++ {
			if c := got[i]; c >= utf8.RuneSelf || ('A' <= c && c <= 'Z') {
				t.Fatalf("%q -> %q: not lowercase ASCII", in, got)
			}
		}
	})
}

func TestIDs(t *testing.T) {
	prev := ""
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := newID(DomainPrefix)
		if !validID(DomainPrefix, id) {
			t.Fatalf("invalid id %q", id)
		}
		if id <= prev {
			t.Fatalf("ids not increasing: %q after %q", id, prev)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
		prev = id
	}
	for _, bad := range []string{"", "rd_", "rd_../../etc/passwd0000000000", "cert_01m8djch0ss9fesqghxx6mv9mk", "rd_01M8DJCH0SS9FESQGHXX6MV9MK"} {
		if validID(DomainPrefix, bad) {
			t.Errorf("validID(%q) = true", bad)
		}
	}
}

// TestListenerOrder checks that listeners see uploads and domain changes.
func TestListeners(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	l := &recorder{}
	s.Subscribe(l)
	ca := testpki.NewCA(t, "Test CA")
	c := upload(t, s, ca.Issue(t, "a.example.test"))
	d, _ := s.CreateDomain(ctx, DomainInput{Domain: "a.example.test", CertificateID: c.ID})
	_ = s.DeleteDomain(ctx, d.ID)
	_ = s.DeleteCertificate(ctx, c.ID)
	s.Unsubscribe(l)
	_, _ = s.CreateDomain(ctx, DomainInput{Domain: "b.example.test"})
	want := []string{"stored " + c.ID, "domain nil->a.example.test", "domain a.example.test->nil", "deleted " + c.ID}
	if got, _ := json.Marshal(l.events); string(got) != mustJSON(want) {
		t.Fatalf("events = %s; want %s", got, mustJSON(want))
	}
}

type recorder struct{ events []string }

func (r *recorder) CertificateStored(id string, _ *bundle.Bundle) {
	r.events = append(r.events, "stored "+id)
}
func (r *recorder) CertificateDeleted(id string) { r.events = append(r.events, "deleted "+id) }
func (r *recorder) DomainChanged(old, new *Domain) {
	name := func(d *Domain) string {
		if d == nil {
			return "nil"
		}
		return d.Domain
	}
	r.events = append(r.events, "domain "+name(old)+"->"+name(new))
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// TestLoadKeyPairManaged loads a certificate that CertMagic issued: the
// record holds the chain and where CertMagic wrote the key, in
// CertMagic's own PEM form (SEC 1 for ECDSA, PKCS#1 for RSA).
func TestLoadKeyPairManaged(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	s := openOn(t, st)
	ca := testpki.NewCA(t, "Managed CA")
	for _, leaf := range []*testpki.Leaf{ca.Issue(t, "ec.managed.test"), ca.IssueRSA(t, "rsa.managed.test")} {
		name := leaf.Cert.DNSNames[0]
		block, _ := pem.Decode([]byte(leaf.KeyPEM))
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, err := certmagic.PEMEncodePrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		keyKey := "certificates/acme.test-directory/" + name + "/" + name + ".key"
		if err := st.Store(ctx, keyKey, keyPEM); err != nil {
			t.Fatal(err)
		}
		d, err := s.CreateDomain(ctx, DomainInput{Domain: name})
		if err != nil {
			t.Fatal(err)
		}
		issued := &IssuedCertificate{CertificatePEM: leaf.CertPEM, KeyStorageKey: keyKey, IssuedAt: time.Now()}
		if err := s.SetManagedState(ctx, d.ID, *d.Policy, &Status{}, issued); err != nil {
			t.Fatal(err)
		}
		// recording the same certificate again (another instance loaded
		// it too) makes no second record
		if err := s.SetManagedState(ctx, d.ID, *d.Policy, &Status{}, issued); err != nil {
			t.Fatal(err)
		}
		if _, n := s.Len(); n != 1 {
			t.Fatalf("%d certificate records after recording one twice; want 1", n)
		}
		d, err = s.GetDomain(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		c, err := s.GetCertificate(ctx, d.CertificateID)
		if err != nil {
			t.Fatal(err)
		}
		if c.ManagedDomainID != d.ID || c.IssuedAt == nil {
			t.Fatalf("managed record %+v", c)
		}
		tc, err := s.LoadKeyPair(ctx, c.ID)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if tc.Leaf == nil || !tc.Leaf.Equal(leaf.Cert) || tc.PrivateKey == nil {
			t.Fatalf("%s: loaded leaf %v, key %v", name, tc.Leaf != nil, tc.PrivateKey != nil)
		}
		rec, err := st.Load(ctx, certRecordKey(c.ID))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(rec), "PRIVATE KEY") {
			t.Fatalf("%s: the certificate record holds the private key", name)
		}
		// deleting the domain deletes its managed certificate's record,
		// not CertMagic's key
		if err := s.DeleteDomain(ctx, d.ID); err != nil {
			t.Fatal(err)
		}
		if s.CertificateExists(c.ID) {
			t.Fatalf("%s: the managed certificate record outlived its domain", name)
		}
		if _, err := st.Load(ctx, keyKey); err != nil {
			t.Fatalf("%s: CertMagic's key was deleted: %v", name, err)
		}
	}
}

// TestSharedChallengeTarget: a name and its wildcard are validated through
// one _acme-challenge record, so the second to be registered gets the
// first one's acme_challenge_cname_target; other names get their own.
func TestSharedChallengeTarget(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	n := 0
	s.SetPolicyOptions("letsencrypt", []string{"letsencrypt"}, func(d *Domain) {
		if d.ACMEChallengeCNAMETarget == nil {
			n++
			target := fmt.Sprintf("t%d.acme.example.net", n)
			d.ACMEChallengeCNAMETarget = &target
		}
	}, nil)
	create := func(name string) *Domain {
		t.Helper()
		d, err := s.CreateDomain(ctx, DomainInput{Domain: name})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	wild := create("*.shop.example.com")
	base := create("shop.example.com")
	other := create("other.example.com")
	if *base.ACMEChallengeCNAMETarget != *wild.ACMEChallengeCNAMETarget {
		t.Errorf("shop.example.com got %s, want its wildcard's %s", *base.ACMEChallengeCNAMETarget, *wild.ACMEChallengeCNAMETarget)
	}
	if *other.ACMEChallengeCNAMETarget == *wild.ACMEChallengeCNAMETarget {
		t.Errorf("an unrelated name shares %s", *other.ACMEChallengeCNAMETarget)
	}
	if d, err := s.GetDomain(ctx, base.ID); err != nil || *d.ACMEChallengeCNAMETarget != *wild.ACMEChallengeCNAMETarget {
		t.Errorf("stored record: %+v, %v", d, err)
	}
}

// TestDomainStates counts domains by state as they change, and again
// after a restart from the snapshot the store wrote when it closed.
func TestDomainStates(t *testing.T) {
	ctx := context.Background()
	st := new(memstorage.Storage)
	s := openOn(t, st)
	ca := testpki.NewCA(t, "States CA")
	cert := upload(t, s, ca.Issue(t, "up.states.test"))
	if _, err := s.CreateDomain(ctx, DomainInput{Domain: "up.states.test", CertificateID: cert.ID}); err != nil {
		t.Fatal(err)
	}
	// a domain without a certificate is managed by default; detaching its
	// policy leaves it with neither
	none, err := s.CreateDomain(ctx, DomainInput{Domain: "none.states.test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DetachPolicy(ctx, none.ID); err != nil {
		t.Fatal(err)
	}
	failing, err := s.CreateDomain(ctx, DomainInput{Domain: "failing.states.test", Policy: &Policy{}})
	if err != nil {
		t.Fatal(err)
	}
	issued, err := s.CreateDomain(ctx, DomainInput{Domain: "issued.states.test", Policy: &Policy{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateDomain(ctx, DomainInput{Domain: "waiting.states.test", Policy: &Policy{}}); err != nil {
		t.Fatal(err)
	}
	code := "DNS_ERROR"
	if err := s.SetManagedState(ctx, failing.ID, *failing.Policy, &Status{ProvisioningJob: &ProvisioningJob{ErrorCode: &code, Msg: "create a record"}}, nil); err != nil {
		t.Fatal(err)
	}
	leaf := ca.Issue(t, "issued.states.test")
	if err := s.SetManagedState(ctx, issued.ID, *issued.Policy, &Status{}, &IssuedCertificate{CertificatePEM: leaf.CertPEM, KeyStorageKey: "k", IssuedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	want := [numDomainStates]int{StateUploaded: 1, StateIssued: 1, StateProvisioning: 1, StateFailing: 1, StateNone: 1}
	if got := s.Stats().States; got != want {
		t.Fatalf("states %v, want %v (%v)", got, want, DomainStateNames)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// the snapshot stays readable by earlier releases (m|u only); the
	// failing job travels in its extra file
	snap, err := st.Load(ctx, snapshotKey(s.position()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(snap), "\n") {
		if f := strings.Fields(line); len(f) == 6 && f[0] == "d" && f[5] != "m" && f[5] != "u" {
			t.Fatalf("snapshot line %q has a flag earlier releases refuse", line)
		}
	}
	s = openOn(t, st)
	if got := s.Stats().States; got != want {
		t.Fatalf("after a restart: states %v, want %v", got, want)
	}
	if err := s.DeleteDomain(ctx, failing.ID); err != nil {
		t.Fatal(err)
	}
	want[StateFailing] = 0
	if got := s.Stats().States; got != want {
		t.Fatalf("after a delete: states %v, want %v", got, want)
	}
}

// loadRecorder is file storage that records which certificate files
// were read (not the journal, which the store reads on its own schedule).
type loadRecorder struct {
	*certmagic.FileStorage
	mu    sync.Mutex
	loads []string
}

func (r *loadRecorder) Load(ctx context.Context, key string) ([]byte, error) {
	if strings.HasPrefix(key, certificatesDir+"/") {
		r.mu.Lock()
		r.loads = append(r.loads, key)
		r.mu.Unlock()
	}
	return r.FileStorage.Load(ctx, key)
}

func (r *loadRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.loads
	r.loads = nil
	return l
}

// TestKeyPairFromKeyFile checks that an upload's key file holds its key
// and then its chain, and that serving it reads that one file; a key file
// that holds only the key is served with the record's chain.
func TestKeyPairFromKeyFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	rec := &loadRecorder{FileStorage: &certmagic.FileStorage{Path: dir}}
	s := openWith(t, rec, Options{Authorities: []string{"letsencrypt"}})
	<-s.Reconciled()
	ca := testpki.NewChain(t, "Key File")
	leaf := ca.Leaf(t, "a.example.test")
	c, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.ChainPEM, PrivateKeyPEM: leaf.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "domaincerts", "certificates", c.ID+".key")
	kf, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for rest := kf; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		types = append(types, b.Type)
	}
	if want := []string{"PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"}; !slices.Equal(types, want) {
		t.Fatalf("key file blocks = %v; want %v (the key, then the leaf and its intermediate)", types, want)
	}
	if !strings.HasSuffix(string(kf), c.CertificatePEM) {
		t.Fatal("the key file's chain is not the record's certificate_pem")
	}
	want, err := tls.X509KeyPair([]byte(leaf.ChainPEM), []byte(leaf.KeyPEM))
	if err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name    string
		keyFile []byte // written over the key file first; nil leaves it
		reads   []string
	}{
		{"key and chain", nil, []string{"domaincerts/certificates/" + c.ID + ".key"}},
		{"key alone", []byte(leaf.KeyPEM), []string{"domaincerts/certificates/" + c.ID + ".key", "domaincerts/certificates/" + c.ID + ".json"}},
		// a block that does not decode is not left out of the chain: the
		// record's chain is served instead
		{"chain damaged", []byte(leaf.KeyPEM + leaf.CertPEM + strings.Replace(ca.InterPEM, "\n", "\n!", 1)),
			[]string{"domaincerts/certificates/" + c.ID + ".key", "domaincerts/certificates/" + c.ID + ".json"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.keyFile != nil {
				if err := os.WriteFile(keyPath, tt.keyFile, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			rec.take()
			kp, err := s.LoadKeyPair(ctx, c.ID)
			if err != nil {
				t.Fatalf("LoadKeyPair: %v", err)
			}
			if got := rec.take(); !slices.Equal(got, tt.reads) {
				t.Errorf("storage reads = %v; want %v", got, tt.reads)
			}
			if !slices.EqualFunc(kp.Certificate, want.Certificate, bytes.Equal) {
				t.Errorf("served chain of %d certificates differs from the upload's %d", len(kp.Certificate), len(want.Certificate))
			}
			if kp.Leaf == nil || kp.Leaf.SerialNumber.Text(16) != leaf.Serial {
				t.Errorf("leaf = %v; want serial %s", kp.Leaf, leaf.Serial)
			}
		})
	}

	// an upload another instance made is found through the journal
	other := openWith(t, &certmagic.FileStorage{Path: dir}, Options{Authorities: []string{"letsencrypt"}})
	leaf2 := ca.Leaf(t, "b.example.test")
	c2, err := other.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf2.ChainPEM, PrivateKeyPEM: leaf2.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	if kp, err := s.LoadKeyPair(ctx, c2.ID); err != nil || kp.Leaf.SerialNumber.Text(16) != leaf2.Serial || len(kp.Certificate) != 2 {
		t.Fatalf("LoadKeyPair of another instance's upload = %v, %v; want serial %s with its intermediate", kp, err, leaf2.Serial)
	}

	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadKeyPair(ctx, c.ID); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadKeyPair without a key file = %v; want an error that wraps fs.ErrNotExist", err)
	}
}
