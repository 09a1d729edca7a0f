package domainstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
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
// key under its own ".key" storage key, then the record, through the
// journal. Nothing is written when validation fails.
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
	// the key goes first, outside the journal lock: it has a new name,
	// and a record must never point to a missing key
	kctx, cancel := context.WithTimeout(ctx, s.timeout())
	err = s.Storage().Store(kctx, CertificateKeyKey(c.ID), keyFile(b))
	cancel()
	if err != nil {
		s.stats.storageErrors.Add(1)
		return nil, storageFailed("writing the private key", err)
	}
	err = s.submit(ctx, func(tx *txn) error {
		tx.putCert(c, b)
		return nil
	})
	if err != nil {
		if !errors.Is(err, errOutcomeUnknown) {
			// the write never reached the journal: the key is an orphan
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout())
			_ = s.Storage().Delete(dctx, CertificateKeyKey(c.ID))
			cancel()
		}
		return nil, err
	}
	s.log.Info("certificate uploaded", zap.String("cert_id", c.ID),
		zap.Strings("dns_names", c.SubjectAlternativeNames.DNSNames), zap.Time("not_after", c.NotAfter))
	return c, nil
}

// GetCertificate returns a certificate record. A certificate this instance
// does not know yet is looked for in the journal first.
func (s *Store) GetCertificate(ctx context.Context, id string) (*Certificate, error) {
	c := new(Certificate)
	if err := s.readKnownCertificate(ctx, id, c); err != nil {
		return nil, err
	}
	return c, nil
}

// readKnownCertificate reads the record of a certificate that memory knows
// (after reading the journal, if it does not yet).
func (s *Store) readKnownCertificate(ctx context.Context, id string, c certRecord) error {
	if !validID(CertificatePrefix, id) {
		return notFound("certificate", id)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	for attempt := 0; ; attempt++ {
		s.mu.RLock()
		v, ok := s.certs[id]
		dm := s.damaged[id]
		s.mu.RUnlock()
		switch {
		case dm != nil:
			return recordDamaged("certificate", id, errors.New(dm.Reason))
		case ok:
			return s.readCertificate(ctx, id, v.version, c)
		case attempt == 0:
			if err := s.Sync(ctx); err != nil {
				return err
			}
		default:
			return notFound("certificate", id)
		}
	}
}

// ListCertificates returns up to limit certificates created before
// beforeID (or the newest, when it is empty), newest first, and whether
// more follow. A record that cannot be read is listed with Damage set.
func (s *Store) ListCertificates(ctx context.Context, limit int, beforeID string) ([]*Certificate, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	s.mu.RLock()
	ids, more := page(s.certIDs, limit, beforeID)
	vers := make([]uint64, len(ids))
	dms := make([]*Damaged, len(ids))
	for i, id := range ids {
		vers[i], dms[i] = s.certs[id].version, s.damaged[id]
	}
	s.mu.RUnlock()
	out := make([]*Certificate, 0, len(ids))
	for i, id := range ids {
		if dm := dms[i]; dm != nil {
			out = append(out, &Certificate{ID: id, Damage: &Damaged{ID: id, Reason: dm.Reason}})
			continue
		}
		c := new(Certificate)
		err := s.readCertificate(ctx, id, vers[i], c)
		if dcerr.CodeOf(err) == dcerr.RecordDamaged {
			c = &Certificate{ID: id, Damage: &Damaged{ID: id, Reason: damageReason(err)}}
		} else if err != nil {
			return nil, false, err
		}
		out = append(out, c)
	}
	return out, more, nil
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
	if !validID(CertificatePrefix, id) {
		return nil, notFound("certificate", id)
	}
	var out *Certificate
	err := s.submit(ctx, func(tx *txn) error {
		c, err := tx.certificate(id)
		if err != nil {
			return err
		}
		if p.Description != nil {
			c.Description = *p.Description
		}
		if p.Metadata != nil {
			c.Metadata = *p.Metadata
		}
		c.UpdatedAt = now()
		tx.putCert(c, nil)
		out = c
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteCertificate deletes a certificate that no domain uses, on any
// instance. A damaged certificate record can be deleted too.
func (s *Store) DeleteCertificate(ctx context.Context, id string) error {
	if !validID(CertificatePrefix, id) {
		return notFound("certificate", id)
	}
	err := s.submit(ctx, func(tx *txn) error {
		if !tx.certExists(id) {
			return notFound("certificate", id)
		}
		if n := tx.certUsers(id); n > 0 {
			users := s.usersOf(tx, id)
			return dcerr.New(dcerr.CertInUse,
				"certificate %s is used by %d domain(s) (%s); attach another certificate to them or delete them first", id, n, strings.Join(users, ", ")).
				WithDetail("domain_ids", strings.Join(users, ","))
		}
		deleteKey := true
		if c, err := tx.certificate(id); err == nil && c.KeyStorageKey != "" {
			deleteKey = false // a managed certificate's key is CertMagic's
		}
		tx.deleteCert(id, deleteKey)
		return nil
	})
	if err != nil {
		return err
	}
	s.log.Info("certificate deleted", zap.String("cert_id", id))
	return nil
}

// usersOf returns up to 10 IDs of domains that use certificate id, as the
// entry being built sees them.
func (s *Store) usersOf(tx *txn, id string) []string {
	var users []string
	for _, did := range s.domainIDs {
		if _, _, certID, ok := tx.domainState(did); ok && certID == id {
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
// certificate, on first use, and caches the result. An upload's key file
// holds its chain too (see keyFile), so serving it reads that one file;
// a managed certificate, or an upload whose key file lacks the chain,
// takes its chain from the record.
func (s *Store) LoadKeyPair(ctx context.Context, id string) (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	var keyPEM []byte
	if s.uploadKnown(id) {
		// any failure here (no such file, a storage that reports it
		// unwrapped, a file without the chain or with one that does not
		// decode) leaves the answer to the record, which also serves
		// managed certificates that memory does not know as managed yet
		if b, err := s.Storage().Load(ctx, CertificateKeyKey(id)); err == nil {
			if tc, err := parseKeyPair(id, b, b); err == nil {
				return tc, nil
			}
			keyPEM = b
		}
	}
	// only the fields serving needs: decoding the whole record (names,
	// dates, metadata) would cost a fifth of a cache miss
	var c keyPairRecord
	if err := s.readKnownCertificate(ctx, id, &c); err != nil {
		return nil, err
	}
	if keyPEM == nil || c.KeyStorageKey != "" {
		keyKey := CertificateKeyKey(id)
		if c.KeyStorageKey != "" {
			keyKey = c.KeyStorageKey
		}
		var err error
		if keyPEM, err = s.Storage().Load(ctx, keyKey); err != nil {
			return nil, fmt.Errorf("loading private key of certificate %s: %w", id, err)
		}
	}
	return parseKeyPair(id, []byte(c.CertificatePEM), keyPEM)
}

// parseKeyPair decodes a stored certificate chain and key. The bundle
// passed validation when it was stored: only that the key matches is
// checked again, not the whole chain.
func parseKeyPair(id string, certPEM, keyPEM []byte) (*tls.Certificate, error) {
	tc, err := bundle.ParseStored(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing stored certificate %s: %w", id, err)
	}
	return &tc, nil
}

// keyFile returns what an upload's key file holds: its private key, then
// its certificate chain as the record has it. The chain is public and
// never changes for a certificate ID; keeping it beside the key lets a
// handshake that finds the certificate uncached read one file instead of
// two (with sealed storage, the chain is sealed along with the key).
func keyFile(b *bundle.Bundle) []byte {
	return slices.Concat(b.KeyPEM, b.CertPEM) // KeyPEM ends in a newline
}

// uploadKnown reports whether memory knows certificate id as an upload
// whose record is not damaged, so that its key file can be read without
// the record.
func (s *Store) uploadKnown(id string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.certs[id]
	return ok && !m.managed && s.damaged[id] == nil
}

// keyPairRecord is the part of a certificate record that serving reads.
type keyPairRecord struct {
	ID             string `json:"id"`
	CertificatePEM string `json:"certificate_pem"`
	KeyStorageKey  string `json:"key_storage_key"`
}

func (c *keyPairRecord) recordID() string  { return c.ID }
func (c *keyPairRecord) recordPEM() string { return c.CertificatePEM }

// CertificateExists reports whether a certificate with this ID exists. It
// reads memory only.
func (s *Store) CertificateExists(id string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.certs[id]
	return ok
}

// managedRecord builds the record of a certificate that ACME issued for
// domain id, without an ID. Its private key stays where CertMagic wrote
// it; the record holds only public material.
func managedRecord(domainID string, issued *IssuedCertificate) (*Certificate, error) {
	chain, err := bundle.ParseCertificates(issued.CertificatePEM)
	if err != nil {
		return nil, fmt.Errorf("parsing issued certificate: %w", err)
	}
	t := now()
	at := issued.IssuedAt.UTC().Truncate(time.Second)
	return &Certificate{
		CreatedAt:       t,
		UpdatedAt:       t,
		CertificatePEM:  issued.CertificatePEM,
		CertInfo:        bundle.Info(chain[0]),
		PrivateKeyType:  bundle.KeyType(chain[0].PublicKey),
		ManagedDomainID: domainID,
		KeyStorageKey:   issued.KeyStorageKey,
		IssuedAt:        &at,
	}, nil
}
