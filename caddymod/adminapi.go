package caddymod

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// API paths.
const (
	apiPrefix           = "/domaincerts/"
	certificatesPath    = "/domaincerts/tls_certificates"
	domainsPath         = "/domaincerts/domains"
	maxRequestBodyBytes = 256 << 10
)

// adminAPI is the admin API of domaincerts, mounted on Caddy's admin
// endpoint under /domaincerts/: TLS certificates and domains, following
// ngrok's API model. Caddy rebuilds admin modules on every config load and
// never cleans them up, so the module holds no state: each request finds
// the running app.
type adminAPI struct {
	log *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.domaincerts",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision sets up the module. It must not load the app: admin modules
// are provisioned before apps.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.log = ctx.Logger(a) // passing a is needed until admin modules get a config (caddy#5032)
	return nil
}

// Routes returns the admin routes.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: apiPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// serve routes a request below /domaincerts/. Errors are written here, in
// the contract's shape, so the handler returns nil except when writing
// fails.
func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	app, err := runningApp()
	if err != nil {
		writeError(w, err)
		return nil
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBodyBytes)
	h := &handler{store: app.inst.store, acme: app.acme, log: a.log, expiryWarning: time.Duration(app.ExpiryWarning)}
	err = h.route(w, r)
	if err != nil {
		switch code := dcerr.CodeOf(err); code {
		case dcerr.Internal:
			a.log.Error("admin request failed", zap.String("method", r.Method),
				zap.String("path", r.URL.Path), zap.Error(err))
		case dcerr.StorageUnavailable, dcerr.RecordDamaged:
			a.log.Warn("admin request failed", zap.String("method", r.Method),
				zap.String("path", r.URL.Path), zap.String("error_code", string(code)),
				zap.NamedError("cause", errors.Unwrap(err)))
		}
		writeError(w, err)
	}
	return nil
}

// runningApp finds the running config's domaincerts app.
func runningApp() (*App, error) {
	appIface, err := caddy.ActiveContext().AppIfConfigured("domaincerts")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return nil, &dcerr.Error{Code: dcerr.NotFound,
				Msg: `the domaincerts app is not configured; add "apps": {"domaincerts": {}} to the config`}
		}
		return nil, err
	}
	app, ok := appIface.(*App)
	if !ok || app.inst == nil {
		return nil, errors.New("domaincerts app is not provisioned")
	}
	return app, nil
}

type handler struct {
	store *domainstore.Store
	acme  *certsource.ACME // nil until the app has started
	log   *zap.Logger
	// expiryWarning is the app's expiry_warning
	expiryWarning time.Duration
}

// route dispatches on path and method.
func (h *handler) route(w http.ResponseWriter, r *http.Request) error {
	p := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case p == certificatesPath:
		switch r.Method {
		case http.MethodGet:
			return h.listCertificates(w, r)
		case http.MethodPost:
			return h.createCertificate(w, r)
		}
		return methodNotAllowed(w, "GET, POST")
	case p == domainsPath:
		switch r.Method {
		case http.MethodGet:
			return h.listDomains(w, r)
		case http.MethodPost:
			return h.createDomain(w, r)
		}
		return methodNotAllowed(w, "GET, POST")
	}
	if id, ok := strings.CutPrefix(p, certificatesPath+"/"); ok && !strings.Contains(id, "/") {
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
	if rest, ok := strings.CutPrefix(p, domainsPath+"/"); ok {
		id, sub, _ := strings.Cut(rest, "/")
		switch sub {
		case "":
			switch r.Method {
			case http.MethodGet:
				return h.getDomain(w, r, id)
			case http.MethodPatch:
				return h.updateDomain(w, r, id)
			case http.MethodDelete:
				return h.deleteDomain(w, r, id)
			}
			return methodNotAllowed(w, "GET, PATCH, DELETE")
		case "certificate":
			if r.Method != http.MethodDelete {
				return methodNotAllowed(w, "DELETE")
			}
			return h.detach(w, r, id, h.store.DetachCertificate)
		case "certificate_management_policy":
			if r.Method != http.MethodDelete {
				return methodNotAllowed(w, "DELETE")
			}
			return h.detach(w, r, id, h.store.DetachPolicy)
		case "provision":
			if r.Method != http.MethodPost {
				return methodNotAllowed(w, "POST")
			}
			return h.provisionDomain(w, r, id)
		}
	}
	return dcerr.New(dcerr.NotFound, "no such resource: %s", r.URL.Path)
}

func methodNotAllowed(w http.ResponseWriter, allow string) error {
	w.Header().Set("Allow", allow)
	return dcerr.New(dcerr.MethodNotAllowed, "method not allowed; this path accepts %s", allow)
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
