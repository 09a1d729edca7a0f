package domainstore

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

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
	// AdoptSerial, with a Policy, is the serial number (lowercase hex) of
	// a certificate CertMagic already stores for the name, which the new
	// domain takes as its own (a migration from stock Caddy): it is served
	// as the domain's certificate, without the DNS checks that a
	// certificate left by an earlier registration of the name gets.
	AdoptSerial string
}

// DomainPatch updates a domain; nil fields stay as they are. Setting
// CertificateID attaches an uploaded certificate and ends management;
// setting Policy starts management (or changes it): the current
// certificate stays attached, and serving, until the policy's own is
// issued.
type DomainPatch struct {
	Domain        *string
	Description   *string
	Metadata      *string
	CertificateID *string
	Policy        *Policy
}

// CreateDomain validates and stores a new domain and publishes it in the
// index, so that the next handshake for its name sees it. Names are unique
// across every instance on the storage.
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
		if err := s.checkPolicy(name, *policy); err != nil {
			return nil, err
		}
	}
	var out *Domain
	err = s.submit(ctx, func(tx *txn) error {
		if id, taken := tx.nameOwner(name); taken {
			return dcerr.New(dcerr.DomainExists, "domain %s is already registered as %s; update that domain instead", name, id).
				WithDetail("domain_id", id)
		}
		if in.CertificateID != "" {
			if err := checkAttach(tx, in.CertificateID, name, ""); err != nil {
				return err
			}
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
		if policy != nil {
			d.ManagedSerial = in.AdoptSerial
		}
		if decorate := s.options().Decorate; decorate != nil {
			decorate(d)
		}
		shareChallengeTarget(tx, d)
		tx.putDomain(d, nil)
		out = d
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("domain created", zap.String("domain_id", out.ID), zap.String("domain", name),
		zap.String("cert_id", out.CertificateID), zap.Bool("managed", policy != nil))
	return out.clone(), nil
}

// GetDomain reads a domain record from storage. A domain this instance
// does not know yet is looked for in the journal first, so that a domain
// created through another instance can be read at once.
func (s *Store) GetDomain(ctx context.Context, id string) (*Domain, error) {
	if !validID(DomainPrefix, id) {
		return nil, notFound("domain", id)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	for attempt := 0; ; attempt++ {
		s.mu.RLock()
		e := s.domains[id]
		dm := s.damaged[id]
		s.mu.RUnlock()
		switch {
		case e != nil:
			d, err := s.readDomain(ctx, id, e.Version)
			if err == errVersionGone && attempt < 3 {
				// rewritten meanwhile: memory has the new version now, or
				// will after reading the journal
				_ = s.Sync(ctx)
				continue
			}
			if err == errVersionGone {
				return nil, recordDamaged("domain", id, errors.New("the record is missing"))
			}
			return d, err
		case dm != nil:
			return nil, recordDamaged("domain", id, errors.New(dm.Reason))
		case attempt == 0:
			if err := s.Sync(ctx); err != nil {
				return nil, err
			}
		default:
			return nil, notFound("domain", id)
		}
	}
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
	return s.nameOwnerLocked(sniNormalize(name))
}

// ListDomains returns up to limit domains created before beforeID (or the
// newest, when it is empty), newest first, and whether more follow. A
// record that cannot be read is listed with Damage set, not left out.
func (s *Store) ListDomains(ctx context.Context, limit int, beforeID string) ([]*Domain, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	s.mu.RLock()
	ids, more := page(s.domainIDs, limit, beforeID)
	type ref struct {
		e  *Entry
		dm *Damaged
	}
	refs := make([]ref, len(ids))
	for i, id := range ids {
		refs[i] = ref{s.domains[id], s.damaged[id]}
	}
	s.mu.RUnlock()
	out := make([]*Domain, 0, len(ids))
	for i, id := range ids {
		r := refs[i]
		if r.dm != nil || r.e == nil {
			reason := "the record is missing"
			name := ""
			if r.dm != nil {
				reason, name = r.dm.Reason, r.dm.Name
			}
			out = append(out, &Domain{ID: id, Domain: name, Damage: &Damaged{ID: id, Name: name, Reason: reason}})
			continue
		}
		d, err := s.readDomain(ctx, id, r.e.Version)
		switch {
		case err == nil:
			out = append(out, d)
		case err == errVersionGone:
			// changed since the page was taken: read it as it is now
			d, err := s.GetDomain(ctx, id)
			if dcerr.CodeOf(err) == dcerr.NotFound {
				continue
			}
			if dcerr.CodeOf(err) == dcerr.RecordDamaged {
				out = append(out, &Domain{ID: id, Domain: r.e.Name, Damage: &Damaged{ID: id, Name: r.e.Name, Reason: damageReason(err)}})
				continue
			}
			if err != nil {
				return nil, false, err
			}
			out = append(out, d)
		case dcerr.CodeOf(err) == dcerr.RecordDamaged:
			out = append(out, &Domain{ID: id, Domain: r.e.Name, Damage: &Damaged{ID: id, Name: r.e.Name, Reason: damageReason(err)}})
		default:
			return nil, false, err
		}
	}
	return out, more, nil
}

// UpdateDomain applies a patch. A rejected patch changes nothing. Of
// concurrent patches on any instances, each applies to the record as the
// one before left it, and every instance ends with the last.
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
	var out *Domain
	err := s.submit(ctx, func(tx *txn) error {
		cur, err := tx.domain(id)
		if err != nil {
			return err
		}
		if p.Domain != nil {
			if n, err := NormalizeDomain(*p.Domain); err != nil || n != cur.Domain {
				return dcerr.New(dcerr.DomainImmutable,
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
			if *p.CertificateID != cur.CertificateID {
				if err := checkAttach(tx, *p.CertificateID, cur.Domain, cur.ID); err != nil {
					return err
				}
			}
			d.CertificateID = *p.CertificateID
			d.Policy = nil
			d.Status = nil
		}
		if policy != nil {
			if err := s.checkPolicy(cur.Domain, *policy); err != nil {
				return err
			}
			// the current certificate (an upload, or the one obtained
			// under the former policy) stays until the policy's own is
			// issued, and serves meanwhile
			policyChanged := d.Policy == nil || *d.Policy != *policy
			d.Policy = policy
			if policyChanged {
				d.Status = nil
				if decorate := s.options().Decorate; decorate != nil {
					decorate(d)
				}
				if cur.ACMEChallengeCNAMETarget == nil {
					shareChallengeTarget(tx, d)
				}
			}
		}
		d.UpdatedAt = now()
		if err := dropManagedCertificate(tx, cur, d); err != nil {
			return err
		}
		tx.putDomain(d, cur)
		out = d
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("domain updated", zap.String("domain_id", out.ID), zap.String("domain", out.Domain),
		zap.String("cert_id", out.CertificateID), zap.Bool("managed", out.Policy != nil))
	return out.clone(), nil
}

// DetachCertificate removes the uploaded certificate from a domain; the
// domain then has no certificate and its handshakes fail. A managed
// domain's certificate cannot be detached: detach the policy instead.
func (s *Store) DetachCertificate(ctx context.Context, id string) error {
	return s.mutateDomain(ctx, id, func(_ *txn, d *Domain) (bool, error) {
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
// the managed certificate is no longer served. An uploaded certificate that
// was serving until the policy's own was issued stays attached.
func (s *Store) DetachPolicy(ctx context.Context, id string) error {
	return s.mutateDomain(ctx, id, func(tx *txn, d *Domain) (bool, error) {
		if d.Policy == nil {
			return false, nil
		}
		d.Policy, d.Status = nil, nil
		if d.CertificateID != "" {
			c, err := tx.certificate(d.CertificateID)
			switch code := dcerr.CodeOf(err); {
			case code == dcerr.NotFound || code == dcerr.RecordDamaged:
				d.CertificateID = "" // nothing left to serve
			case err != nil:
				return false, err
			case c.ManagedDomainID != "":
				d.CertificateID = ""
			}
		}
		return true, nil
	})
}

// IssuedCertificate is a certificate that ACME issued for a managed
// domain, as CertMagic stored it.
type IssuedCertificate struct {
	// CertificatePEM is the chain.
	CertificatePEM string
	// KeyStorageKey is where CertMagic keeps its private key.
	KeyStorageKey string
	// IssuedAt is when it was issued.
	IssuedAt time.Time
}

// SetManagedState records the outcome of management for a managed domain:
// its status and, when a certificate was obtained, that certificate. The
// certificate gets a record unless the domain's current one holds it
// already (so instances that each load it record it once), and the record
// of the certificate it replaces is deleted. It is a no-op when the domain
// is gone or no longer managed by the same policy, and when nothing
// changes.
func (s *Store) SetManagedState(ctx context.Context, id string, policy Policy, status *Status, issued *IssuedCertificate) error {
	var chainInfo *Certificate
	if issued != nil {
		c, err := managedRecord(id, issued)
		if err != nil {
			return err
		}
		chainInfo = c
	}
	var recorded *Certificate
	err := s.submit(ctx, func(tx *txn) error {
		cur, err := tx.domain(id)
		if dcerr.CodeOf(err) == dcerr.NotFound {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.Policy == nil || *cur.Policy != policy {
			return nil
		}
		d := cur.clone()
		d.Status = status
		if chainInfo != nil && !holdsSerial(tx, cur.CertificateID, chainInfo.SerialNumber) {
			c := *chainInfo
			c.ID = newID(CertificatePrefix)
			tx.putCert(&c, nil)
			d.CertificateID = c.ID
			recorded = &c
		}
		if chainInfo != nil {
			d.ManagedSerial = chainInfo.SerialNumber
		}
		if d.CertificateID == cur.CertificateID && d.ManagedSerial == cur.ManagedSerial && sameStatus(d.Status, cur.Status) {
			return nil // an unchanged status is not rewritten (nor is updated_at bumped)
		}
		d.UpdatedAt = now()
		if err := dropManagedCertificate(tx, cur, d); err != nil {
			return err
		}
		tx.putDomain(d, cur)
		return nil
	})
	if err == nil && recorded != nil {
		s.log.Info("managed certificate recorded", zap.String("domain_id", id),
			zap.String("cert_id", recorded.ID), zap.Time("not_after", recorded.NotAfter))
	}
	return err
}

// holdsSerial reports whether certificate id's record is the certificate
// with this serial number.
func holdsSerial(tx *txn, id, serial string) bool {
	if id == "" {
		return false
	}
	c, err := tx.certificate(id)
	return err == nil && c.SerialNumber == serial
}

// dropManagedCertificate stages the deletion of the managed certificate
// record that domain cur pointed to when next no longer does (a renewal
// replaced it, management ended, the domain is deleted: next is nil).
// Uploaded certificates are the user's to delete.
func dropManagedCertificate(tx *txn, cur, next *Domain) error {
	old := cur.CertificateID
	if old == "" || (next != nil && next.CertificateID == old) {
		return nil
	}
	c, err := tx.certificate(old)
	if dcerr.CodeOf(err) == dcerr.NotFound || dcerr.CodeOf(err) == dcerr.RecordDamaged {
		return nil
	}
	if err != nil {
		return err
	}
	if c.ManagedDomainID != cur.ID || tx.certUsers(old) > 1 {
		return nil
	}
	tx.deleteCert(old, false)
	return nil
}

// DeleteDomain deletes a domain, live or damaged; handshakes for its name
// fail from then on. The record of its managed certificate goes with it.
func (s *Store) DeleteDomain(ctx context.Context, id string) error {
	var name string
	err := s.submit(ctx, func(tx *txn) error {
		cur, err := tx.domain(id)
		switch dcerr.CodeOf(err) {
		case dcerr.RecordDamaged:
			cur = nil
		case dcerr.NotFound:
			return err
		default:
			if err != nil {
				return err
			}
		}
		if cur != nil {
			name = cur.Domain
			if err := dropManagedCertificate(tx, cur, nil); err != nil {
				return err
			}
		}
		tx.deleteDomain(id, cur)
		return nil
	})
	if err != nil {
		return err
	}
	s.log.Info("domain deleted", zap.String("domain_id", id), zap.String("domain", name))
	return nil
}

// mutateDomain applies fn to a copy of a domain and, if fn reports a
// change, writes it.
func (s *Store) mutateDomain(ctx context.Context, id string, fn func(*txn, *Domain) (bool, error)) error {
	return s.submit(ctx, func(tx *txn) error {
		cur, err := tx.domain(id)
		if err != nil {
			return err
		}
		d := cur.clone()
		changed, err := fn(tx, d)
		if err != nil || !changed {
			return err
		}
		d.UpdatedAt = now()
		if err := dropManagedCertificate(tx, cur, d); err != nil {
			return err
		}
		tx.putDomain(d, cur)
		return nil
	})
}

// checkAttach verifies that certificate id exists, covers name, and is not
// the ACME certificate of a managed domain other than domainID ("" for a
// domain being created).
func checkAttach(tx *txn, id, name, domainID string) error {
	if !validID(CertificatePrefix, id) || !tx.certExists(id) {
		return errCertNotFound(id)
	}
	c, err := tx.certificate(id)
	if dcerr.CodeOf(err) == dcerr.NotFound {
		return errCertNotFound(id)
	}
	if err != nil {
		return err
	}
	if c.ManagedDomainID != "" && c.ManagedDomainID != domainID {
		// its key is CertMagic's for the managed domain's name, replaced at
		// the next issuance, and the record goes with the certificate it
		// was: another domain pointing at it would be left with neither
		return dcerr.New(dcerr.BadRequest,
			"certificate %s was issued through ACME for domain %s and is renewed with it; attach an uploaded certificate, or give %s a certificate_management_policy of its own", id, c.ManagedDomainID, name).
			WithDetail("certificate_id", id)
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
	opts := s.options()
	out := Policy{Authority: opts.DefaultAuthority, PrivateKeyType: KeyTypeECDSA}
	if p != nil {
		if p.Authority != "" {
			out.Authority = p.Authority
		}
		if p.PrivateKeyType != "" {
			out.PrivateKeyType = p.PrivateKeyType
		}
	}
	if !slices.Contains(opts.Authorities, out.Authority) {
		return nil, dcerr.New(dcerr.PolicyInvalid, "authority %q is not configured; use one of %v", out.Authority, opts.Authorities).
			WithDetail("authority", out.Authority)
	}
	if out.PrivateKeyType != KeyTypeECDSA && out.PrivateKeyType != KeyTypeRSA {
		return nil, dcerr.New(dcerr.PolicyInvalid, "private_key_type %q is not supported; use \"ecdsa\" or \"rsa\"", out.PrivateKeyType).
			WithDetail("private_key_type", out.PrivateKeyType)
	}
	return &out, nil
}

// shareChallengeTarget gives d, whose acme_challenge_cname_target is new,
// the one of the domain with the same base (app.example.com and
// *.app.example.com), if that has one: both are validated through
// _acme-challenge.app.example.com, which can CNAME to one target only.
func shareChallengeTarget(tx *txn, d *Domain) {
	if d.ACMEChallengeCNAMETarget == nil {
		return
	}
	other := "*." + d.Domain
	if base, ok := strings.CutPrefix(d.Domain, "*."); ok {
		other = base
	}
	id, ok := tx.nameOwner(other)
	if !ok || id == d.ID {
		return
	}
	if sib, err := tx.domain(id); err == nil && sib.ACMEChallengeCNAMETarget != nil {
		t := *sib.ACMEChallengeCNAMETarget
		d.ACMEChallengeCNAMETarget = &t
	}
}

// checkPolicy asks Options.CheckPolicy, if set, whether p can ever be
// satisfied for name.
func (s *Store) checkPolicy(name string, p Policy) error {
	if check := s.options().CheckPolicy; check != nil {
		return check(name, p)
	}
	return nil
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
	if !utf8.ValidString(v) {
		return dcerr.New(dcerr.BadRequest, "%s is not valid UTF-8; send text as UTF-8", field).
			WithDetail("field", field)
	}
	if len(v) > limit {
		return dcerr.New(dcerr.FieldTooLarge, "%s is %d bytes; the limit is %d bytes", field, len(v), limit).
			WithDetail("field", field)
	}
	return nil
}

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }
