package domainstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
	"github.com/domaincerts/caddy-domaincerts/internal/sniindex"
)

// Storage key prefixes.
const (
	prefix          = "domaincerts"
	certificatesDir = prefix + "/certificates"
	domainsDir      = prefix + "/domains"
)

func certRecordKey(id string) string { return certificatesDir + "/" + id + ".json" }

// CertificateKeyKey returns the storage key of a certificate's private key.
func CertificateKeyKey(id string) string { return certificatesDir + "/" + id + ".key" }

func domainKey(id string) string { return domainsDir + "/" + id + ".json" }

// Options configure a Store.
type Options struct {
	// Logger receives the store's logs. Default: a no-op logger.
	Logger *zap.Logger

	// DefaultAuthority is the authority of the default management policy.
	// Default: "letsencrypt".
	DefaultAuthority string

	// Authorities lists the authority names a policy may use. Default:
	// only DefaultAuthority.
	Authorities []string

	// Decorate, if set, is called on every new domain record before it is
	// written, and on a domain whose policy changes, to fill in derived
	// fields such as CNAME targets and the initial status.
	Decorate func(*Domain)
}

// Listener is told about changes after they are written to storage.
// Calls are made synchronously, in write order, while no lock of the store
// is held; they must be fast.
type Listener interface {
	// CertificateStored is called after an upload, with the parsed bundle.
	CertificateStored(id string, b *bundle.Bundle)
	// CertificateDeleted is called after a certificate was deleted.
	CertificateDeleted(id string)
	// DomainChanged is called after a domain was created (old is nil),
	// updated, or deleted (new is nil). The records are copies.
	DomainChanged(old, new *Domain)
}

// Store is the service behind every door: it validates, persists and
// indexes Domains and Certificates. It is safe for concurrent use.
type Store struct {
	storage atomic.Pointer[storageRef]
	opts    Options
	log     *zap.Logger
	index   *sniindex.Index[*Entry]

	// mu guards the fields below and serializes domain writes, so that
	// checks (uniqueness, certificate in use) and writes cannot interleave.
	mu        sync.RWMutex
	domains   map[string]*Domain // by ID
	names     map[string]string  // normalized domain name -> domain ID
	domainIDs []string           // sorted, oldest first
	certIDs   []string           // sorted, oldest first
	certUse   map[string]int     // certificate ID -> domains that use it
	listeners []Listener
}

// Open reads the records in storage and returns a Store with its index
// built. Only domain records are read; certificates are listed, not loaded.
func Open(ctx context.Context, storage certmagic.Storage, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.DefaultAuthority == "" {
		opts.DefaultAuthority = "letsencrypt"
	}
	if len(opts.Authorities) == 0 {
		opts.Authorities = []string{opts.DefaultAuthority}
	}
	s := &Store{
		opts:    opts,
		log:     opts.Logger,
		index:   sniindex.New[*Entry](),
		domains: make(map[string]*Domain),
		names:   make(map[string]string),
		certUse: make(map[string]int),
	}
	s.SetStorage(storage)
	start := time.Now()
	certKeys, err := listKeys(ctx, storage, certificatesDir)
	if err != nil {
		return nil, fmt.Errorf("listing certificates: %w", err)
	}
	for _, k := range certKeys {
		if id, ok := idFromKey(k, CertificatePrefix); ok {
			s.certIDs = append(s.certIDs, id)
		}
	}
	slices.Sort(s.certIDs)

	domainKeys, err := listKeys(ctx, storage, domainsDir)
	if err != nil {
		return nil, fmt.Errorf("listing domains: %w", err)
	}
	for _, k := range domainKeys {
		id, ok := idFromKey(k, DomainPrefix)
		if !ok {
			continue
		}
		d, err := s.loadDomain(ctx, id)
		if err != nil {
			return nil, err
		}
		if other, dup := s.names[d.Domain]; dup {
			// two instances raced on the same name; keep the older record
			s.log.Warn("duplicate domain records; keeping the older",
				zap.String("domain", d.Domain), zap.String("domain_id", d.ID), zap.String("kept_domain_id", other))
			continue
		}
		s.putDomainLocked(d)
	}
	slices.Sort(s.domainIDs)
	s.log.Info("domain store loaded",
		zap.Int("domains", len(s.domainIDs)),
		zap.Int("certificates", len(s.certIDs)),
		zap.Duration("took", time.Since(start)))
	return s, nil
}

// storageRef boxes a Storage for atomic.Pointer.
type storageRef struct{ certmagic.Storage }

// Unsubscribe removes a listener added with Subscribe.
func (s *Store) Unsubscribe(l Listener) {
	s.mu.Lock()
	s.listeners = slices.DeleteFunc(s.listeners, func(x Listener) bool { return x == l })
	s.mu.Unlock()
}

// SetPolicyOptions changes the policy options of a loaded store, for a
// config reload: the default authority, the authorities a policy may
// name, and the decorator of new and re-managed domains.
func (s *Store) SetPolicyOptions(defaultAuthority string, authorities []string, decorate func(*Domain)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if defaultAuthority != "" {
		s.opts.DefaultAuthority = defaultAuthority
	}
	s.opts.Authorities = slices.Clone(authorities)
	if len(s.opts.Authorities) == 0 {
		s.opts.Authorities = []string{s.opts.DefaultAuthority}
	}
	s.opts.Decorate = decorate
}

// Storage returns the storage the store writes to.
func (s *Store) Storage() certmagic.Storage { return s.storage.Load().Storage }

// SetStorage replaces the storage handle, for a config reload that keeps
// the same storage location but, for example, rotates a sealing key. The
// records are not re-read.
func (s *Store) SetStorage(storage certmagic.Storage) {
	s.storage.Store(&storageRef{storage})
}

// Subscribe adds a listener for changes.
func (s *Store) Subscribe(l Listener) {
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
}

// Lookup returns the index entry for a handshake's server name: the exact
// domain, else the wildcard one label up. It reads memory only and does not
// allocate for lowercase names.
func (s *Store) Lookup(serverName string) (*Entry, bool) {
	return s.index.Lookup(serverName)
}

// Len returns the number of domains and certificates.
func (s *Store) Len() (domains, certificates int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.domainIDs), len(s.certIDs)
}

func (s *Store) listenersSnapshot() []Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.listeners)
}

// putDomainLocked publishes d (a record the store owns) in the maps and
// the index. s.mu must be held, or s not yet shared.
func (s *Store) putDomainLocked(d *Domain) {
	old, had := s.domains[d.ID]
	if had && old.CertificateID != "" {
		s.certUse[old.CertificateID]--
		if s.certUse[old.CertificateID] <= 0 {
			delete(s.certUse, old.CertificateID)
		}
	}
	if !had {
		s.domainIDs = append(s.domainIDs, d.ID) // IDs grow; callers sort after bulk loads
	}
	s.domains[d.ID] = d
	s.names[d.Domain] = d.ID
	if d.CertificateID != "" {
		s.certUse[d.CertificateID]++
	}
	s.index.Set(d.Domain, entryFor(d))
}

// removeDomainLocked drops d from the maps and the index. s.mu must be held.
func (s *Store) removeDomainLocked(d *Domain) {
	delete(s.domains, d.ID)
	delete(s.names, d.Domain)
	if d.CertificateID != "" {
		s.certUse[d.CertificateID]--
		if s.certUse[d.CertificateID] <= 0 {
			delete(s.certUse, d.CertificateID)
		}
	}
	if i, ok := slices.BinarySearch(s.domainIDs, d.ID); ok {
		s.domainIDs = slices.Delete(s.domainIDs, i, i+1)
	}
	s.index.Delete(d.Domain)
}

func (s *Store) loadDomain(ctx context.Context, id string) (*Domain, error) {
	b, err := s.Storage().Load(ctx, domainKey(id))
	if err != nil {
		return nil, fmt.Errorf("loading domain %s: %w", id, err)
	}
	var d Domain
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decoding domain %s: %w", id, err)
	}
	if d.ID != id {
		return nil, fmt.Errorf("decoding domain %s: record holds id %q", id, d.ID)
	}
	return &d, nil
}

func (s *Store) writeJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	if err := s.Storage().Store(ctx, key, b); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}

// listKeys lists the keys directly below dir; a missing dir is empty.
func listKeys(ctx context.Context, storage certmagic.Storage, dir string) ([]string, error) {
	keys, err := storage.List(ctx, dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return keys, err
}

// idFromKey returns the record ID of a ".json" record key.
func idFromKey(key, idPrefix string) (string, bool) {
	base := path.Base(key)
	id, ok := strings.CutSuffix(base, ".json")
	if !ok || !validID(idPrefix, id) {
		return "", false
	}
	return id, true
}

// page returns up to limit IDs from sorted ids, newest first, that sort
// before beforeID (all when beforeID is empty), and whether more follow.
func page(ids []string, limit int, beforeID string) ([]string, bool) {
	end := len(ids)
	if beforeID != "" {
		end, _ = slices.BinarySearch(ids, beforeID)
	}
	out := make([]string, 0, min(limit, end))
	for i := end - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, ids[i])
	}
	more := end-len(out) > 0
	return out, more
}

func checkText(field, v string, limit int) error {
	if len(v) > limit {
		return dcerr.New(dcerr.FieldTooLarge, "%s is %d bytes; the limit is %d bytes", field, len(v), limit).
			WithDetail("field", field)
	}
	return nil
}

func notFound(kind, id string) error {
	return dcerr.New(dcerr.NotFound, "%s %q not found", kind, id)
}

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }
