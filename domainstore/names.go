package domainstore

import (
	"net/netip"
	"strings"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// NormalizeDomain validates a domain name as the API accepts it and returns
// its canonical form: lowercase, no trailing dot. A wildcard is "*." followed
// by a name of at least two labels. Names must be ASCII (use the IDNA
// "xn--" form for internationalized names); underscores, empty labels,
// IP addresses and misplaced wildcards are rejected with DOMAIN_INVALID.
func NormalizeDomain(name string) (string, error) {
	orig := name
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	fail := func(why string) (string, error) {
		return "", dcerr.New(dcerr.DomainInvalid,
			"domain %q is not a valid DNS name: %s; use a name like app.example.com or *.example.com", orig, why).
			WithDetail("domain", orig)
	}
	if name == "" {
		return fail("it is empty")
	}
	if len(name) > 253 {
		return fail("it is longer than 253 characters")
	}
	if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return fail("it is an IP address")
	}
	base := name
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		base = rest
	}
	if strings.Contains(base, "*") {
		return fail("a wildcard is allowed only as the whole first label (*.)")
	}
	labels := strings.Split(base, ".")
	if len(labels) < 2 {
		if base != name {
			return fail("a wildcard needs at least two labels after *.")
		}
		return fail("it needs at least two labels")
	}
	for _, l := range labels {
		if l == "" {
			return fail("it has an empty label")
		}
		if len(l) > 63 {
			return fail("a label is longer than 63 characters")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fail("a label starts or ends with a hyphen")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
			case c == '_':
				return fail("it contains an underscore")
			default:
				return fail("it contains a character other than a-z, 0-9, hyphen and dot")
			}
		}
	}
	tld := labels[len(labels)-1]
	if strings.Trim(tld, "0123456789") == "" {
		return fail("its last label is numeric")
	}
	return name, nil
}

func sniNormalize(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}
