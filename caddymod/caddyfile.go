package caddymod

import (
	"encoding/json"
	"math"
	"strconv"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the app from the tokens of the domaincerts
// global option. Syntax:
//
//	domaincerts {
//		cache_capacity <n>
//		cache_memory <size>
//		hot_certificates <n>|off
//		fallback_certificate_id <cert_id>
//		default_authority <name>
//		issuer <name> <module> [<module args...>] {
//			<module options>
//		}
//		zones <zone...>
//		edge_addresses <ip...>
//		cname_target <host>
//		cname_zone <zone>
//		challenge_zone <zone>
//		delegate_dns01 wildcards|all
//		dns_server [<listen>] {
//			ns <host>
//		}
//		dns_provider <module> [<module args...>] { <module options> }
//		dns_ttl <duration>
//		propagation_delay <duration>
//		propagation_timeout <duration>
//		resolvers <host:port...>
//		retry_min_interval <duration>
//		retry_max_interval <duration>
//		provisioning_timeout <duration>
//		expiry_warning <duration>
//		expiry_check_interval <duration>
//		renew_check_interval <duration>
//		renewal_window_ratio <ratio>
//		sync_interval <duration>
//		storage_timeout <duration>
//	}
//
// Options have the names of the JSON fields (issuer, repeated, fills
// issuers). issuer and zones/resolvers may repeat; every other option may
// appear once (edge_addresses may repeat too). Older spellings are accepted: fallback_certificate for
// fallback_certificate_id, and retry_interval <min> [<max>] for the two
// retry options.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		opt := d.Val()
		if alias, ok := optionAliases[opt]; ok {
			opt = alias
		}
		switch opt {
		case "issuer", "zones", "resolvers", "edge_addresses":
		default:
			if seen[opt] {
				return d.Errf("duplicate domaincerts option '%s'", d.Val())
			}
		}
		seen[opt] = true
		var err error
		switch opt {
		case "cache_capacity":
			err = parseInt(d, &a.CacheCapacity)
		case "cache_memory":
			err = parseSize(d, &a.CacheMemory)
		case "hot_certificates":
			err = parseHot(d, &a.HotCertificates)
		case "fallback_certificate_id":
			err = oneArg(d, &a.FallbackCertificateID)
		case "default_authority":
			err = oneArg(d, &a.DefaultAuthority)
		case "issuer":
			err = a.parseIssuer(d)
		case "zones":
			a.Zones, err = appendArgs(d, a.Zones)
		case "edge_addresses":
			a.EdgeAddresses, err = appendArgs(d, a.EdgeAddresses)
		case "cname_target":
			err = oneArg(d, &a.CNAMETarget)
		case "cname_zone":
			err = oneArg(d, &a.CNAMEZone)
		case "delegate_dns01":
			err = oneArg(d, &a.DelegateDNS01)
		case "challenge_zone":
			err = oneArg(d, &a.ChallengeZone)
		case "dns_server":
			err = a.parseDNSServer(d)
		case "dns_provider":
			err = a.parseDNSProvider(d)
		case "dns_ttl":
			err = parseDuration(d, &a.DNSTTL)
		case "propagation_delay":
			err = parseDuration(d, &a.PropagationDelay)
		case "propagation_timeout":
			err = parseDuration(d, &a.PropagationTimeout)
		case "resolvers":
			a.Resolvers, err = appendArgs(d, a.Resolvers)
		case "retry_interval":
			if seen["retry_min_interval"] || seen["retry_max_interval"] {
				return d.Err("retry_interval sets retry_min_interval and retry_max_interval; give one or the others")
			}
			err = parseRetry(d, a)
		case "retry_min_interval", "retry_max_interval":
			if seen["retry_interval"] {
				return d.Err("retry_interval sets retry_min_interval and retry_max_interval; give one or the others")
			}
			dst := &a.RetryMinInterval
			if opt == "retry_max_interval" {
				dst = &a.RetryMaxInterval
			}
			err = parseDuration(d, dst)
		case "provisioning_timeout":
			err = parseDuration(d, &a.ProvisioningTimeout)
		case "expiry_warning":
			err = parseDuration(d, &a.ExpiryWarning)
		case "expiry_check_interval":
			err = parseDuration(d, &a.ExpiryCheckInterval)
		case "renew_check_interval":
			err = parseDuration(d, &a.RenewCheckInterval)
		case "sync_interval":
			err = parseDuration(d, &a.SyncInterval)
		case "storage_timeout":
			err = parseDuration(d, &a.StorageTimeout)
		case "renewal_window_ratio":
			var s string
			if err = oneArg(d, &s); err == nil {
				if a.RenewalWindowRatio, err = strconv.ParseFloat(s, 64); err != nil {
					err = d.Errf("renewal_window_ratio: %v", err)
				}
			}
		default:
			return d.Errf("unrecognized domaincerts option '%s'", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// optionAliases maps older Caddyfile spellings to the option names, which
// are the JSON field names.
var optionAliases = map[string]string{
	"fallback_certificate": "fallback_certificate_id",
}

func (a *App) parseIssuer(d *caddyfile.Dispenser) error {
	var name, mod string
	if !d.NextArg() {
		return d.ArgErr()
	}
	name = d.Val()
	if !d.NextArg() {
		return d.Errf("issuer %s: missing module name (e.g. acme or internal)", name)
	}
	mod = d.Val()
	if _, dup := a.Issuers[name]; dup {
		return d.Errf("duplicate issuer '%s'", name)
	}
	unm, err := caddyfile.UnmarshalModule(d, "tls.issuance."+mod)
	if err != nil {
		return err
	}
	if a.Issuers == nil {
		a.Issuers = make(map[string]json.RawMessage)
	}
	a.Issuers[name] = caddyconfig.JSONModuleObject(unm, "module", mod, nil)
	return nil
}

func (a *App) parseDNSServer(d *caddyfile.Dispenser) error {
	a.DNSServer = new(DNSServerConfig)
	if d.NextArg() {
		a.DNSServer.Listen = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "ns":
			if a.DNSServer.NS != "" {
				return d.Err("duplicate dns_server option 'ns'")
			}
			if err := oneArg(d, &a.DNSServer.NS); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized dns_server option '%s'", d.Val())
		}
	}
	return nil
}

func (a *App) parseDNSProvider(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	name := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, "dns.providers."+name)
	if err != nil {
		return err
	}
	a.DNSProviderRaw = caddyconfig.JSONModuleObject(unm, "name", name, nil)
	return nil
}

func parseRetry(d *caddyfile.Dispenser, a *App) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.ArgErr()
	}
	for i, s := range args {
		dur, err := caddy.ParseDuration(s)
		if err != nil {
			return d.Errf("retry_interval: %v", err)
		}
		if i == 0 {
			a.RetryMinInterval = caddy.Duration(dur)
		} else {
			a.RetryMaxInterval = caddy.Duration(dur)
		}
	}
	return noBlock(d)
}

func parseDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%v", err)
	}
	*dst = caddy.Duration(dur)
	return nil
}

func parseInt(d *caddyfile.Dispenser, dst *int) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return d.Errf("not a whole number: %s", s)
	}
	*dst = n
	return nil
}

// parseHot reads hot_certificates: a count, or off (-1).
func parseHot(d *caddyfile.Dispenser, dst *int) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	if s == "off" {
		*dst = -1
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return d.Errf("hot_certificates takes a count or off, got %s", s)
	}
	*dst = n
	return nil
}

// parseSize reads one size in bytes, plain or with a unit (512MiB, 1GB).
func parseSize(d *caddyfile.Dispenser, dst *int64) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n > math.MaxInt64 {
		return d.Errf("not a size in bytes (e.g. 536870912, 512MiB or 1GB): %s", s)
	}
	*dst = int64(n)
	return nil
}

// oneArg reads exactly one argument and no block.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return noBlock(d)
}

func appendArgs(d *caddyfile.Dispenser, dst []string) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return dst, d.ArgErr()
	}
	return append(dst, args...), noBlock(d)
}

func noBlock(d *caddyfile.Dispenser) error {
	if d.NextBlock(d.Nesting()) {
		return d.Errf("'%s' takes no block", d.Val())
	}
	return nil
}
