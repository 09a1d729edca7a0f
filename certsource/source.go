// Package certsource decides which certificate a TLS handshake gets: it
// looks the server name up in the domain store's in-memory index and
// serves the domain's uploaded certificate from a bounded cache (parsing
// and unsealing it on first use), or its managed certificate.
//
// It fails closed: a server name without a domain, or a domain without a
// usable certificate, gets an error (or the operator's fallback
// certificate), never a certificate request to a CA.
package certsource

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
)

// Errors returned for handshakes that get no certificate. They are fixed
// values so that the failing path allocates nothing for them.
var (
	ErrNoServerName  = errors.New("domaincerts: client sent no server name")
	ErrNoDomain      = errors.New("domaincerts: no domain matches the server name")
	ErrNoCertificate = errors.New("domaincerts: the domain has no usable certificate")
)

// Managed serves certificates of managed (ACME) domains.
type Managed interface {
	// ManagedCertificate returns the certificate for a managed domain's
	// entry, or nil if none is ready. It must read memory only.
	ManagedCertificate(e *domainstore.Entry, serverName string) *tls.Certificate
}

// Source answers handshakes from a Store. It is safe for concurrent use.
type Source struct {
	store *domainstore.Store
	cache *Cache
	log   *zap.Logger

	managed   atomic.Pointer[managedRef] // read on every handshake of a managed domain
	hot       atomic.Pointer[Hot]        // promoted certificates, if any
	deletions atomic.Uint64              // certificates deleted so far

	_          [64]byte // the counters do not share a cache line with the fields above
	handshakes HandshakeCounts

	mu       sync.Mutex
	loading  map[string]*load // certificate ID -> load in flight
	fallback string           // certificate ID served when nothing matches

	fallbackLogged atomic.Int64 // Unix time of the last failure to load the fallback logged
}

type load struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// New returns a Source over store with a cache of the given capacity, and
// subscribes it to the store's changes.
func New(store *domainstore.Store, capacity int, log *zap.Logger) *Source {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Source{store: store, cache: NewCache(capacity), log: log, loading: make(map[string]*load)}
	s.cache.onDrop = s.cacheDropped
	store.Subscribe(s)
	return s
}

// HandshakeCounts counts the handshakes a Source answered, by result. Each
// counter sits on its own cache line, so that counting costs one atomic
// add on the handshake path and no contention between results.
type HandshakeCounts struct {
	Served, Fallback, NoSNI, NoDomain, NoCertificate paddedCounter
}

// paddedCounter is an atomic counter alone on a 64-byte cache line.
type paddedCounter struct {
	atomic.Uint64
	_ [56]byte
}

// Handshakes returns the handshake counters.
func (s *Source) Handshakes() *HandshakeCounts { return &s.handshakes }

// Cache returns the source's certificate cache.
func (s *Source) Cache() *Cache { return s.cache }

// managedRef boxes a Managed for atomic.Pointer.
type managedRef struct{ Managed }

// SetManaged sets where certificates of managed domains come from.
func (s *Source) SetManaged(m Managed) {
	s.managed.Store(&managedRef{m})
}

// SetFallback sets the certificate served when a handshake matches no
// usable domain; empty means such handshakes fail.
func (s *Source) SetFallback(certificateID string) {
	s.mu.Lock()
	s.fallback = certificateID
	s.mu.Unlock()
}

// GetCertificate returns the certificate for a handshake. It touches memory
// only when the certificate is cached; on first use it loads the
// certificate from storage once, however many handshakes ask at the same
// time.
func (s *Source) GetCertificate(ctx context.Context, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := hello.ServerName
	if name == "" {
		return s.fallbackOr(ctx, ErrNoServerName, &s.handshakes.NoSNI)
	}
	hot := s.hot.Load()
	var gen uint64
	if hot != nil {
		gen = hot.gen.Load() // before the index read that a promotion relies on
	}
	e, ok := s.store.Lookup(name)
	if !ok {
		return s.fallbackOr(ctx, ErrNoDomain, &s.handshakes.NoDomain)
	}
	if e.Managed {
		if m := s.managed.Load(); m != nil && m.Managed != nil {
			if c := m.ManagedCertificate(e, name); c != nil {
				s.handshakes.Served.Add(1)
				return c, nil
			}
		}
	}
	if e.CertificateID == "" {
		return s.fallbackOr(ctx, ErrNoCertificate, &s.handshakes.NoCertificate)
	}
	c, loaded, err := s.certificate(ctx, e.CertificateID)
	if err != nil {
		if ce := s.log.Check(zapcore.WarnLevel, "loading certificate for handshake"); ce != nil {
			ce.Write(zap.String("server_name", name), zap.String("domain_id", e.DomainID),
				zap.String("cert_id", e.CertificateID), zap.Error(err))
		}
		return s.fallbackOr(ctx, ErrNoCertificate, &s.handshakes.NoCertificate)
	}
	s.handshakes.Served.Add(1)
	if hot != nil && !loaded {
		// promoted from its second handshake on: most certificates
		// read on a miss under long-tailed traffic are served once
		// or twice before they leave the cache, and a promotion costs
		// more than the manager's answer saves on a few handshakes
		hot.promote(gen, name, e, c)
	}
	return c, nil
}

// unixNow is the clock of the once-a-minute log lines (a variable for tests).
var unixNow = func() int64 { return time.Now().Unix() }

// fallbackOr serves the fallback certificate, or fails with err and
// counts the handshake in failed.
func (s *Source) fallbackOr(ctx context.Context, err error, failed *paddedCounter) (*tls.Certificate, error) {
	s.mu.Lock()
	id := s.fallback
	s.mu.Unlock()
	if id == "" {
		failed.Add(1)
		return nil, err
	}
	c, _, ferr := s.certificate(ctx, id)
	if ferr != nil {
		failed.Add(1)
		// said here, at most once a minute: the handshake's own error may
		// be one that no log line reports (a name without a domain)
		now := unixNow()
		if last := s.fallbackLogged.Load(); now-last >= 60 && s.fallbackLogged.CompareAndSwap(last, now) {
			s.log.Error("loading the fallback certificate failed; handshakes it would answer fail",
				zap.String("cert_id", id), zap.Error(ferr))
		}
		return nil, fmt.Errorf("%w (fallback certificate %s: %v)", err, id, ferr)
	}
	s.handshakes.Fallback.Add(1)
	return c, nil
}

// certificate returns the cached certificate id, loading it if needed, and
// whether this call read it from storage (or waited for a load that did).
func (s *Source) certificate(ctx context.Context, id string) (c *tls.Certificate, loaded bool, err error) {
	if c := s.cache.Get(id); c != nil {
		return c, false, nil
	}
	s.mu.Lock()
	l, inFlight := s.loading[id]
	if !inFlight {
		// a load may have finished between the Get above and the lock: it
		// puts the certificate in the cache before it leaves s.loading
		if c := s.cache.peek(id); c != nil {
			s.mu.Unlock()
			return c, false, nil
		}
		l = &load{done: make(chan struct{})}
		s.loading[id] = l
	}
	s.mu.Unlock()
	if inFlight {
		select {
		case <-l.done:
			return l.cert, true, l.err
		case <-ctx.Done():
			return nil, true, ctx.Err()
		}
	}
	// the leader loads without the handshake's deadline so that waiters
	// are not failed by one impatient client
	deletions := s.deletions.Load()
	l.cert, l.err = s.store.LoadKeyPair(context.WithoutCancel(ctx), id)
	// a certificate deleted while it loaded must not enter the cache; ask
	// the store only in that rare case (the answer may wait for the
	// certificate listing at start-up)
	if l.err == nil && (s.deletions.Load() == deletions || s.store.CertificateExists(id)) {
		s.cache.Put(id, l.cert)
	}
	s.mu.Lock()
	delete(s.loading, id)
	s.mu.Unlock()
	close(l.done)
	return l.cert, true, l.err
}

// CertificateStored caches a freshly uploaded certificate, so that its
// first handshake needs no storage read.
func (s *Source) CertificateStored(id string, b *bundle.Bundle) {
	tc := b.TLSCertificate()
	s.cache.Put(id, &tc)
}

// CertificateDeleted drops a deleted certificate from the cache.
func (s *Source) CertificateDeleted(id string) {
	s.deletions.Add(1)
	if h := s.hot.Load(); h != nil {
		h.changed([]string{id}, nil)
	}
	s.cache.Remove(id)
}

// DomainChanged removes the promoted certificates the change may have made
// stale; the index already reflects it.
func (s *Source) DomainChanged(old, new *domainstore.Domain) {
	h := s.hot.Load()
	if h == nil {
		return
	}
	var ids, names []string
	for _, d := range []*domainstore.Domain{old, new} {
		if d != nil {
			names = append(names, d.Domain)
			if d.CertificateID != "" {
				ids = append(ids, d.CertificateID)
			}
		}
	}
	h.changed(ids, names)
}

// cacheDropped removes promoted certificates that the cache dropped.
func (s *Source) cacheDropped(ids []string) {
	if h := s.hot.Load(); h != nil {
		h.dropped(ids)
	}
}

// Hot returns the promoted set attached with NewHot, or nil.
func (s *Source) Hot() *Hot { return s.hot.Load() }

// Interface guards
var _ domainstore.Listener = (*Source)(nil)
