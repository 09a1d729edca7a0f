package caddymod

import (
	"errors"
	"time"

	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/prometheus/client_golang/prometheus"
)

// The plugin's metrics, served with Caddy's own on the admin endpoint's
// /metrics. The cache figures are what an operator needs to set
// cache_capacity and cache_memory: misses that keep growing under steady
// traffic mean the hot set does not fit. They cover uploaded certificates;
// managed ones live in CertMagic's cache.
var (
	metricDomains = prometheus.NewDesc("domaincerts_domains",
		"Domains by state: uploaded (an uploaded certificate), issued (managed, with a certificate), provisioning (managed, none yet), failing (managed, its job reports an error), none.",
		[]string{"state"}, nil)
	metricHandshakes = prometheus.NewDesc("domaincerts_handshakes_total",
		"TLS handshakes the manager answered, by result: served, fallback (the fallback certificate), no_sni, no_domain, no_certificate.",
		[]string{"result"}, nil)
	metricExpiring = prometheus.NewDesc("domaincerts_certificates_expiring",
		"Certificates in the store by source (upload, managed) that end within a window (7d, 14d, 30d; each window includes the shorter ones) or have ended (expired).",
		[]string{"source", "within"}, nil)
	metricEarliestExpiry = prometheus.NewDesc("domaincerts_certificate_earliest_expiry_timestamp_seconds",
		"The earliest end (not_after, Unix time) of a certificate in the store, by source (upload, managed); absent when there is none.",
		[]string{"source"}, nil)
	metricDatesPending = prometheus.NewDesc("domaincerts_certificate_dates_pending",
		"Certificates whose validity dates this instance is still reading from storage (after a start without them); the expiry figures leave them out until then.",
		nil, nil)
	metricProvisioningFailures = prometheus.NewDesc("domaincerts_provisioning_failures_total",
		"Failed certificate provisioning attempts and renewals on this instance, by error code.",
		[]string{"error_code"}, nil)
	metricCacheEntries = prometheus.NewDesc("domaincerts_cache_entries",
		"Parsed certificates held in the certificate cache.", nil, nil)
	metricCacheCapacity = prometheus.NewDesc("domaincerts_cache_capacity",
		"The bound of the certificate cache (cache_capacity).", nil, nil)
	metricCacheBytes = prometheus.NewDesc("domaincerts_cache_bytes",
		"Estimated memory of the certificates in the cache, in bytes.", nil, nil)
	metricCacheMaxBytes = prometheus.NewDesc("domaincerts_cache_max_bytes",
		"The memory bound of the certificate cache in bytes (cache_memory); 0 if none.", nil, nil)
	metricCacheHits = prometheus.NewDesc("domaincerts_cache_hits_total",
		"Certificate lookups answered from the cache.", nil, nil)
	metricCacheMisses = prometheus.NewDesc("domaincerts_cache_misses_total",
		"Certificate lookups that missed the cache and read storage.", nil, nil)
	metricCacheEvictions = prometheus.NewDesc("domaincerts_cache_evictions_total",
		"Certificates evicted from the cache to stay within its bounds.", nil, nil)
	metricHotEntries = prometheus.NewDesc("domaincerts_hot_certificates",
		"Uploaded certificates served straight from Caddy's certificate cache (hot_certificates).", nil, nil)
	metricHotCapacity = prometheus.NewDesc("domaincerts_hot_certificates_capacity",
		"The bound of hot certificates; 0 if off.", nil, nil)
	metricHotPromotions = prometheus.NewDesc("domaincerts_hot_promotions_total",
		"Certificates put into Caddy's certificate cache.", nil, nil)

	// The store: a growing journal lag or storage error count means this
	// instance cannot reach the shared storage; damaged records need an
	// operator (they are listed by the API and can be deleted).
	metricDamaged = prometheus.NewDesc("domaincerts_damaged_records",
		"Domain and certificate records in storage that cannot be read.", nil, nil)
	metricJournal = prometheus.NewDesc("domaincerts_journal_position",
		"The change journal entry this instance has applied.", nil, nil)
	metricLastSync = prometheus.NewDesc("domaincerts_journal_last_read_timestamp_seconds",
		"When this instance last read the change journal successfully (Unix time).", nil, nil)
	metricStorageErrors = prometheus.NewDesc("domaincerts_storage_errors_total",
		"Storage operations of the domain store that failed.", nil, nil)
)

// The windows of domaincerts_certificates_expiring.
var (
	expiryWindows     = [...]time.Duration{7 * 24 * time.Hour, 14 * 24 * time.Hour, 30 * 24 * time.Hour}
	expiryWindowNames = [...]string{"7d", "14d", "30d"}
)

// collector reads the metrics from the instance when Caddy's registry is
// scraped, so the hot path pays nothing for them.
type collector struct{ inst *instance }

// Describe is part of prometheus.Collector.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{metricDomains, metricExpiring, metricEarliestExpiry, metricDatesPending, metricHandshakes, metricProvisioningFailures, metricCacheEntries, metricCacheCapacity,
		metricCacheBytes, metricCacheMaxBytes, metricCacheHits, metricCacheMisses, metricCacheEvictions,
		metricHotEntries, metricHotCapacity, metricHotPromotions, metricDamaged, metricJournal, metricLastSync, metricStorageErrors} {
		ch <- d
	}
}

// Collect is part of prometheus.Collector.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.inst.source.Cache().Stats()
	failures := certsource.ProvisioningFailures()
	if failures == nil {
		failures = map[string]uint64{}
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	ss := c.inst.store.Stats()
	for state, n := range ss.States {
		ch <- prometheus.MustNewConstMetric(metricDomains, prometheus.GaugeValue, float64(n), domainstore.DomainStateNames[state])
	}
	up, managed := c.inst.store.ExpiryFigures(time.Now(), expiryWindows[:]...)
	for _, src := range []struct {
		name string
		f    domainstore.ExpiryFigures
	}{{"upload", up}, {"managed", managed}} {
		ch <- prometheus.MustNewConstMetric(metricExpiring, prometheus.GaugeValue, float64(src.f.Expired), src.name, "expired")
		for i, w := range expiryWindowNames {
			ch <- prometheus.MustNewConstMetric(metricExpiring, prometheus.GaugeValue, float64(src.f.Within[i]), src.name, w)
		}
		if !src.f.Earliest.IsZero() {
			ch <- prometheus.MustNewConstMetric(metricEarliestExpiry, prometheus.GaugeValue, float64(src.f.Earliest.Unix()), src.name)
		}
	}
	gauge(metricDatesPending, float64(c.inst.store.DatesPending()))
	hs := c.inst.source.Handshakes()
	for _, r := range []struct {
		result string
		n      uint64
	}{{"served", hs.Served.Load()}, {"fallback", hs.Fallback.Load()}, {"no_sni", hs.NoSNI.Load()},
		{"no_domain", hs.NoDomain.Load()}, {"no_certificate", hs.NoCertificate.Load()}} {
		ch <- prometheus.MustNewConstMetric(metricHandshakes, prometheus.CounterValue, float64(r.n), r.result)
	}
	for _, code := range []string{"DNS_ERROR", "INTERNAL_ERROR"} {
		// present from the start, so that rate() sees the first failure
		ch <- prometheus.MustNewConstMetric(metricProvisioningFailures, prometheus.CounterValue, float64(failures[code]), code)
		delete(failures, code)
	}
	for code, n := range failures {
		ch <- prometheus.MustNewConstMetric(metricProvisioningFailures, prometheus.CounterValue, float64(n), code)
	}
	var hot certsource.HotStats
	if h := c.inst.source.Hot(); h != nil {
		hot = h.Stats()
	}
	gauge(metricHotEntries, float64(hot.Entries))
	gauge(metricHotCapacity, float64(hot.Capacity))
	counter(metricHotPromotions, hot.Promotions)
	gauge(metricDamaged, float64(ss.Damaged))
	gauge(metricJournal, float64(ss.JournalPosition))
	if !ss.LastSync.IsZero() {
		gauge(metricLastSync, float64(ss.LastSync.UnixNano())/1e9)
	}
	counter(metricStorageErrors, ss.StorageErrors)
	gauge(metricCacheEntries, float64(st.Entries))
	gauge(metricCacheCapacity, float64(st.Capacity))
	gauge(metricCacheBytes, float64(st.Bytes))
	gauge(metricCacheMaxBytes, float64(st.MaxBytes))
	counter(metricCacheHits, st.Hits)
	counter(metricCacheMisses, st.Misses)
	counter(metricCacheEvictions, st.Evictions)
}

// registerMetrics adds the collector to reg, the registry of the config
// being loaded (each config load has its own).
func registerMetrics(reg *prometheus.Registry, inst *instance) error {
	if reg == nil {
		return nil
	}
	err := reg.Register(collector{inst: inst})
	if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) {
		return nil
	}
	return err
}

// Interface guards
var _ prometheus.Collector = collector{}
