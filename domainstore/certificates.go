package domainstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// CertificateInput is an upload.
type CertificateInput struct {
	CertificatePEM string
	PrivateKeyPEM  string
	Description    string
	Metadata       string
}

// CertificatePatch changes a certificate's free-text fields; nil leaves a
// field as it is.
type CertificatePatch struct {
	Description *string
	Metadata    *string
}

// CreateCertificate validates an uploaded bundle and stores it: the private
// key under its own ".key" storage key, then the record. Nothing is written
// when validation fails.
func (s *Store) CreateCertificate(ctx context.Context, in CertificateInput) (*Certificate, error) {
	if err := checkText("description", in.Description, MaxDescription); err != nil {
		return nil, err
	}
	if err := checkText("metadata", in.Metadata, MaxMetadata); err != nil {
		return nil, err
	}
	b, err := bundle.Parse(in.CertificatePEM, in.PrivateKeyPEM)
	if err != nil {
		return nil, err
	}
	if err := s.waitCertificates(); err != nil {
		return nil, err
	}
	t := now()
	c := &Certificate{
		ID:             newID(CertificatePrefix),
		CreatedAt:      t,
		UpdatedAt:      t,
		Description:    in.Description,
		Metadata:       in.Metadata,
		CertificatePEM: string(b.CertPEM),
		CertInfo:       bundle.Info(b.Chain[0]),
		PrivateKeyType: b.KeyType,
	}
	if err := s.writeCertificate(ctx, c, b.KeyPEM); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.certIDs = insertSorted(s.certIDs, c.ID)
	s.touchLocked("cert:" + c.ID)
	s.mu.Unlock()
	for _, l := range s.listenersSnapshot() {
		l.CertificateStored(c.ID, b)
	}
	s.log.Info("certificate uploaded", zap.String("cert_id", c.ID),
		zap.Strings("dns_names", c.SubjectAlternativeNames.DNSNames), zap.Time("not_after", c.NotAfter))
	return c, nil
}

// writeCertificate writes the key, then the record; if the record cannot
// be written the key is removed again.
func (s *Store) writeCertificate(ctx context.Context, c *Certificate, keyPEM []byte) error {
	if err := s.Storage().Store(ctx, CertificateKeyKey(c.ID), keyPEM); err != nil {
		return fmt.Errorf("writing private key of certificate %s: %w", c.ID, err)
	}
	if err := s.writeJSON(ctx, certRecordKey(c.ID), c); err != nil {
		_ = s.Storage().Delete(ctx, CertificateKeyKey(c.ID))
		return err
	}
	return nil
}

// GetCertificate returns a certificate record.
func (s *Store) GetCertificate(ctx context.Context, id string) (*Certificate, error) {
	var c Certificate
	if err := s.readCertificate(ctx, id, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// readCertificate decodes the record of certificate id into v, a
// *Certificate or a struct with some of its fields.
func (s *Store) readCertificate(ctx context.Context, id string, v any) error {
	if !validID(CertificatePrefix, id) {
		return notFound("certificate", id)
	}
	b, err := s.Storage().Load(ctx, certRecordKey(id))
	if errors.Is(err, fs.ErrNotExist) {
		return notFound("certificate", id)
	}
	if err != nil {
		return fmt.Errorf("loading certificate %s: %w", id, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decoding certificate %s: %w", id, err)
	}
	return nil
}

// ListCertificates returns up to limit certificates created before
// beforeID (or the newest, when it is empty), newest first, and whether
// more follow.
func (s *Store) ListCertificates(ctx context.Context, limit int, beforeID string) ([]*Certificate, bool, error) {
	if err := s.waitCertificates(); err != nil {
		return nil, false, err
	}
	s.mu.RLock()
	ids, more := page(s.certIDs, limit, beforeID)
	s.mu.RUnlock()
	out, err := loadAll(ctx, ids, s.GetCertificate)
	return out, more, err
}

// UpdateCertificate changes a certificate's description and metadata.
func (s *Store) UpdateCertificate(ctx context.Context, id string, p CertificatePatch) (*Certificate, error) {
	if p.Description != nil {
		if err := checkText("description", *p.Description, MaxDescription); err != nil {
			return nil, err
		}
	}
	if p.Metadata != nil {
		if err := checkText("metadata", *p.Metadata, MaxMetadata); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.GetCertificate(ctx, id)
	if err != nil {
		return nil, err
	}
	if p.Description != nil {
		c.Description = *p.Description
	}
	if p.Metadata != nil {
		c.Metadata = *p.Metadata
	}
	c.UpdatedAt = now()
	if err := s.writeJSON(ctx, certRecordKey(id), c); err != nil {
		return nil, err
	}
	return c, nil
}

// DeleteCertificate deletes a certificate that no domain uses.
func (s *Store) DeleteCertificate(ctx context.Context, id string) error {
	if err := s.waitCertificates(); err != nil {
		return err
	}
	s.mu.Lock()
	if _, ok := slices.BinarySearch(s.certIDs, id); !ok || !validID(CertificatePrefix, id) {
		s.mu.Unlock()
		return notFound("certificate", id)
	}
	if n := s.certUse[id]; n > 0 {
		// a managed domain's newest certificate counts as used too
		users := s.usersLocked(id)
		s.mu.Unlock()
		return dcerr.New(dcerr.CertInUse,
			"certificate %s is used by %d domain(s) (%v); attach another certificate to them or delete them first", id, n, users).
			WithDetail("domain_ids", users)
	}
	err := s.Storage().Delete(ctx, certRecordKey(id))
	if err == nil {
		err = s.Storage().Delete(ctx, CertificateKeyKey(id))
	}
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("deleting certificate %s: %w", id, err)
	}
	if i, ok := slices.BinarySearch(s.certIDs, id); ok {
		s.certIDs = slices.Delete(s.certIDs, i, i+1)
	}
	s.touchLocked("cert:" + id)
	s.mu.Unlock()
	for _, l := range s.listenersSnapshot() {
		l.CertificateDeleted(id)
	}
	s.log.Info("certificate deleted", zap.String("cert_id", id))
	return nil
}

// usersLocked returns up to 10 IDs of domains that use certificate id.
func (s *Store) usersLocked(id string) []string {
	var users []string
	for _, did := range s.domainIDs {
		if s.domains[did].CertificateID == id {
			users = append(users, did)
			if len(users) == 10 {
				break
			}
		}
	}
	return users
}

// LoadKeyPair reads a certificate and its private key from storage and
// returns them ready to serve. The handshake path calls it once per
// certificate, on first use, and caches the result.
func (s *Store) LoadKeyPair(ctx context.Context, id string) (*tls.Certificate, error) {
	// only the two fields serving needs: decoding the whole record (names,
	// dates, metadata) would cost a fifth of a cache miss
	var c struct {
		CertificatePEM string `json:"certificate_pem"`
		KeyStorageKey  string `json:"key_storage_key"`
	}
	if err := s.readCertificate(ctx, id, &c); err != nil {
		return nil, err
	}
	keyKey := CertificateKeyKey(id)
	if c.KeyStorageKey != "" {
		keyKey = c.KeyStorageKey
	}
	keyPEM, err := s.Storage().Load(ctx, keyKey)
	if err != nil {
		return nil, fmt.Errorf("loading private key of certificate %s: %w", id, err)
	}
	// the bundle passed validation when it was stored: decode it, and
	// check only that the key matches, not the whole chain again
	tc, err := bundle.ParseStored([]byte(c.CertificatePEM), keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing stored certificate %s: %w", id, err)
	}
	return &tc, nil
}

// CertificateExists reports whether a certificate with this ID exists.
func (s *Store) CertificateExists(id string) bool {
	if s.waitCertificates() != nil {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := slices.BinarySearch(s.certIDs, id)
	return ok
}

// insertSorted inserts id into the sorted ids, unless it is there. New IDs
// sort last (they start with their creation time), and start-up publishes
// in ID order, so appending is checked first.
func insertSorted(ids []string, id string) []string {
	if n := len(ids); n == 0 || ids[n-1] < id {
		return append(ids, id)
	}
	i, found := slices.BinarySearch(ids, id)
	if found {
		return ids
	}
	return slices.Insert(ids, i, id)
}

// AddManagedCertificate records a certificate that ACME issued for a
// managed domain. Its private key stays where CertMagic wrote it
// (keyStorageKey); the record holds only public material.
func (s *Store) AddManagedCertificate(ctx context.Context, domainID, certPEM, keyStorageKey string, issuedAt time.Time) (*Certificate, error) {
	chain, err := bundle.ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing issued certificate: %w", err)
	}
	t := now()
	c := &Certificate{
		ID:              newID(CertificatePrefix),
		CreatedAt:       t,
		UpdatedAt:       t,
		CertificatePEM:  certPEM,
		CertInfo:        bundle.Info(chain[0]),
		PrivateKeyType:  keyTypeOf(chain[0]),
		ManagedDomainID: domainID,
		KeyStorageKey:   keyStorageKey,
	}
	issuedAt = issuedAt.UTC().Truncate(time.Second)
	c.IssuedAt = &issuedAt
	if err := s.waitCertificates(); err != nil {
		return nil, err
	}
	if err := s.writeJSON(ctx, certRecordKey(c.ID), c); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.certIDs = insertSorted(s.certIDs, c.ID)
	s.touchLocked("cert:" + c.ID)
	s.mu.Unlock()
	return c, nil
}

// keyTypeOf names the key algorithm of a certificate's public key.
func keyTypeOf(c *x509.Certificate) string {
	switch c.PublicKeyAlgorithm {
	case x509.RSA:
		return "rsa"
	case x509.ECDSA:
		return "ecdsa"
	case x509.Ed25519:
		return "ed25519"
	}
	return "unknown"
}
