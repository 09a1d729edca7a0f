package domainstore

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// A store loaded by listing the records, or from a snapshot of an earlier
// release, knows its certificates but not their dates. datesLoop reads
// the records of those certificates in the background (only the dates),
// so that the expiry figures become whole without slowing the start, and
// asks for a snapshot that carries them, so that the next start has them.

// datesParallel is how many certificate records datesLoop reads at once.
const datesParallel = 8

// datesRetry is how long datesLoop waits before reading again the records
// it could not read.
var datesRetry = time.Minute

// datesRecord is the part of a certificate record that the dates fill
// reads.
type datesRecord struct {
	ID              string    `json:"id"`
	CertificatePEM  string    `json:"certificate_pem"`
	NotBefore       time.Time `json:"not_before"`
	NotAfter        time.Time `json:"not_after"`
	ManagedDomainID string    `json:"managed_domain_id"`
}

func (c *datesRecord) recordID() string  { return c.ID }
func (c *datesRecord) recordPEM() string { return c.CertificatePEM }

// wantDates asks datesLoop to look for certificates without dates.
func (s *Store) wantDates() {
	select {
	case s.datesWanted <- struct{}{}:
	default:
	}
}

// datesLoop fills in the dates of certificates until the store closes.
func (s *Store) datesLoop() {
	defer close(s.datesDone)
	var retry <-chan time.Time
	for {
		select {
		case <-s.closing:
			return
		case <-s.datesWanted:
		case <-retry:
		}
		retry = nil
		if failed := s.fillDates(); failed > 0 {
			retry = time.After(datesRetry)
		}
	}
}

// fillDates reads the dates of the certificates memory lacks them for and
// returns how many it could not read because the storage failed.
func (s *Store) fillDates() int {
	type want struct {
		id      string
		version uint64
	}
	s.mu.RLock()
	var wants []want
	for id, m := range s.certs {
		if _, bad := s.damaged[id]; !bad && !m.datesKnown() {
			wants = append(wants, want{id, m.version})
		}
	}
	s.mu.RUnlock()
	if len(wants) == 0 {
		return 0
	}
	start := time.Now()
	got := make([]certMeta, len(wants))
	var failed, unreadable int
	var mu sync.Mutex
	sem := make(chan struct{}, datesParallel)
	var wg sync.WaitGroup
	for i, w := range wants {
		select {
		case <-s.closing:
			wg.Wait()
			return 0
		case sem <- struct{}{}:
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
			defer cancel()
			var r datesRecord
			err := s.readCertificate(ctx, w.id, w.version, &r)
			if err != nil || r.NotAfter.IsZero() {
				// a storage that does not answer is asked again later; a
				// record that cannot be read is left alone (reading it
				// for the API marks it damaged)
				mu.Lock()
				unreadable++
				if dcerr.CodeOf(err) == dcerr.StorageUnavailable {
					failed++
				}
				mu.Unlock()
				return
			}
			got[i] = certMeta{version: w.version, notBefore: r.NotBefore.Unix(), notAfter: r.NotAfter.Unix(), managed: r.ManagedDomainID != ""}
		}()
	}
	wg.Wait()
	filled := 0
	var items [numSources][]expiryItem
	s.mu.Lock()
	for i, w := range wants {
		cur, ok := s.certs[w.id]
		_, bad := s.damaged[w.id]
		if !ok || bad || cur.datesKnown() || !got[i].datesKnown() {
			continue
		}
		m := got[i]
		m.version = cur.version
		s.certs[w.id] = m
		items[sourceOf(m)] = append(items[sourceOf(m)], expiryItem{m.notAfter, w.id})
		filled++
	}
	for src := range items {
		s.expiry[src].addMany(items[src])
	}
	s.mu.Unlock()
	if filled > 0 {
		s.snapWanted.Store(true)
	}
	s.log.Info("certificate dates read",
		zap.Int("certificates", filled), zap.Int("unreadable", unreadable), zap.Duration("took", time.Since(start)))
	return failed
}
