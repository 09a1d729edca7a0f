package caddymod

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// resourceView holds the fields every API object starts with.
type resourceView struct {
	ID          string    `json:"id"`
	URI         string    `json:"uri"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	Description string    `json:"description"`
	Metadata    string    `json:"metadata"`
}

// domainView is the API object of a domain.
type domainView struct {
	resourceView
	Domain                   string              `json:"domain"`
	CNAMETarget              *string             `json:"cname_target"`
	Certificate              *reference          `json:"certificate"`
	Policy                   *domainstore.Policy `json:"certificate_management_policy"`
	Status                   *domainstore.Status `json:"certificate_management_status"`
	ACMEChallengeCNAMETarget *string             `json:"acme_challenge_cname_target"`
}

// damagedView is the list item of a record that exists in storage but
// cannot be read. It keeps the list whole and tells the operator what to
// do; GET of it answers RECORD_DAMAGED, DELETE removes it.
type damagedView struct {
	ID        string     `json:"id"`
	URI       string     `json:"uri"`
	Domain    *string    `json:"domain,omitempty"`
	ErrorCode dcerr.Code `json:"error_code"`
	Msg       string     `json:"msg"`
}

func viewDamaged(base, id string, name *string, dm *domainstore.Damaged) damagedView {
	return damagedView{ID: id, URI: base + "/" + id, Domain: name, ErrorCode: dcerr.RecordDamaged,
		Msg: "the stored record cannot be read (" + dm.Reason + "); delete it and create it again"}
}

// reference points to another resource.
type reference struct {
	ID  string `json:"id"`
	URI string `json:"uri"`
}

func viewDomain(d *domainstore.Domain) domainView {
	v := domainView{
		resourceView: resourceView{
			ID: d.ID, URI: domainsPath + "/" + d.ID,
			CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt,
			Description: d.Description, Metadata: d.Metadata,
		},
		Domain: d.Domain, CNAMETarget: d.CNAMETarget,
		Policy: d.Policy, Status: d.Status,
		ACMEChallengeCNAMETarget: d.ACMEChallengeCNAMETarget,
	}
	if d.CertificateID != "" {
		v.Certificate = &reference{ID: d.CertificateID, URI: certificatesPath + "/" + d.CertificateID}
	}
	return v
}

// createDomainRequest is the create body.
type createDomainRequest struct {
	Domain        string              `json:"domain"`
	Description   string              `json:"description"`
	Metadata      string              `json:"metadata"`
	CertificateID *string             `json:"certificate_id"`
	Policy        *domainstore.Policy `json:"certificate_management_policy"`
}

func (h *handler) createDomain(w http.ResponseWriter, r *http.Request) error {
	var req createDomainRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	in := domainstore.DomainInput{
		Domain: req.Domain, Description: req.Description, Metadata: req.Metadata, Policy: req.Policy,
	}
	if req.CertificateID != nil {
		if *req.CertificateID == "" {
			return dcerr.New(dcerr.BadRequest,
				"certificate_id is empty; give the ID of an uploaded certificate, or leave certificate_id out for automated certificates")
		}
		in.CertificateID = *req.CertificateID
	}
	d, err := h.store.CreateDomain(r.Context(), in)
	if err != nil {
		return err
	}
	emitDomain("domain_created", d)
	writeJSON(w, http.StatusCreated, viewDomain(d))
	return nil
}

func (h *handler) listDomains(w http.ResponseWriter, r *http.Request) error {
	limit, before, err := pageParams(r)
	if err != nil {
		return err
	}
	domains, more, err := h.store.ListDomains(r.Context(), limit, before)
	if err != nil {
		return err
	}
	views := make([]any, len(domains))
	last := ""
	for i, d := range domains {
		if d.Damage != nil {
			var name *string
			if d.Domain != "" {
				name = &d.Domain
			}
			views[i] = viewDamaged(domainsPath, d.ID, name, d.Damage)
		} else {
			views[i] = viewDomain(d)
		}
		last = d.ID
	}
	writeJSON(w, http.StatusOK, listBody("domains", views, r, last, limit, more))
	return nil
}

func (h *handler) getDomain(w http.ResponseWriter, r *http.Request, id string) error {
	d, err := h.store.GetDomain(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, viewDomain(d))
	return nil
}

// updateDomainRequest is the PATCH body.
type updateDomainRequest struct {
	Domain        *string             `json:"domain"`
	Description   *string             `json:"description"`
	Metadata      *string             `json:"metadata"`
	CertificateID *string             `json:"certificate_id"`
	Policy        *domainstore.Policy `json:"certificate_management_policy"`
}

func (h *handler) updateDomain(w http.ResponseWriter, r *http.Request, id string) error {
	var req updateDomainRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	d, err := h.store.UpdateDomain(r.Context(), id, domainstore.DomainPatch{
		Domain: req.Domain, Description: req.Description, Metadata: req.Metadata,
		CertificateID: req.CertificateID, Policy: req.Policy,
	})
	if err != nil {
		return err
	}
	emitDomain("domain_updated", d)
	writeJSON(w, http.StatusOK, viewDomain(d))
	return nil
}

func (h *handler) deleteDomain(w http.ResponseWriter, r *http.Request, id string) error {
	d, _ := h.store.GetDomain(r.Context(), id) // for the event
	if err := h.store.DeleteDomain(r.Context(), id); err != nil {
		return err
	}
	if d != nil {
		emitDomain("domain_deleted", d)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// detach removes a domain's certificate or policy (detachCertificate or
// detachPolicy) and sends domain_updated.
func (h *handler) detach(w http.ResponseWriter, r *http.Request, id string, detach func(context.Context, string) error) error {
	if err := detach(r.Context(), id); err != nil {
		return err
	}
	if d, err := h.store.GetDomain(r.Context(), id); err == nil {
		emitDomain("domain_updated", d)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// provisionDomain runs the domain's provisioning job now (or as soon as
// the per-domain rate limit allows) and answers 202 with the domain, whose
// status shows when the attempt starts. A body, if any, must be an empty
// JSON object.
func (h *handler) provisionDomain(w http.ResponseWriter, r *http.Request, id string) error {
	var req struct{}
	if err := decodeBodyOr(r, &req, true); err != nil {
		return err
	}
	if h.acme == nil {
		return errors.New("certificate management has not started")
	}
	if _, err := h.acme.Provision(r.Context(), id); err != nil {
		return err
	}
	d, err := h.store.GetDomain(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, viewDomain(d))
	return nil
}
