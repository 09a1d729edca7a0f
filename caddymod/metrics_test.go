package caddymod

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	store, err := domainstore.Open(ctx, new(memstorage.Storage), domainstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	<-store.Reconciled()
	// a cache of one, so that the second certificate evicts the first
	inst := &instance{store: store, source: certsource.New(store, 1, nil)}
	reg := prometheus.NewPedanticRegistry()
	if err := registerMetrics(reg, inst); err != nil {
		t.Fatal(err)
	}
	if err := registerMetrics(reg, inst); err != nil {
		t.Fatalf("registering again (a second app on the same config): %v", err)
	}
	if err := registerMetrics(nil, inst); err != nil {
		t.Fatalf("no registry: %v", err)
	}

	ca := testpki.NewCA(t, "Metrics CA")
	var earliest time.Time
	for _, name := range []string{"a.metrics.test", "b.metrics.test"} {
		l := ca.Issue(t, name) // valid for a day
		if earliest.IsZero() || l.Cert.NotAfter.Before(earliest) {
			earliest = l.Cert.NotAfter
		}
		c, err := store.CreateCertificate(ctx, domainstore.CertificateInput{CertificatePEM: l.CertPEM, PrivateKeyPEM: l.KeyPEM})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.CreateDomain(ctx, domainstore.DomainInput{Domain: name, CertificateID: c.ID}); err != nil {
			t.Fatal(err)
		}
	}
	// b was cached last (uploads go to the cache), so a misses, evicts b,
	// and then hits
	for _, name := range []string{"a.metrics.test", "a.metrics.test", "a.metrics.test"} {
		if _, err := inst.source.GetCertificate(ctx, &tls.ClientHelloInfo{ServerName: name}); err != nil {
			t.Fatal(err)
		}
	}
	// and handshakes that get nothing
	for _, name := range []string{"unknown.metrics.test", "other.metrics.test", ""} {
		if _, err := inst.source.GetCertificate(ctx, &tls.ClientHelloInfo{ServerName: name}); err == nil {
			t.Fatalf("%q: served a certificate", name)
		}
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{} // by name{label="value"}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=\"" + l.GetValue() + "\"}"
			}
			switch {
			case m.GetGauge() != nil:
				got[key] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			}
		}
	}
	for name, want := range map[string]float64{
		`domaincerts_domains{state="uploaded"}`:                                      2,
		`domaincerts_domains{state="issued"}`:                                        0,
		`domaincerts_domains{state="provisioning"}`:                                  0,
		`domaincerts_domains{state="failing"}`:                                       0,
		`domaincerts_domains{state="none"}`:                                          0,
		`domaincerts_handshakes_total{result="served"}`:                              3,
		`domaincerts_handshakes_total{result="no_domain"}`:                           2,
		`domaincerts_handshakes_total{result="no_sni"}`:                              1,
		`domaincerts_handshakes_total{result="no_certificate"}`:                      0,
		`domaincerts_handshakes_total{result="fallback"}`:                            0,
		`domaincerts_provisioning_failures_total{error_code="DNS_ERROR"}`:            0,
		`domaincerts_certificates_expiring{source="upload"}{within="7d"}`:            2,
		`domaincerts_certificates_expiring{source="upload"}{within="14d"}`:           2,
		`domaincerts_certificates_expiring{source="upload"}{within="30d"}`:           2,
		`domaincerts_certificates_expiring{source="upload"}{within="expired"}`:       0,
		`domaincerts_certificates_expiring{source="managed"}{within="7d"}`:           0,
		`domaincerts_certificates_expiring{source="managed"}{within="30d"}`:          0,
		`domaincerts_certificates_expiring{source="managed"}{within="expired"}`:      0,
		`domaincerts_certificate_earliest_expiry_timestamp_seconds{source="upload"}`: float64(earliest.Unix()),
		"domaincerts_cache_entries":                                                  1,
		"domaincerts_cache_capacity":                                                 1,
		"domaincerts_cache_hits_total":                                               2,
		"domaincerts_cache_misses_total":                                             1,
		"domaincerts_cache_evictions_total":                                          2,
		"domaincerts_cache_max_bytes":                                                0,
		"domaincerts_damaged_records":                                                0,
		"domaincerts_storage_errors_total":                                           0,
		// two uploads and two creates, one journal entry each
		"domaincerts_journal_position": 4,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	if _, ok := got[`domaincerts_certificate_earliest_expiry_timestamp_seconds{source="managed"}`]; ok {
		t.Error("an earliest expiry for managed certificates, but there are none")
	}
	if ts := got["domaincerts_journal_last_read_timestamp_seconds"]; time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("domaincerts_journal_last_read_timestamp_seconds = %v, want about now", ts)
	}
	if want := inst.source.Cache().Stats().Bytes; want <= 0 || got["domaincerts_cache_bytes"] != float64(want) {
		t.Errorf("domaincerts_cache_bytes = %v, want the cache's estimate %d", got["domaincerts_cache_bytes"], want)
	}
}
