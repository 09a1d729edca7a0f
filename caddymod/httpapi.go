package caddymod

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

func init() {
	caddy.RegisterModule(HTTPAPI{})
}

// HTTPAPI serves the domaincerts API on a site route, for control planes
// that run on other hosts than the edge: the same endpoints, fields and
// error codes as the admin API, with paths relative to where the handler
// is mounted (`<mount>/domains`, `<mount>/tls_certificates`; mount it with
// handle_path so that the mount is stripped). Whatever handlers guard the
// route (basic_auth, forward_auth, client certificates) guard the API;
// api_keys adds bearer keys of its own.
//
// With compat "ngrok" it speaks ngrok's API dialect, so that ngrok's API
// clients (its SDKs, its Terraform provider) work by changing only their
// base URL and key: ngrok's paths and list keys (/reserved_domains,
// /tls_certificates), an absolute next_page_uri, bearer keys (required),
// the Ngrok-Version header, and filter expressions. ngrok's clients
// resolve absolute paths against their base URL, so serve this dialect at
// the root of a site (a host of its own, or `handle /reserved_domains*
// /tls_certificates*`).
type HTTPAPI struct {
	// Compat selects the dialect: "" (the API's own) or "ngrok".
	Compat string `json:"compat,omitempty"`

	// APIKeys are the keys a request must present as `Authorization:
	// Bearer <key>`; a request without one of them gets 401 UNAUTHORIZED.
	// Caddy placeholders are replaced when the config loads, so keys can
	// come from the environment ({env.DC_API_KEY}) rather than the config.
	// Keys are compared in constant time and never logged. Required with
	// compat "ngrok"; optional otherwise. They take the Authorization
	// header, so they do not combine with basic_auth on the same route.
	APIKeys []string `json:"api_keys,omitempty"`

	// PublicURL is the scheme and host clients reach the API at, e.g.
	// "https://ngrok-api.edge.example.net", for the absolute next_page_uri
	// of ngrok's dialect, which its clients follow with their key. Set it
	// behind a proxy that terminates TLS or rewrites Host. Default: the
	// request's scheme and Host.
	PublicURL string `json:"public_url,omitempty"`

	app  *App
	keys [][sha256.Size]byte
	log  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (HTTPAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.domaincerts_api",
		New: func() caddy.Module { return new(HTTPAPI) },
	}
}

// Provision finds the config's domaincerts app and reads the keys.
func (h *HTTPAPI) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	appIface, err := ctx.App("domaincerts")
	if err != nil {
		return fmt.Errorf("getting the domaincerts app: %w", err)
	}
	h.app = appIface.(*App)
	return h.provisionKeys()
}

// provisionKeys replaces the placeholders of the keys and keeps their
// hashes, which the comparison needs (of equal length, in constant time).
func (h *HTTPAPI) provisionKeys() error {
	repl := caddy.NewReplacer()
	h.keys = nil
	for i, k := range h.APIKeys {
		key := strings.TrimSpace(repl.ReplaceKnown(k, ""))
		if key == "" {
			return fmt.Errorf("api_keys entry %d is empty after replacing placeholders (is its environment variable set?)", i+1)
		}
		h.keys = append(h.keys, sha256.Sum256([]byte(key)))
	}
	return nil
}

// Validate checks the dialect and that ngrok's has keys.
func (h *HTTPAPI) Validate() error {
	switch h.Compat {
	case "":
	case "ngrok":
		if len(h.APIKeys) == 0 {
			return fmt.Errorf(`compat "ngrok" needs api_keys: ngrok's clients always authenticate with a bearer key`)
		}
	default:
		return fmt.Errorf(`compat must be "ngrok" or left out, not %q`, h.Compat)
	}
	if h.PublicURL != "" {
		u, err := url.Parse(h.PublicURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return fmt.Errorf("public_url %q must be a scheme and host, such as https://api.example.net", h.PublicURL)
		}
	}
	return nil
}

// ServeHTTP answers an API request; it never calls next.
func (h *HTTPAPI) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	ngrok := h.Compat == "ngrok"
	if len(h.keys) > 0 && !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="domaincerts"`)
		writeError(w, dcerr.New(dcerr.Unauthorized, "missing or wrong API key; send Authorization: Bearer <key>"))
		return nil
	}
	if v := r.Header.Get("Ngrok-Version"); ngrok && v != "" && v != "2" {
		writeError(w, dcerr.New(dcerr.BadRequest, "Ngrok-Version %q is not supported; this API speaks version 2", v))
		return nil
	}
	// the mount: what handle_path (or uri strip_prefix) took off the
	// front of the path, as the client sent it
	uri, base := r.URL.RequestURI(), ""
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
		uri = orig.URL.RequestURI()
		p, cur := orig.URL.EscapedPath(), r.URL.EscapedPath()
		if prefix, ok := strings.CutSuffix(p, cur); ok && strings.HasPrefix(cur, "/") {
			base = strings.TrimSuffix(prefix, "/")
		}
	}
	d := door{base: base, domains: "domains"}
	if ngrok {
		origin := strings.TrimSuffix(h.PublicURL, "/")
		if origin == "" {
			scheme := "http"
			if r.TLS != nil {
				scheme = "https"
			}
			origin = scheme + "://" + r.Host
		}
		d.domains, d.ngrok, d.origin = "reserved_domains", true, origin
	}
	h.app.apiHandler(h.log, d).serve(w, r, r.URL.Path, uri)
	return nil
}

// authorized reports whether r carries one of the keys. Every key is
// compared, in constant time, whatever matches.
func (h *HTTPAPI) authorized(r *http.Request) bool {
	scheme, key, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(key)))
	match := 0
	for i := range h.keys {
		match |= subtle.ConstantTimeCompare(sum[:], h.keys[i][:])
	}
	return match == 1
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	domaincerts_api {
//		compat ngrok
//		api_keys <key>...
//		public_url <scheme://host>
//	}
func (h *HTTPAPI) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "compat":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Compat = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "api_keys":
			keys := d.RemainingArgs()
			if len(keys) == 0 {
				return d.ArgErr()
			}
			h.APIKeys = append(h.APIKeys, keys...)
		case "public_url":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.PublicURL = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unknown domaincerts_api option %q (compat, api_keys, public_url)", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*HTTPAPI)(nil)
	_ caddy.Validator             = (*HTTPAPI)(nil)
	_ caddyhttp.MiddlewareHandler = (*HTTPAPI)(nil)
	_ caddyfile.Unmarshaler       = (*HTTPAPI)(nil)
)
