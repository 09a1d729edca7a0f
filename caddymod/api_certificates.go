package caddymod

import (
	"net/http"
	"net/url"
	"time"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
)

// certificateView is the API object of a TLS certificate: the contract's
// fields, and managed_domain_id for a certificate that ACME issued. It is
// its own type so that what the store keeps about a record (where a
// managed key lives, for one) never reaches a response by accident.
type certificateView struct {
	resourceView
	CertificatePEM string `json:"certificate_pem"`
	bundle.CertInfo
	IssuedAt        *time.Time `json:"issued_at"`
	PrivateKeyType  string     `json:"private_key_type"`
	ManagedDomainID string     `json:"managed_domain_id,omitempty"`
}

func (h *handler) viewCertificate(c *domainstore.Certificate) certificateView {
	return certificateView{
		resourceView: resourceView{
			ID: c.ID, URI: h.door.certificatesPath() + "/" + c.ID,
			CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt,
			Description: c.Description, Metadata: c.Metadata,
		},
		CertificatePEM:  c.CertificatePEM,
		CertInfo:        c.CertInfo,
		IssuedAt:        c.IssuedAt,
		PrivateKeyType:  c.PrivateKeyType,
		ManagedDomainID: c.ManagedDomainID,
	}
}

// createCertificateRequest is the upload body.
type createCertificateRequest struct {
	CertificatePEM *string `json:"certificate_pem"`
	PrivateKeyPEM  *string `json:"private_key_pem"`
	Description    string  `json:"description"`
	Metadata       string  `json:"metadata"`
}

func (h *handler) createCertificate(w http.ResponseWriter, r *http.Request) error {
	var req createCertificateRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	in := domainstore.CertificateInput{Description: req.Description, Metadata: req.Metadata}
	if req.CertificatePEM != nil {
		in.CertificatePEM = *req.CertificatePEM
	}
	if req.PrivateKeyPEM != nil {
		in.PrivateKeyPEM = *req.PrivateKeyPEM
	}
	c, err := h.store.CreateCertificate(r.Context(), in)
	if err != nil {
		return err
	}
	emitCertificate("certificate_uploaded", c)
	h.warnExpiring(c)
	writeJSON(w, http.StatusCreated, h.viewCertificate(c))
	return nil
}

func (h *handler) listCertificates(w http.ResponseWriter, r *http.Request, uri string) error {
	limit, before, err := pageParams(r, domainstore.CertificatePrefix)
	if err != nil {
		return err
	}
	var certs []*domainstore.Certificate
	var more bool
	selector := ""
	filter, byFilter, err := selectorParam(r.URL.Query(), "filter", `an expression (filter=obj.id == "cert_...")`)
	if err != nil {
		return err
	}
	if byFilter {
		selector = "&filter=" + url.QueryEscape(filter)
		var terms []filterTerm
		if terms, err = parseFilter(filter, "id"); err != nil {
			return err
		}
		ids := make([]string, len(terms))
		for i, t := range terms {
			ids[i] = t.value
		}
		certs, more, err = readByIDs(r.Context(), ids, before, limit, h.store.GetCertificate,
			func(id string) *domainstore.Certificate {
				return &domainstore.Certificate{ID: id, Damage: &domainstore.Damaged{ID: id, Reason: "it cannot be read"}}
			})
	} else {
		certs, more, err = h.store.ListCertificates(r.Context(), limit, before)
	}
	if err != nil {
		return err
	}
	views := make([]any, len(certs))
	last := ""
	for i, c := range certs {
		if c.Damage != nil {
			views[i] = viewDamaged(h.door.certificatesPath(), c.ID, nil, c.Damage)
		} else {
			views[i] = h.viewCertificate(c)
		}
		last = c.ID
	}
	writeJSON(w, http.StatusOK, h.listBody(certificatesName, h.door.certificatesPath(), selector, views, uri, last, limit, more))
	return nil
}

func (h *handler) getCertificate(w http.ResponseWriter, r *http.Request, id string) error {
	c, err := h.store.GetCertificate(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, h.viewCertificate(c))
	return nil
}

// updateCertificateRequest is the PATCH body: description and metadata
// only; anything else is an unknown field.
type updateCertificateRequest struct {
	// ID is accepted in ngrok's dialect, whose clients repeat it.
	ID          *string `json:"id"`
	Description *string `json:"description"`
	Metadata    *string `json:"metadata"`
}

func (h *handler) updateCertificate(w http.ResponseWriter, r *http.Request, id string) error {
	var req updateCertificateRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := checkBodyID(h.door.ngrok, req.ID, id); err != nil {
		return err
	}
	c, err := h.store.UpdateCertificate(r.Context(), id, domainstore.CertificatePatch{
		Description: req.Description, Metadata: req.Metadata,
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, h.viewCertificate(c))
	return nil
}

func (h *handler) deleteCertificate(w http.ResponseWriter, r *http.Request, id string) error {
	c, _ := h.store.GetCertificate(r.Context(), id) // for the event
	if err := h.store.DeleteCertificate(r.Context(), id); err != nil {
		return err
	}
	if c != nil {
		emitCertificate("certificate_deleted", c)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
