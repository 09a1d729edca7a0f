package domainstore

import (
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
)

// Limits on free-text fields, in bytes.
const (
	MaxDescription = 255
	MaxMetadata    = 4096
)

// Certificate is a TLS certificate record: an uploaded bundle, or one that
// ACME issued for a managed domain. Its private key is stored apart from it
// and never leaves the store except to serve handshakes.
type Certificate struct {
	ID          string    `json:"id"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	Description string    `json:"description"`
	Metadata    string    `json:"metadata"`

	// CertificatePEM is the chain, leaf first, as canonical PEM.
	CertificatePEM string `json:"certificate_pem"`

	// Damage is set, in lists, for a record that exists but cannot be
	// read; only ID is set then. It is never stored.
	Damage *Damaged `json:"-"`

	bundle.CertInfo

	// IssuedAt is when ACME issued the certificate; nil for uploads.
	IssuedAt *time.Time `json:"issued_at"`

	// PrivateKeyType is "rsa", "ecdsa" or "ed25519".
	PrivateKeyType string `json:"private_key_type"`

	// ManagedDomainID names the managed domain whose ACME certificate this
	// is; empty for uploads. Managed certificates are read-only.
	ManagedDomainID string `json:"managed_domain_id,omitempty"`

	// KeyStorageKey is where the private key of a managed certificate
	// lives: CertMagic's own key file. Empty for uploads, whose key is at
	// CertificateKeyKey(ID).
	KeyStorageKey string `json:"key_storage_key,omitempty"`

	// JournalVersion is the journal entry that wrote the stored record (0
	// in records of earlier releases): a record older than the version
	// memory knows is read from that entry instead. Not part of the API
	// object.
	JournalVersion uint64 `json:"journal_version,omitempty"`
}

// Policy is a domain's certificate management policy: the certificate is
// obtained and renewed automatically from an ACME authority.
type Policy struct {
	// Authority names an issuer configured in the app.
	Authority string `json:"authority"`
	// PrivateKeyType is "ecdsa" (P-256) or "rsa" (4096 bits).
	PrivateKeyType string `json:"private_key_type"`
}

// Status is the certificate management status of a managed domain.
type Status struct {
	RenewsAt        *time.Time       `json:"renews_at"`
	ProvisioningJob *ProvisioningJob `json:"provisioning_job"`
}

// ProvisioningJob describes a running or waiting issuance.
type ProvisioningJob struct {
	// ErrorCode is empty (JSON null) while all is well, INTERNAL_ERROR for
	// a temporary failure that is retried, DNS_ERROR when the user must
	// fix DNS.
	ErrorCode *string    `json:"error_code"`
	Msg       string     `json:"msg"`
	StartedAt time.Time  `json:"started_at"`
	RetriesAt *time.Time `json:"retries_at"`
}

// Domain is a domain record: a DNS name (or wildcard) and where its
// certificate comes from.
type Domain struct {
	ID          string    `json:"id"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	Description string    `json:"description"`
	Metadata    string    `json:"metadata"`

	// Domain is the normalized name; immutable.
	Domain string `json:"domain"`

	// CertificateID is the attached uploaded certificate, or the newest
	// managed one; empty when there is none.
	CertificateID string `json:"certificate_id,omitempty"`

	// Policy is set for managed domains, nil for uploads.
	Policy *Policy `json:"certificate_management_policy"`

	// Status is the management status; nil for unmanaged domains.
	Status *Status `json:"certificate_management_status"`

	// CNAMETarget is the name a customer's domain must CNAME to; nil for
	// domains inside the operator's own zones.
	CNAMETarget *string `json:"cname_target"`

	// ACMEChallengeCNAMETarget is where "_acme-challenge.<base>" must CNAME
	// to, for domains outside the operator's zones that get certificates
	// through DNS-01 (wildcards; every one with delegate_dns01 "all");
	// else nil.
	ACMEChallengeCNAMETarget *string `json:"acme_challenge_cname_target"`

	// ManagedSerial is the serial number (lowercase hex) of the last
	// certificate that ACME issued for this record. A certificate stored
	// for the name with another serial was obtained for an earlier
	// registration of the name, and is not served before this one's
	// DNS records are checked. Not part of the API object.
	ManagedSerial string `json:"managed_serial,omitempty"`

	// Damage is set, in lists, for a record that exists but cannot be
	// read; only ID (and Domain, when known) is set then. It is never
	// stored.
	Damage *Damaged `json:"-"`
}

// clone returns a deep copy of d, so callers never share mutable records.
func (d *Domain) clone() *Domain {
	c := *d
	if d.Policy != nil {
		p := *d.Policy
		c.Policy = &p
	}
	if d.Status != nil {
		s := *d.Status
		if s.ProvisioningJob != nil {
			j := *s.ProvisioningJob
			s.ProvisioningJob = &j
		}
		c.Status = &s
	}
	return &c
}

// Entry is what the SNI index holds for a domain: everything the handshake
// path needs, immutable once published.
type Entry struct {
	DomainID string
	Name     string
	// CertificateID is the certificate to serve; empty if there is none.
	CertificateID string
	// Managed is true when the domain has a management policy.
	Managed bool
	// Failing is true when the managed domain's provisioning job reports
	// an error.
	Failing bool
	// Version is the version of the stored record the entry reflects.
	Version uint64
}

func entryFor(d *Domain, version uint64) *Entry {
	failing := d.Policy != nil && d.Status != nil && d.Status.ProvisioningJob != nil &&
		d.Status.ProvisioningJob.ErrorCode != nil && *d.Status.ProvisioningJob.ErrorCode != ""
	return &Entry{DomainID: d.ID, Name: d.Domain, CertificateID: d.CertificateID, Managed: d.Policy != nil,
		Failing: failing, Version: version}
}

// DomainState is where a domain stands, for metrics.
type DomainState int

// The domain states: an uploaded certificate (no policy); a managed one
// issued, still provisioning (no certificate yet, no error), or failing
// (its job reports an error, with or without a certificate); none (no
// policy, no certificate).
const (
	StateUploaded DomainState = iota
	StateIssued
	StateProvisioning
	StateFailing
	StateNone
	numDomainStates
)

// DomainStateNames are the metric label values of the states, by state.
var DomainStateNames = [...]string{"uploaded", "issued", "provisioning", "failing", "none"}

// State returns the domain's state.
func (e *Entry) State() DomainState {
	switch {
	case !e.Managed && e.CertificateID != "":
		return StateUploaded
	case !e.Managed:
		return StateNone
	case e.Failing:
		return StateFailing
	case e.CertificateID != "":
		return StateIssued
	}
	return StateProvisioning
}
