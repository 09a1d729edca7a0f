package caddymod

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/certsource"
)

// defaultIssuers is used when the app configures none: Let's Encrypt.
var defaultIssuers = map[string]json.RawMessage{"letsencrypt": json.RawMessage(`{"module": "acme"}`)}

// proxyFunc is a network proxy of an ACME issuer (its "network_proxy").
type proxyFunc = func(*http.Request) (*url.URL, error)

// issuerModule returns the module name of an issuer's JSON.
func issuerModule(raw json.RawMessage) (string, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return "", fmt.Errorf("decoding issuer: %w", err)
	}
	var name string
	if err := json.Unmarshal(fields["module"], &name); err != nil || name == "" {
		return "", fmt.Errorf(`issuer needs a "module" naming a tls.issuance module, such as "acme" or "internal"`)
	}
	return name, nil
}

// loadIssuers loads and provisions the configured issuers (Provision has
// put the default in when none are), so that a configuration error shows
// in `caddy validate`. The
// ACME issuers' challenge ports are set in Start (loadAuthorities).
func (a *App) loadIssuers(ctx caddy.Context) error {
	a.proxies = make(map[string]proxyFunc)
	for _, name := range a.issuerNames {
		mod, err := issuerModule(a.Issuers[name])
		if err != nil {
			return fmt.Errorf("issuer %q: %w", name, err)
		}
		if mod == "acme" {
			// CertMagic's DNS-01 issuer, built from the ACME issuer,
			// needs the proxy, which the issuer keeps to itself
			proxy, err := loadNetworkProxy(ctx, a.Issuers[name])
			if err != nil {
				return fmt.Errorf("issuer %q: %w", name, err)
			}
			a.proxies[name] = proxy
		}
	}
	vals, err := ctx.LoadModule(a, "Issuers")
	if err != nil {
		return fmt.Errorf("loading issuers: %w", err)
	}
	a.issuerMods = make(map[string]certmagic.Issuer)
	for name, val := range vals.(map[string]any) {
		iss, ok := val.(certmagic.Issuer)
		if !ok {
			return fmt.Errorf("issuer %q: %T is not an issuer", name, val)
		}
		a.issuerMods[name] = iss
	}
	return nil
}

// loadNetworkProxy loads the network_proxy of an ACME issuer's JSON, if it
// has one.
func loadNetworkProxy(ctx caddy.Context, raw json.RawMessage) (proxyFunc, error) {
	var fields struct {
		NetworkProxy json.RawMessage `json:"network_proxy"`
	}
	if err := json.Unmarshal(raw, &fields); err != nil || len(fields.NetworkProxy) == 0 {
		return nil, nil
	}
	var from struct {
		From string `json:"from"`
	}
	if err := json.Unmarshal(fields.NetworkProxy, &from); err != nil || from.From == "" {
		return nil, errors.New(`network_proxy needs "from" naming a caddy.network_proxy module, such as "url" or "none"`)
	}
	var rest map[string]json.RawMessage
	_ = json.Unmarshal(fields.NetworkProxy, &rest)
	delete(rest, "from")
	restJSON, err := json.Marshal(rest)
	if err != nil {
		return nil, err
	}
	val, err := ctx.LoadModuleByID("caddy.network_proxy."+from.From, restJSON)
	if err != nil {
		return nil, fmt.Errorf("loading network_proxy: %w", err)
	}
	p, ok := val.(caddy.ProxyFuncProducer)
	if !ok {
		return nil, fmt.Errorf("network_proxy module %q does not produce a proxy", from.From)
	}
	return p.ProxyFunc(), nil
}

// loadAuthorities makes authorities of the issuers that Provision loaded.
// ACME issuers get Caddy's HTTP and HTTPS ports as their challenge ports
// (unless they name their own) and are provisioned again with them, so
// that Caddy's own servers answer HTTP-01 and TLS-ALPN-01 challenges.
func (a *App) loadAuthorities(ctx caddy.Context) (map[string]certsource.Authority, error) {
	httpPort, httpsPort := serverPorts(ctx)
	out := make(map[string]certsource.Authority)
	for name, iss := range a.issuerMods {
		if acmeIss, ok := iss.(*caddytls.ACMEIssuer); ok {
			setChallengePorts(acmeIss, httpPort, httpsPort)
			if err := acmeIss.Provision(ctx); err != nil {
				return nil, fmt.Errorf("issuer %q: provisioning acme issuer: %w", name, err)
			}
			out[name] = acmeAuthority(name, acmeIss, a.proxies[name], a.dnsProviderConfig(ctx))
			continue
		}
		out[name] = certsource.Authority{
			Name: name,
			NewIssuer: func(cfg *certmagic.Config, _ certsource.DNS01) (certmagic.Issuer, error) {
				if cs, ok := iss.(caddytls.ConfigSetter); ok {
					cs.SetConfig(cfg)
				}
				return iss, nil
			},
		}
	}
	return out, nil
}

// dnsProvider says how DNS-01 records are written through a DNS provider:
// the provider's JSON (nil: the tls app's global "dns" provider) and
// CertMagic's settings for them.
type dnsProvider struct {
	ctx                caddy.Context
	json               json.RawMessage
	ttl                caddy.Duration
	propagationDelay   caddy.Duration
	propagationTimeout caddy.Duration
	resolvers          []string
}

func (a *App) dnsProviderConfig(ctx caddy.Context) dnsProvider {
	timeout := a.PropagationTimeout
	if timeout < 0 {
		timeout = -1 // CertMagic's "no propagation check"
	}
	return dnsProvider{
		ctx: ctx, json: a.dnsProviderJSON, ttl: a.DNSTTL,
		propagationDelay: a.PropagationDelay, propagationTimeout: timeout,
		resolvers: a.Resolvers,
	}
}

// acmeAuthority builds issuers from a provisioned Caddy ACME issuer: a
// copy of it for HTTP-01 and TLS-ALPN-01; a copy whose DNS-01 challenges
// CertMagic's DNS01Solver solves through the DNS provider, writing the
// record at dns01.Target (its override_domain); or a CertMagic ACME
// issuer with the same CA and account settings and the built-in store's
// DNS-01 solver.
func acmeAuthority(name string, tmpl *caddytls.ACMEIssuer, proxy proxyFunc, provider dnsProvider) certsource.Authority {
	return certsource.Authority{
		Name:           name,
		ValidatesNames: true,
		NewIssuer: func(cfg *certmagic.Config, dns01 certsource.DNS01) (certmagic.Issuer, error) {
			switch {
			case dns01.IsZero():
				iss := *tmpl // the provisioned template is copied; SetConfig binds the copy
				iss.SetConfig(cfg)
				return quietCaddyACME{&iss}, nil
			case dns01.Target != "":
				iss := *tmpl
				if tmpl.ExternalAccount != nil {
					// Provision writes the account binding's expanded
					// values back: into a copy, not the template's
					ea := *tmpl.ExternalAccount
					iss.ExternalAccount = &ea
				}
				iss.Challenges = &caddytls.ChallengesConfig{DNS: &caddytls.DNSChallengeConfig{
					ProviderRaw:        slices.Clone(provider.json),
					TTL:                provider.ttl,
					PropagationDelay:   provider.propagationDelay,
					PropagationTimeout: provider.propagationTimeout,
					Resolvers:          provider.resolvers,
					OverrideDomain:     dns01.Target,
				}}
				if err := iss.Provision(provider.ctx); err != nil {
					return nil, fmt.Errorf("setting up DNS-01 through the DNS provider: %w", err)
				}
				iss.SetConfig(cfg)
				return quietCaddyACME{&iss}, nil
			}
			roots, err := loadRoots(tmpl.TrustedRootsPEMFiles)
			if err != nil {
				return nil, err
			}
			var chains certmagic.ChainPreference
			if p := tmpl.PreferredChains; p != nil {
				chains = certmagic.ChainPreference{Smallest: p.Smallest, AnyCommonName: p.AnyCommonName, RootCommonName: p.RootCommonName}
			}
			iss := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
				CA:                tmpl.CA,
				TestCA:            tmpl.TestCA,
				Email:             tmpl.Email,
				Profile:           tmpl.Profile,
				AccountKeyPEM:     tmpl.AccountKey,
				Agreed:            true,
				ExternalAccount:   tmpl.ExternalAccount,
				CertObtainTimeout: time.Duration(tmpl.ACMETimeout),
				NotAfter:          time.Duration(tmpl.CertificateLifetime),
				PreferredChains:   chains,
				HTTPProxy:         proxy,
				TrustedRoots:      roots,
				DNS01Solver:       dns01.Solver,
				Logger:            cfg.Logger,
			})
			if tmpl.Email != "" {
				// nothing to prompt for; unwrapped, CertMagic can link a
				// renewal to the certificate it replaces (ARI)
				return iss, nil
			}
			return quietACME{iss}, nil
		},
	}
}

// Provisioning jobs obtain certificates one attempt at a time
// (Config.ObtainCertSync) and retry on their own schedule. CertMagic treats
// such attempts as interactive and may then prompt on standard input for
// an ACME account email, which would block a job forever. These wrappers
// make the issuers' pre-checks non-interactive; everything else (Issue,
// Revoke, renewal info) is the wrapped issuer's.
type (
	quietCaddyACME struct{ *caddytls.ACMEIssuer }
	quietACME      struct{ *certmagic.ACMEIssuer }
)

// PreCheck runs the issuer's pre-check without prompts.
func (q quietCaddyACME) PreCheck(ctx context.Context, names []string, _ bool) error {
	return q.ACMEIssuer.PreCheck(ctx, names, false)
}

// PreCheck runs the issuer's pre-check without prompts.
func (q quietACME) PreCheck(ctx context.Context, names []string, _ bool) error {
	return q.ACMEIssuer.PreCheck(ctx, names, false)
}

func loadRoots(files []string) (*x509.CertPool, error) {
	if len(files) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading trusted roots: %w", err)
		}
		if !pool.AppendCertsFromPEM(bytes.TrimSpace(b)) {
			return nil, fmt.Errorf("no certificates in trusted roots file %s", f)
		}
	}
	return pool, nil
}

// setChallengePorts points an ACME issuer's HTTP and TLS-ALPN challenges at
// Caddy's own ports unless it names its own.
func setChallengePorts(iss *caddytls.ACMEIssuer, httpPort, httpsPort int) {
	if iss.Challenges == nil {
		iss.Challenges = new(caddytls.ChallengesConfig)
	}
	if iss.Challenges.HTTP == nil {
		iss.Challenges.HTTP = new(caddytls.HTTPChallengeConfig)
	}
	if iss.Challenges.HTTP.AlternatePort == 0 {
		iss.Challenges.HTTP.AlternatePort = httpPort
	}
	if iss.Challenges.TLSALPN == nil {
		iss.Challenges.TLSALPN = new(caddytls.TLSALPNChallengeConfig)
	}
	if iss.Challenges.TLSALPN.AlternatePort == 0 {
		iss.Challenges.TLSALPN.AlternatePort = httpsPort
	}
}

// serverPorts returns the HTTP and HTTPS ports of Caddy's http app, or
// the defaults (80, 443) when it has none. It is called from Start, when
// every app is provisioned.
func serverPorts(ctx caddy.Context) (int, int) {
	httpPort, httpsPort := caddyhttp.DefaultHTTPPort, caddyhttp.DefaultHTTPSPort
	if appIface, err := ctx.AppIfConfigured("http"); err == nil {
		if app, ok := appIface.(*caddyhttp.App); ok {
			if app.HTTPPort != 0 {
				httpPort = app.HTTPPort
			}
			if app.HTTPSPort != 0 {
				httpsPort = app.HTTPSPort
			}
		}
	}
	return httpPort, httpsPort
}

// policyIssuerKeys returns the storage keys of the ACME issuers of Caddy's
// own tls automation policies, and of Caddy's default issuers (for names
// that no policy matches): Caddy looks for the data of an HTTP-01 or
// TLS-ALPN-01 challenge that reaches it under these keys, so the app's
// challenges are written there too (certsource.ChallengeMirror). It is
// called from Start, when the tls app is provisioned.
func policyIssuerKeys(ctx caddy.Context) []string {
	cas := []string{certmagic.LetsEncryptProductionCA, certmagic.LetsEncryptStagingCA}
	if appIface, err := ctx.AppIfConfigured("tls"); err == nil {
		if app, ok := appIface.(*caddytls.TLS); ok && app.Automation != nil {
			for _, ap := range app.Automation.Policies {
				for _, iss := range ap.Issuers {
					if acme, ok := iss.(interface{ GetACMEIssuer() *caddytls.ACMEIssuer }); ok {
						cas = append(cas, acme.GetACMEIssuer().CA, acme.GetACMEIssuer().TestCA)
					}
				}
			}
		}
	}
	var keys []string
	for _, ca := range cas {
		if ca == "" {
			continue
		}
		if k := (&certmagic.ACMEIssuer{CA: ca}).IssuerKey(); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// tlsAppHasDNS reports whether the tls app has a global "dns" provider
// (the Caddyfile's global dns option). The tls app keeps it to itself; an
// ACME issuer with DNS-01 and no provider of its own uses it, so one is
// provisioned to find out.
func tlsAppHasDNS(ctx caddy.Context) bool {
	probe := &caddytls.ACMEIssuer{Challenges: &caddytls.ChallengesConfig{DNS: &caddytls.DNSChallengeConfig{}}}
	return probe.Provision(ctx) == nil
}
