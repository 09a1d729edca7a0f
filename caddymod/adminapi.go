package caddymod

import (
	"errors"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// The admin API's place on the admin endpoint.
const (
	adminBase   = "/domaincerts"
	adminPrefix = adminBase + "/"
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
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
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
	h := app.apiHandler(a.log, door{base: adminBase, domains: "domains", admin: true})
	h.serve(w, r, strings.TrimPrefix(r.URL.Path, adminBase), r.URL.RequestURI())
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

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
