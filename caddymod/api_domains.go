package caddymod

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
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

func viewDamaged(collection, id string, name *string, dm *domainstore.Damaged) damagedView {
	return damagedView{ID: id, URI: collection + "/" + id, Domain: name, ErrorCode: dcerr.RecordDamaged,
		Msg: "the stored record cannot be read (" + dm.Reason + "); delete it and create it again"}
}

// reference points to another resource.
type reference struct {
	ID  string `json:"id"`
	URI string `json:"uri"`
}

func (h *handler) viewDomain(d *domainstore.Domain) domainView {
	v := domainView{
		resourceView: resourceView{
			ID: d.ID, URI: h.door.domainsPath() + "/" + d.ID,
			CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt,
			Description: d.Description, Metadata: d.Metadata,
		},
		Domain: d.Domain, CNAMETarget: d.CNAMETarget,
		Policy: d.Policy, Status: d.Status,
		ACMEChallengeCNAMETarget: d.ACMEChallengeCNAMETarget,
	}
	if d.CertificateID != "" {
		v.Certificate = &reference{ID: d.CertificateID, URI: h.door.certificatesPath() + "/" + d.CertificateID}
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
	ngrokCreateFields
}

// ngrokCreateFields are fields of ngrok's create body that only its dialect
// accepts.
type ngrokCreateFields struct {
	// Region is ngrok's legacy region; an edge has none, so it is ignored.
	Region *string `json:"region"`
	// ResolvesTo lists ngrok's points of presence; only an empty list is
	// accepted.
	ResolvesTo []json.RawMessage `json:"resolves_to"`
}

func (f ngrokCreateFields) check(ngrok bool) error {
	switch {
	case !ngrok && f.Region != nil:
		return errUnknownField("region")
	case !ngrok && f.ResolvesTo != nil:
		return errUnknownField("resolves_to")
	case len(f.ResolvesTo) > 0:
		return dcerr.New(dcerr.BadRequest, "resolves_to is not supported: the domain resolves to the edge its CNAME or A records point at; leave it out")
	}
	return nil
}

// errUnknownField is the error of a field that this door does not accept,
// worded as decodeBody words one.
func errUnknownField(name string) error {
	return dcerr.New(dcerr.BadRequest, "the request body is not valid: json: unknown field %q", name)
}

// checkBodyID checks the id that ngrok's update bodies repeat: it must be
// the one in the path. Other doors accept no id in a body.
func checkBodyID(ngrok bool, bodyID *string, id string) error {
	switch {
	case bodyID == nil:
		return nil
	case !ngrok:
		return errUnknownField("id")
	case *bodyID != id:
		return dcerr.New(dcerr.BadRequest, "the body's id %q is not the id in the path (%s); leave it out or send the same", *bodyID, id)
	}
	return nil
}

func (h *handler) createDomain(w http.ResponseWriter, r *http.Request) error {
	var req createDomainRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := req.check(h.door.ngrok); err != nil {
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
	writeJSON(w, http.StatusCreated, h.viewDomain(d))
	return nil
}

func (h *handler) listDomains(w http.ResponseWriter, r *http.Request, uri string) error {
	limit, before, err := pageParams(r, domainstore.DomainPrefix)
	if err != nil {
		return err
	}
	var domains []*domainstore.Domain
	var more bool
	q := r.URL.Query()
	name, byName, err := selectorParam(q, "domain", "a domain name (domain=shop.example.com)")
	if err != nil {
		return err
	}
	filter, byFilter, err := selectorParam(q, "filter", `an expression (filter=obj.domain == "shop.example.com")`)
	if err != nil {
		return err
	}
	selector := "" // the query that selects, kept on the next page's uri
	var ids []string
	switch {
	case byName && byFilter:
		// Both together are refused rather than combined: a filter's terms
		// are joined with ||, so whether domain would narrow the filter or
		// add to it is a guess either way, and what a client means is
		// always one filter (obj.domain == "<name>" joined to its terms).
		return dcerr.New(dcerr.BadRequest,
			`give domain or filter, not both; to combine them, add obj.domain == "<name>" to the filter`)
	case byName:
		selector = "&domain=" + url.QueryEscape(name)
		ids, err = h.domainIDsNamed([]string{name})
	case byFilter:
		selector = "&filter=" + url.QueryEscape(filter)
		var terms []filterTerm
		if terms, err = parseFilter(filter, "id", "domain"); err == nil {
			ids = h.domainIDsMatching(terms)
		}
	}
	if err != nil {
		return err
	}
	if selector != "" {
		domains, more, err = readByIDs(r.Context(), ids, before, limit, h.store.GetDomain,
			func(id string) *domainstore.Domain {
				return &domainstore.Domain{ID: id, Damage: &domainstore.Damaged{ID: id, Reason: "it cannot be read"}}
			})
	} else {
		domains, more, err = h.store.ListDomains(r.Context(), limit, before)
	}
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
			views[i] = viewDamaged(h.door.domainsPath(), d.ID, name, d.Damage)
		} else {
			views[i] = h.viewDomain(d)
		}
		last = d.ID
	}
	writeJSON(w, http.StatusOK, h.listBody(h.door.domains, h.door.domainsPath(), selector, views, uri, last, limit, more))
	return nil
}

// readByIDs reads the records of ids that exist, once each, newest first
// (IDs sort by creation time): those created before beforeID (all when it
// is empty), at most limit, and whether more follow. It reads no more
// records than the page needs. A record that cannot be read is listed as
// damaged(id).
func readByIDs[T any](ctx context.Context, ids []string, beforeID string, limit int,
	get func(context.Context, string) (T, error), damaged func(id string) T) ([]T, bool, error) {
	slices.Sort(ids)
	ids = slices.Compact(ids)
	slices.Reverse(ids)
	var out []T
	for _, id := range ids {
		if beforeID != "" && id >= beforeID {
			continue
		}
		rec, err := get(ctx, id)
		switch dcerr.CodeOf(err) {
		case dcerr.NotFound:
			continue
		case dcerr.RecordDamaged:
			rec, err = damaged(id), nil
		}
		if err != nil {
			return nil, false, err
		}
		if len(out) == limit {
			return out, true, nil
		}
		out = append(out, rec)
	}
	return out, false, nil
}

// domainIDsNamed returns the IDs of the domains with these exact names
// (after normalization, so a U-label finds its A-label). A name that is
// not a valid domain name is DOMAIN_INVALID.
func (h *handler) domainIDsNamed(names []string) ([]string, error) {
	var ids []string
	for _, name := range names {
		norm, err := domainstore.NormalizeDomain(name)
		if err != nil {
			return nil, err
		}
		if id, ok := h.store.DomainID(norm); ok {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// domainIDsMatching returns the IDs that a filter names, and those of the
// domains it names; a name that cannot exist matches nothing.
func (h *handler) domainIDsMatching(terms []filterTerm) []string {
	var ids []string
	for _, t := range terms {
		if t.field == "id" {
			ids = append(ids, t.value)
		} else if named, err := h.domainIDsNamed([]string{t.value}); err == nil {
			ids = append(ids, named...)
		}
	}
	return ids
}

func (h *handler) getDomain(w http.ResponseWriter, r *http.Request, id string) error {
	d, err := h.store.GetDomain(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, h.viewDomain(d))
	return nil
}

// updateDomainRequest is the PATCH body.
type updateDomainRequest struct {
	// ID is accepted in ngrok's dialect, whose clients repeat it.
	ID *string `json:"id"`
	// Region is accepted in ngrok's dialect, and ignored.
	Region        *string             `json:"region"`
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
	if err := checkBodyID(h.door.ngrok, req.ID, id); err != nil {
		return err
	}
	if req.Region != nil && !h.door.ngrok {
		return errUnknownField("region")
	}
	d, err := h.store.UpdateDomain(r.Context(), id, domainstore.DomainPatch{
		Domain: req.Domain, Description: req.Description, Metadata: req.Metadata,
		CertificateID: req.CertificateID, Policy: req.Policy,
	})
	if err != nil {
		return err
	}
	emitDomain("domain_updated", d)
	if req.Policy != nil && stoppedJob(d) && h.acme != nil {
		// the policy given again (a changed one starts its own job):
		// a job that gave up tries again, as provision would have it
		if _, err := h.acme.Provision(r.Context(), id); err != nil {
			return err
		}
		if d, err = h.store.GetDomain(r.Context(), id); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, h.viewDomain(d))
	return nil
}

// stoppedJob reports whether d is managed and its provisioning job has
// stopped retrying (an error with no retries_at).
func stoppedJob(d *domainstore.Domain) bool {
	if d.Policy == nil || d.Status == nil || d.Status.ProvisioningJob == nil {
		return false
	}
	j := d.Status.ProvisioningJob
	return j.ErrorCode != nil && *j.ErrorCode != "" && j.RetriesAt == nil
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
	writeJSON(w, http.StatusAccepted, h.viewDomain(d))
	return nil
}
