// Package caddyfile registers the Caddyfile syntax of domaincerts:
//
//   - the global option `domaincerts { ... }`, which configures the app
//     (see caddymod.App.UnmarshalCaddyfile for its options);
//   - the site directive `domaincerts_load [<domain or cert_id>...]`, which
//     loads uploaded certificates into Caddy's certificate cache at config
//     load (the tls.certificates.domaincerts loader);
//   - the site directive `domaincerts_api { compat ngrok; api_keys ... }`,
//     the API on a site route (http.handlers.domaincerts_api), ordered after
//     metrics: after the handlers that guard a route (basic_auth,
//     forward_auth), with the other handlers that answer requests.
//
// Serving by SNI needs no new directive: `tls { get_certificate domaincerts }`
// uses the manager through Caddy's own tls directive.
package caddyfile

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/domaincerts/caddy-domaincerts/caddymod"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("domaincerts", parseGlobalOption)
	httpcaddyfile.RegisterDirective("domaincerts_load", parseLoadDirective)
	httpcaddyfile.RegisterHandlerDirective("domaincerts_api", parseAPIDirective)
	httpcaddyfile.RegisterDirectiveOrder("domaincerts_api", httpcaddyfile.After, "metrics")
}

// parseAPIDirective parses a domaincerts_api site directive (see
// caddymod.HTTPAPI.UnmarshalCaddyfile).
func parseAPIDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	api := new(caddymod.HTTPAPI)
	err := api.UnmarshalCaddyfile(h.Dispenser)
	return api, err
}

// parseGlobalOption parses the domaincerts global option into the app.
// The option may appear once.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("duplicate global option 'domaincerts'")
	}
	app := new(caddymod.App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "domaincerts", Value: caddyconfig.JSON(app, nil)}, nil
}

// parseLoadDirective parses a domaincerts_load site directive. Syntax:
//
//	domaincerts_load [<domain or cert_id>...]
func parseLoadDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	loader := new(caddymod.Loader)
	if err := loader.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return []httpcaddyfile.ConfigValue{{Class: "tls.cert_loader", Value: *loader}}, nil
}
