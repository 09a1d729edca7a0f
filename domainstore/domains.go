package domainstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// Private key types of a management policy.
const (
	KeyTypeECDSA = "ecdsa"
	KeyTypeRSA   = "rsa"
)

// DomainInput creates a domain. At most one of CertificateID and Policy may
// be set; with neither, the domain gets the default policy.
type DomainInput struct {
	Domain        string
	Description   string
	Metadata      string
	CertificateID string
	Policy        *Policy
}

// DomainPatch updates a domain; nil fields stay as they are. Setting
// CertificateID attaches an uploaded certificate and ends management;
// setting Policy starts management and detaches any uploaded certificate.
type DomainPatch struct {
	Domain        *string
	Description   *string
	Metadata      *string
	CertificateID *string
	Policy        *Policy
}

// CreateDomain validates and stores a new domain and publishes it in the
// index, so that the next handshake for its name sees it.
func (s *Store) CreateDomain(ctx context.Context, in DomainInput) (*Domain, error) {
	name, err := NormalizeDomain(in.Domain)
	if err != nil {
		return nil, err
	}
	if err := checkText("description", in.Description, MaxDescription); err != nil {
		return nil, err
	}
	if err := checkText("metadata", in.Metadata, MaxMetadata); err != nil {
		return nil, err
	}
	if in.CertificateID != "" && in.Policy != nil {
		return nil, errCertAndPolicy()
	}
	var policy *Policy
	if in.CertificateID == "" {
		if policy, err = s.normalizePolicy(in.Policy); err != nil {
			return nil, err
		}
	}

	if in.CertificateID != "" {
		if err := s.checkAttach(ctx, in.CertificateID, name); err != nil {
			return nil, err
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if id, taken := s.names[name]; taken {
		return nil, dcerr.New(dcerr.DomainExists, "domain %s is already registered as %s; update that domain instead", name, id).
			WithDetail("domain_id", id)
	}
	if in.CertificateID != "" && !s.certExistsLocked(in.CertificateID) {
		return nil, errCertNotFound(in.CertificateID) // deleted while we checked it
	}
	t := now()
	d := &Domain{
		ID:            newID(DomainPrefix),
		CreatedAt:     t,
		UpdatedAt:     t,
		Description:   in.Description,
		Metadata:      in.Metadata,
		Domain:        name,
		CertificateID: in.CertificateID,
		Policy:        policy,
	}
	if s.opts.Decorate != nil {
		s.opts.Decorate(d)
	}
	if err := s.writeDomainLocked(ctx, d); err != nil {
		return nil, err
	}
	s.notifyDomainLocked(nil, d)
	s.log.Info("domain created", zap.String("domain_id", d.ID), zap.String("domain", name),
		zap.String("cert_id", d.CertificateID), zap.Bool("managed", policy != nil))
	return d.clone(), nil
}

// GetDomain reads a domain record from storage.
func (s *Store) GetDomain(ctx context.Context, id string) (*Domain, error) {
	s.mu.RLock()
	e, ok := s.domains[id]
	s.mu.RUnlock()
	if !ok {
		return nil, notFound("domain", id)
	}
	d, err := s.loadDomainVersion(ctx, id, e.Version)
	if err != nil && errors.Is(err, fs.ErrNotExist) {
		// rewritten meanwhile; read under the lock to get a stable version
		s.mu.RLock()
		defer s.mu.RUnlock()
		if e, ok = s.domains[id]; !ok {
			return nil, notFound("domain", id)
		}
		return s.loadDomainVersion(ctx, id, e.Version)
	}
	return d, err
}

// DomainByName reads the record of the domain registered for exactly this
// name (a wildcard name matches only itself).
func (s *Store) DomainByName(ctx context.Context, name string) (*Domain, bool) {
	id, ok := s.DomainID(name)
	if !ok {
		return nil, false
	}
	d, err := s.GetDomain(ctx, id)
	return d, err == nil
}

// DomainID returns the ID of the domain with exactly this name (not a
// wildcard covering it). It reads memory only.
func (s *Store) DomainID(name string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.names[sniNormalize(name)]
	return id, ok
}

// ListDomains returns up to limit domains created before beforeID (or the
// newest, when it is empty), newest first, and whether more follow.
func (s *Store) ListDomains(ctx context.Context, limit int, beforeID string) ([]*Domain, bool, error) {
	s.mu.RLock()
	ids, more := page(s.domainIDs, limit, beforeID)
	s.mu.RUnlock()
	out, err := loadAll(ctx, ids, s.GetDomain)
	return out, more, err
}

// Entries returns the index entries of every domain, oldest first. The
// entries are immutable.
func (s *Store) Entries() []*Entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Entry, len(s.domainIDs))
	for i, id := range s.domainIDs {
		out[i] = s.domains[id]
	}
	return out
}

// UpdateDomain applies a patch. A rejected patch changes nothing.
func (s *Store) UpdateDomain(ctx context.Context, id string, p DomainPatch) (*Domain, error) {
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
	if p.CertificateID != nil && *p.CertificateID == "" {
		return nil, dcerr.New(dcerr.BadRequest,
			"certificate_id is empty; to detach the certificate, DELETE /domaincerts/domains/%s/certificate", id)
	}
	if p.CertificateID != nil && p.Policy != nil {
		return nil, errCertAndPolicy()
	}
	var policy *Policy
	if p.Policy != nil {
		var err error
		if policy, err = s.normalizePolicy(p.Policy); err != nil {
			return nil, err
		}
	}

	if p.CertificateID != nil {
		// the name is immutable, so the coverage check can use the index
		s.mu.RLock()
		e, ok := s.domains[id]
		s.mu.RUnlock()
		if !ok {
			return nil, notFound("domain", id)
		}
		if err := s.checkAttach(ctx, *p.CertificateID, e.Name); err != nil {
			return nil, err
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.currentLocked(ctx, id)
	if err != nil {
		return nil, err
	}
	if p.Domain != nil {
		if n, err := NormalizeDomain(*p.Domain); err != nil || n != cur.Domain {
			return nil, dcerr.New(dcerr.DomainImmutable,
				"the name of domain %s cannot change (it is %s); create a new domain instead", id, cur.Domain)
		}
	}
	d := cur.clone()
	if p.Description != nil {
		d.Description = *p.Description
	}
	if p.Metadata != nil {
		d.Metadata = *p.Metadata
	}
	if p.CertificateID != nil {
		if !s.certExistsLocked(*p.CertificateID) {
			return nil, errCertNotFound(*p.CertificateID) // deleted while we checked it
		}
		d.CertificateID = *p.CertificateID
		d.Policy = nil
		d.Status = nil
	}
	if policy != nil {
		policyChanged := d.Policy == nil || *d.Policy != *policy
		if d.Policy == nil {
			d.CertificateID = "" // an uploaded certificate gives way to management
		}
		d.Policy = policy
		if policyChanged {
			d.Status = nil
			if s.opts.Decorate != nil {
				s.opts.Decorate(d)
			}
		}
	}
	d.UpdatedAt = now()
	if err := s.writeDomainLocked(ctx, d); err != nil {
		return nil, err
	}
	s.notifyDomainLocked(cur, d)
	s.log.Info("domain updated", zap.String("domain_id", d.ID), zap.String("domain", d.Domain),
		zap.String("cert_id", d.CertificateID), zap.Bool("managed", d.Policy != nil))
	return d.clone(), nil
}

// DetachCertificate removes the uploaded certificate from a domain; the
// domain then has no certificate and its handshakes fail. A managed
// domain's certificate cannot be detached: detach the policy instead.
func (s *Store) DetachCertificate(ctx context.Context, id string) error {
	return s.mutateDomain(ctx, id, func(d *Domain) (bool, error) {
		if d.Policy != nil {
			return false, dcerr.New(dcerr.DetachManaged,
				"domain %s is managed; its certificate cannot be detached; detach the certificate_management_policy instead", id)
		}
		if d.CertificateID == "" {
			return false, nil
		}
		d.CertificateID = ""
		return true, nil
	})
}

// DetachPolicy ends certificate management for a domain: renewals stop and
// the managed certificate is no longer served.
func (s *Store) DetachPolicy(ctx context.Context, id string) error {
	return s.mutateDomain(ctx, id, func(d *Domain) (bool, error) {
		if d.Policy == nil {
			return false, nil
		}
		d.Policy = nil
		d.Status = nil
		d.CertificateID = ""
		return true, nil
	})
}

// SetManagedState records the outcome of management for a managed domain:
// its status and, when a certificate was obtained, its ID. It is a no-op
// when the domain is gone or no longer managed by the same policy.
func (s *Store) SetManagedState(ctx context.Context, id string, policy Policy, status *Status, certificateID string) error {
	return s.mutateDomain(ctx, id, func(d *Domain) (bool, error) {
		if d.Policy == nil || *d.Policy != policy {
			return false, nil
		}
		before := *d
		d.Status = status
		if certificateID != "" {
			d.CertificateID = certificateID
		}
		// an unchanged status is not rewritten (nor is updated_at bumped)
		return d.CertificateID != before.CertificateID || !sameStatus(d.Status, before.Status), nil
	})
}

// DeleteDomain deletes a domain; handshakes for its name fail from then on.
func (s *Store) DeleteDomain(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.domains[id]
	if !ok {
		return notFound("domain", id)
	}
	d, err := s.loadDomainVersion(ctx, id, e.Version)
	if err != nil {
		return err
	}
	if err := s.Storage().Delete(ctx, domainRecordKey(id, e.Version)); err != nil {
		return fmt.Errorf("deleting domain %s: %w", id, err)
	}
	s.removeEntryLocked(e)
	s.touchLocked(id)
	s.markDirty()
	s.notifyDomainLocked(d, nil)
	s.log.Info("domain deleted", zap.String("domain_id", id), zap.String("domain", d.Domain))
	return nil
}

// mutateDomain applies fn to a copy of a domain and, if fn reports a
// change, writes and publishes it.
func (s *Store) mutateDomain(ctx context.Context, id string, fn func(*Domain) (bool, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.currentLocked(ctx, id)
	if err != nil {
		return err
	}
	d := cur.clone()
	changed, err := fn(d)
	if err != nil || !changed {
		return err
	}
	d.UpdatedAt = now()
	if err := s.writeDomainLocked(ctx, d); err != nil {
		return err
	}
	s.notifyDomainLocked(cur, d)
	return nil
}

// currentLocked reads the current record of domain id. s.mu must be held.
func (s *Store) currentLocked(ctx context.Context, id string) (*Domain, error) {
	e, ok := s.domains[id]
	if !ok {
		return nil, notFound("domain", id)
	}
	return s.loadDomainVersion(ctx, id, e.Version)
}

// notifyDomainLocked tells listeners about a change. It is called with
// s.mu held so that listeners see changes in write order; listeners must
// not call back into the store synchronously.
func (s *Store) notifyDomainLocked(old, new *Domain) {
	var o, n *Domain
	if old != nil {
		o = old.clone()
	}
	if new != nil {
		n = new.clone()
	}
	for _, l := range s.listeners {
		l.DomainChanged(o, n)
	}
}

// checkAttach verifies that certificate id exists and covers name. It
// reads storage and takes no lock; callers check again under the lock that
// the certificate still exists.
func (s *Store) checkAttach(ctx context.Context, id, name string) error {
	if !s.CertificateExists(id) {
		return errCertNotFound(id)
	}
	c, err := s.GetCertificate(ctx, id)
	if dcerr.CodeOf(err) == dcerr.NotFound {
		return errCertNotFound(id)
	}
	if err != nil {
		return err
	}
	chain, err := bundle.ParseCertificates(c.CertificatePEM)
	if err != nil {
		return err
	}
	if !bundle.Covers(chain[0], name) {
		return dcerr.New(dcerr.CertDomainMismatch,
			"certificate %s covers %v, not %s; upload a certificate whose SANs include %s", id, c.SubjectAlternativeNames.DNSNames, name, name).
			WithDetail("certificate_id", id)
	}
	return nil
}

func (s *Store) normalizePolicy(p *Policy) (*Policy, error) {
	out := Policy{Authority: s.opts.DefaultAuthority, PrivateKeyType: KeyTypeECDSA}
	if p != nil {
		if p.Authority != "" {
			out.Authority = p.Authority
		}
		if p.PrivateKeyType != "" {
			out.PrivateKeyType = p.PrivateKeyType
		}
	}
	if !slices.Contains(s.opts.Authorities, out.Authority) {
		return nil, dcerr.New(dcerr.PolicyInvalid, "authority %q is not configured; use one of %v", out.Authority, s.opts.Authorities).
			WithDetail("authority", out.Authority)
	}
	if out.PrivateKeyType != KeyTypeECDSA && out.PrivateKeyType != KeyTypeRSA {
		return nil, dcerr.New(dcerr.PolicyInvalid, "private_key_type %q is not supported; use \"ecdsa\" or \"rsa\"", out.PrivateKeyType).
			WithDetail("private_key_type", out.PrivateKeyType)
	}
	return &out, nil
}

// certExistsLocked reports whether certificate id exists. s.mu must be
// held and the certificates listed.
func (s *Store) certExistsLocked(id string) bool {
	_, ok := slices.BinarySearch(s.certIDs, id)
	return ok && validID(CertificatePrefix, id)
}

func errCertNotFound(id string) error {
	return dcerr.New(dcerr.CertNotFound, "certificate_id %q names no certificate; upload it first", id).
		WithDetail("certificate_id", id)
}

func errCertAndPolicy() error {
	return dcerr.New(dcerr.CertAndPolicy,
		"give either certificate_id (an uploaded certificate) or certificate_management_policy (automated certificates), not both")
}

// sameStatus reports whether two statuses say the same.
func sameStatus(a, b *Status) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
