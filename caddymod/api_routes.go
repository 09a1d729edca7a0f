package caddymod

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// maxRequestBodyBytes bounds a request body.
const maxRequestBodyBytes = 256 << 10

// A door is a way into the API: the admin endpoint, or an HTTP handler on
// a site route, in the API's own dialect or in ngrok's. Every door serves
// the same endpoints through one handler over the domain store; a door
// only decides where the API is mounted and how it is spelt.
type door struct {
	// base is the path the API is mounted at, as clients see it: the
	// prefix of every uri in responses ("/domaincerts" on the admin
	// endpoint; "" at the root of a site).
	base string
	// domains names the domains' collection and list key: "domains", or
	// ngrok's "reserved_domains".
	domains string
	// ngrok selects ngrok's dialect: its request fields are accepted, and
	// next_page_uri is an absolute URL (ngrok's clients follow it as one).
	ngrok bool
	// origin is "scheme://host" of the request, for absolute URLs.
	origin string
	// admin is set on the admin endpoint, which alone lists what lies in
	// Caddy's storage outside the plugin (stored_certificates).
	admin bool
}

const certificatesName = "tls_certificates"

func (d door) domainsPath() string      { return d.base + "/" + d.domains }
func (d door) certificatesPath() string { return d.base + "/" + certificatesName }

// handler serves one API request through a door.
type handler struct {
	store *domainstore.Store
	acme  *certsource.ACME // nil until the app has started
	log   *zap.Logger
	// expiryWarning is the app's expiry_warning
	expiryWarning time.Duration
	door          door
	// issuers are the app's provisioned issuers, by authority name
	issuers map[string]certmagic.Issuer
}

// apiHandler returns a handler of the running app for a request through d.
func (a *App) apiHandler(log *zap.Logger, d door) *handler {
	return &handler{store: a.inst.store, acme: a.acmeNow(), log: log, expiryWarning: time.Duration(a.ExpiryWarning), door: d, issuers: a.issuerMods}
}

// serve answers a request: rel is its path below the door's base, uri the
// request URI as the client sent it. Errors are written in the contract's
// shape.
func (h *handler) serve(w http.ResponseWriter, r *http.Request, rel, uri string) {
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBodyBytes)
	err := h.route(w, r, rel, uri)
	if err == nil {
		return
	}
	switch code := dcerr.CodeOf(err); code {
	case dcerr.Internal:
		h.log.Error("API request failed", zap.String("method", r.Method),
			zap.String("path", r.URL.Path), zap.Error(err))
	case dcerr.StorageUnavailable, dcerr.RecordDamaged:
		h.log.Warn("API request failed", zap.String("method", r.Method),
			zap.String("path", r.URL.Path), zap.String("error_code", string(code)),
			zap.NamedError("cause", errors.Unwrap(err)))
	}
	writeError(w, err)
}

// route dispatches on path and method.
func (h *handler) route(w http.ResponseWriter, r *http.Request, rel, uri string) error {
	p := strings.TrimSuffix(rel, "/")
	certs, domains := "/"+certificatesName, "/"+h.door.domains
	switch p {
	case certs:
		switch r.Method {
		case http.MethodGet:
			if err := checkQuery(r, "limit", "before_id", "filter"); err != nil {
				return err
			}
			return h.listCertificates(w, r, uri)
		case http.MethodPost:
			if err := checkQuery(r); err != nil {
				return err
			}
			return h.createCertificate(w, r)
		}
		return methodNotAllowed(w, "GET, POST")
	case domains:
		switch r.Method {
		case http.MethodGet:
			if err := checkQuery(r, "limit", "before_id", "domain", "filter"); err != nil {
				return err
			}
			return h.listDomains(w, r, uri)
		case http.MethodPost:
			if err := checkQuery(r); err != nil {
				return err
			}
			return h.createDomain(w, r)
		}
		return methodNotAllowed(w, "GET, POST")
	}
	if p == "/stored_certificates" && h.door.admin {
		if err := checkQuery(r); err != nil {
			return err
		}
		switch r.Method {
		case http.MethodGet:
			return h.listStoredCertificates(w, r)
		case http.MethodPost:
			return h.adoptStoredCertificate(w, r)
		}
		return methodNotAllowed(w, "GET, POST")
	}
	if id, ok := strings.CutPrefix(p, certs+"/"); ok && !strings.Contains(id, "/") {
		switch r.Method {
		case http.MethodGet, http.MethodPatch, http.MethodDelete:
			if err := checkQuery(r); err != nil {
				return err
			}
		}
		switch r.Method {
		case http.MethodGet:
			return h.getCertificate(w, r, id)
		case http.MethodPatch:
			return h.updateCertificate(w, r, id)
		case http.MethodDelete:
			return h.deleteCertificate(w, r, id)
		}
		return methodNotAllowed(w, "GET, PATCH, DELETE")
	}
	if rest, ok := strings.CutPrefix(p, domains+"/"); ok {
		id, sub, _ := strings.Cut(rest, "/")
		var allow []string
		switch sub {
		case "":
			allow = []string{http.MethodGet, http.MethodPatch, http.MethodDelete}
		case "certificate", "certificate_management_policy":
			allow = []string{http.MethodDelete}
		case "provision":
			allow = []string{http.MethodPost}
		default:
			return dcerr.New(dcerr.NotFound, "no such resource: %s", r.URL.Path)
		}
		if !slices.Contains(allow, r.Method) {
			return methodNotAllowed(w, strings.Join(allow, ", "))
		}
		if err := checkQuery(r); err != nil {
			return err
		}
		switch {
		case sub == "" && r.Method == http.MethodGet:
			return h.getDomain(w, r, id)
		case sub == "" && r.Method == http.MethodPatch:
			return h.updateDomain(w, r, id)
		case sub == "" && r.Method == http.MethodDelete:
			return h.deleteDomain(w, r, id)
		case sub == "certificate":
			return h.detach(w, r, id, h.store.DetachCertificate)
		case sub == "certificate_management_policy":
			return h.detach(w, r, id, h.store.DetachPolicy)
		default:
			return h.provisionDomain(w, r, id)
		}
	}
	if !h.door.admin {
		return dcerr.New(dcerr.NotFound, "no such resource: %s; the API's paths are /%s and /%s below where the handler is mounted (mount it with handle_path, which strips the prefix)",
			r.URL.Path, h.door.domains, certificatesName)
	}
	return dcerr.New(dcerr.NotFound, "no such resource: %s", r.URL.Path)
}

func methodNotAllowed(w http.ResponseWriter, allow string) error {
	w.Header().Set("Allow", allow)
	return dcerr.New(dcerr.MethodNotAllowed, "method not allowed; this path accepts %s", allow)
}
