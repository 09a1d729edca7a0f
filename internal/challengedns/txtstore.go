// Package challengedns solves ACME DNS-01 challenges for domains whose
// "_acme-challenge" name is delegated by CNAME to a zone the operator
// controls.
//
// The challenge TXT values live in Caddy's storage ([TXTStore]), so every
// Caddy instance that shares the storage answers alike; [Server] is the
// authoritative DNS server for that zone and [Solver] the acmez solver that
// writes the values. (Operators whose challenge zone is hosted at a DNS
// provider use CertMagic's DNS01Solver instead; the plugin wires it.)
//
// It has no Caddy imports.
package challengedns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// TXTStore keeps challenge TXT values in a certmagic.Storage, one key per
// name: "domaincerts/dns/txt/<fqdn without trailing dot>", holding JSON
// {"values": [...], "expires": "<RFC 3339>"}. Several values may coexist
// under one name (the authorizations for "*.customer.com" and
// "customer.com" share one challenge name). A record expires one hour after
// its last Add, so a value whose CleanUp never ran stops being served.
//
// Add and Remove take a storage lock per name, so instances sharing the
// storage do not lose each other's values. TXTStore is safe for concurrent
// use; it must not be copied after first use.
type TXTStore struct {
	// Storage returns the storage to use. It is a func so that the caller
	// can swap the storage on a config reload. Required.
	Storage func() certmagic.Storage

	mu  sync.Mutex       // serializes Add and Remove within this process
	now func() time.Time // for tests; nil means time.Now
}

const (
	txtPrefix = "domaincerts/dns/txt"
	txtMaxAge = time.Hour
)

// txtRecord is the stored form of one name's values.
type txtRecord struct {
	Values  []string `json:"values"`
	Expires string   `json:"expires"` // RFC 3339
}

// Add adds value to the TXT values of fqdn and sets the record to expire in
// one hour. Adding a value that is already there only renews the record.
func (s *TXTStore) Add(ctx context.Context, fqdn, value string) error {
	if value == "" {
		return errors.New("adding TXT value: empty value")
	}
	return s.update(ctx, fqdn, func(rec *txtRecord, expired bool) bool {
		if expired {
			rec.Values = nil
		}
		if !slices.Contains(rec.Values, value) {
			rec.Values = append(rec.Values, value)
		}
		rec.Expires = s.clock().Add(txtMaxAge).UTC().Format(time.RFC3339)
		return true
	})
}

// Remove removes value from the TXT values of fqdn, and deletes the record
// when no value is left. Removing a value that is not there is not an
// error.
func (s *TXTStore) Remove(ctx context.Context, fqdn, value string) error {
	return s.update(ctx, fqdn, func(rec *txtRecord, expired bool) bool {
		if expired {
			rec.Values = nil
		}
		rec.Values = slices.DeleteFunc(rec.Values, func(v string) bool { return v == value })
		return len(rec.Values) > 0
	})
}

// Lookup returns the TXT values of fqdn. A name without a record, or whose
// record has expired, has no values and no error.
func (s *TXTStore) Lookup(ctx context.Context, fqdn string) ([]string, error) {
	values, _, err := s.lookup(ctx, fqdn)
	return values, err
}

// lookup is Lookup that also reports whether a record exists for fqdn,
// expired or not: the server answers NODATA rather than NXDOMAIN for it.
func (s *TXTStore) lookup(ctx context.Context, fqdn string) (values []string, exists bool, err error) {
	key, err := txtKey(fqdn)
	if err != nil {
		return nil, false, err
	}
	st, err := s.storage()
	if err != nil {
		return nil, false, err
	}
	rec, found, err := load(ctx, st, key)
	if err != nil || !found {
		return nil, false, err
	}
	if s.expired(rec) {
		return nil, true, nil
	}
	return rec.Values, true, nil
}

// below reports whether some record exists strictly below fqdn, which makes
// fqdn an empty non-terminal: it exists, without records of its own.
func (s *TXTStore) below(ctx context.Context, fqdn string) (bool, error) {
	st, err := s.storage()
	if err != nil {
		return false, err
	}
	keys, err := st.List(ctx, txtPrefix, false)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("listing TXT records: %w", err)
	}
	suffix := "." + normalizeName(fqdn)
	for _, k := range keys {
		if strings.HasSuffix(k, suffix) {
			return true, nil
		}
	}
	return false, nil
}

// update runs change on the record of fqdn under a storage lock and stores
// the result, or deletes the record when change returns false.
func (s *TXTStore) update(ctx context.Context, fqdn string, change func(rec *txtRecord, expired bool) (keep bool)) error {
	key, err := txtKey(fqdn)
	if err != nil {
		return err
	}
	st, err := s.storage()
	if err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	lockName := "domaincerts_dns_txt_" + normalizeName(fqdn)
	if err := st.Lock(ctx, lockName); err != nil {
		return fmt.Errorf("locking TXT record %s: %w", normalizeName(fqdn), err)
	}
	defer func() {
		// Unlock even when ctx was canceled meanwhile.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = st.Unlock(uctx, lockName)
	}()

	rec, found, err := load(ctx, st, key)
	if err != nil {
		return err
	}
	if !change(&rec, found && s.expired(rec)) {
		if !found {
			return nil
		}
		if err := st.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("deleting TXT record %s: %w", normalizeName(fqdn), err)
		}
		return nil
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encoding TXT record %s: %w", normalizeName(fqdn), err)
	}
	if err := st.Store(ctx, key, data); err != nil {
		return fmt.Errorf("storing TXT record %s: %w", normalizeName(fqdn), err)
	}
	return nil
}

// load reads and decodes the record at key; found is false when there is
// none.
func load(ctx context.Context, st certmagic.Storage, key string) (rec txtRecord, found bool, err error) {
	data, err := st.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return txtRecord{}, false, nil
	}
	if err != nil {
		return txtRecord{}, false, fmt.Errorf("loading TXT record %s: %w", key, err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return txtRecord{}, false, fmt.Errorf("decoding TXT record %s: %w", key, err)
	}
	return rec, true, nil
}

// expired reports whether rec is past its expiry; a record whose expiry
// cannot be read counts as expired.
func (s *TXTStore) expired(rec txtRecord) bool {
	t, err := time.Parse(time.RFC3339, rec.Expires)
	return err != nil || !s.clock().Before(t)
}

func (s *TXTStore) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

func (s *TXTStore) storage() (certmagic.Storage, error) {
	if s == nil || s.Storage == nil {
		return nil, errors.New("no storage configured for challenge TXT records")
	}
	st := s.Storage()
	if st == nil {
		return nil, errors.New("no storage configured for challenge TXT records")
	}
	return st, nil
}

// txtKey returns the storage key of fqdn, or an error when fqdn is not a
// plain DNS name (which also keeps it from escaping the key prefix).
func txtKey(fqdn string) (string, error) {
	name := normalizeName(fqdn)
	if !validName(name) {
		return "", fmt.Errorf("invalid DNS name %q for a TXT record", fqdn)
	}
	return txtPrefix + "/" + name, nil
}

// normalizeName lowercases name and removes one trailing dot.
func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// validName reports whether name (normalized, without trailing dot) has at
// most 253 characters in labels of 1–63 letters, digits, '-', '_' or '*'.
func validName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '*') {
				return false
			}
		}
	}
	return true
}
