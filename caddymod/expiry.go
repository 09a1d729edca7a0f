package caddymod

import (
	"context"
	"math"
	"time"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
)

// Certificates that end within expiry_warning are announced with
// certificate_expiring (certificate_expired once they have ended) at most
// once a day each, for all the instances on the storage: uploads, which
// are the customer's to renew, and managed certificates whose renewal is
// overdue. Each instance looks every expiry_check_interval; the store's
// claims keep the fleet to one announcement per certificate and UTC day.

// Defaults of the expiry options.
const (
	DefaultExpiryWarning       = 30 * 24 * time.Hour
	DefaultExpiryCheckInterval = time.Hour
)

// Bounds of the expiry checks: the first comes at most firstExpiryCheck
// after start (so that instances restarted more often than
// expiry_check_interval still look), and expiry_check_interval is at
// least minExpiryCheckInterval.
const (
	firstExpiryCheck       = time.Minute
	minExpiryCheckInterval = time.Second
)

// expiryWatch announces the certificates that end soon, until stopped.
type expiryWatch struct {
	store    *domainstore.Store
	warning  time.Duration
	interval time.Duration
	ratio    float64 // the renewal window ratio of managed certificates
	log      *zap.Logger
	ctx      context.Context // done when the app stops
	done     chan struct{}
}

// uploadsToAnnounce carries the IDs of expiring uploads from the API to
// the running app's expiryWatch, which announces them at once; when it is
// full, or no app runs, the next check announces them.
var uploadsToAnnounce = make(chan string, 1024)

func (w *expiryWatch) run() {
	defer close(w.done)
	t := time.NewTimer(min(w.interval, firstExpiryCheck))
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case id := <-uploadsToAnnounce:
			w.announce(time.Now(), w.gather(id), false) // the upload logged its own WARN line
		case <-t.C:
			w.check(time.Now())
			t.Reset(w.interval)
		}
	}
}

// Uploads of expiring certificates are announced in batches: the first
// waits up to announceDelay for others, up to maxAnnounceBatch, so that a
// bulk import claims and looks up its certificates a batch at a time.
const (
	announceDelay    = 500 * time.Millisecond
	maxAnnounceBatch = 4096
)

// gather returns first and the uploads queued behind it within
// announceDelay.
func (w *expiryWatch) gather(first string) []string {
	ids := []string{first}
	t := time.NewTimer(announceDelay)
	defer t.Stop()
	for len(ids) < maxAnnounceBatch {
		select {
		case id := <-uploadsToAnnounce:
			ids = append(ids, id)
		case <-t.C:
			return ids
		case <-w.ctx.Done():
			return ids
		}
	}
	return ids
}

// check announces what is due at now and was not announced today.
func (w *expiryWatch) check(now time.Time) {
	var ids []string
	for _, c := range w.store.ExpiringCertificates(now.Add(w.warning)) {
		if !c.Managed || renewalOverdue(c.NotBefore, c.NotAfter, w.ratio, now) {
			ids = append(ids, c.ID)
		}
	}
	w.announce(now, ids, true)
}

// announce claims those of ids that the fleet has not announced today,
// and sends their events; with summary, it also logs one WARN line about
// them.
func (w *expiryWatch) announce(now time.Time, ids []string, summary bool) {
	if len(ids) == 0 {
		return
	}
	ctx := w.ctx
	claimed, err := w.store.ClaimAnnouncements(ctx, now, ids)
	if err != nil {
		w.log.Warn("announcing expiring certificates; trying again at the next check",
			zap.Int("certificates", len(ids)), zap.Error(err))
		return
	}
	if len(claimed) == 0 {
		return
	}
	users := w.store.DomainsUsing(claimed)
	var earliest domainstore.ExpiringCertificate
	expiring, expired := 0, 0
	for _, c := range w.store.CertificateDates(claimed) { // deleted ones are left out
		if earliest.ID == "" {
			earliest = c
		}
		name, data := expiryEvent(c.ID, users[c.ID], c.NotAfter, now)
		if name == "certificate_expired" {
			expired++
		} else {
			expiring++
		}
		// claimed is promised: once stopping, the rest go without waiting
		// (a full queue drops them, with a WARN line)
		if !emitEventWait(w.ctx.Done(), name, data) {
			emitEvent(name, data)
		}
	}
	if earliest.ID == "" || !summary {
		return // deleted meanwhile, or logged already
	}
	w.log.Warn("certificates end soon; the customers should upload renewed ones (managed ones: see their provisioning status)",
		zap.Int("expiring", expiring), zap.Int("expired", expired),
		zap.Time("earliest_not_after", earliest.NotAfter), zap.String("earliest_certificate_id", earliest.ID))
}

// renewalOverdue reports whether a managed certificate valid from nb to na
// should have been renewed by now: a day (or a quarter of the renewal
// window, if shorter) past the point where CertMagic renews it.
func renewalOverdue(nb, na time.Time, ratio float64, now time.Time) bool {
	if !now.Before(na) {
		return true
	}
	window := time.Duration(float64(na.Sub(nb)) * ratio)
	grace := min(24*time.Hour, window/4)
	return now.After(na.Add(-window).Add(grace))
}

// expiryEvent returns the event that announces a certificate ending at
// notAfter, and its data.
func expiryEvent(id string, domainIDs []string, notAfter, now time.Time) (string, map[string]any) {
	if domainIDs == nil {
		domainIDs = []string{}
	}
	name := "certificate_expiring"
	if !now.Before(notAfter) {
		name = "certificate_expired"
	}
	return name, map[string]any{
		"certificate_id": id, "domain_ids": domainIDs, "not_after": eventTime(notAfter), "days_left": daysLeft(notAfter, now),
	}
}

// daysLeft counts the whole days until notAfter, rounded down: 0 on its
// last day, -1 on the day after it ended.
func daysLeft(notAfter, now time.Time) int {
	return int(math.Floor(notAfter.Sub(now).Hours() / 24))
}

// warnExpiring logs an upload that has ended, or ends within
// expiry_warning, once at WARN, and hands it to the running app's
// expiryWatch to announce (unless the fleet did so today), without holding
// up the API call. Customers rotate by upload, so it is accepted.
func (h *handler) warnExpiring(c *domainstore.Certificate) {
	now := time.Now()
	left := c.NotAfter.Sub(now)
	if left > h.expiryWarning {
		return
	}
	msg := "uploaded certificate expires soon; the customer should upload a renewed one"
	if left <= 0 {
		msg = "uploaded certificate has already expired; the customer should upload a valid one"
	}
	h.log.Warn(msg, zap.String("certificate_id", c.ID), zap.String("subject_common_name", c.SubjectCommonName),
		zap.Time("not_after", c.NotAfter), zap.Int("days_left", daysLeft(c.NotAfter, now)))
	select {
	case uploadsToAnnounce <- c.ID:
	default: // the next check announces it
	}
}
