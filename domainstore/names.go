package domainstore

import (
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"github.com/domaincerts/caddy-domaincerts/internal/sniindex"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// NormalizeDomain validates a domain name as the API accepts it and returns
// its canonical form: lowercase ASCII, no trailing dot. A wildcard is "*."
// followed by a name of at least two labels. Internationalized names are
// accepted in Unicode (U-label) form and returned as A-labels ("xn--"),
// mapped by the IDNA rules that browsers use to look names up (UTS #46,
// nontransitional): uppercase and compatibility forms map to what they
// stand for, so "BÜCHER.example" is "xn--bcher-kva.example" and the
// KELVIN SIGN in "\u212aelvin.example" is a "k". A-labels must decode to a
// valid name. Underscores, empty labels, IP addresses, misplaced wildcards
// and names IDNA refuses are rejected with DOMAIN_INVALID.
func NormalizeDomain(name string) (string, error) {
	orig := name
	fail := func(why string) (string, error) {
		return "", dcerr.New(dcerr.DomainInvalid,
			"domain %q is not a valid DNS name: %s; use a name like app.example.com or *.example.com", orig, why).
			WithDetail("domain", orig)
	}
	if len(name) > 4*253 {
		// longer than any name could be in A-labels; not worth mapping
		return fail("it is longer than 253 characters")
	}
	if !utf8.ValidString(name) {
		return fail("it is not valid UTF-8")
	}
	if needsIDNA(name) {
		prefix, base := "", name
		if rest, ok := strings.CutPrefix(name, "*."); ok {
			prefix, base = "*.", rest
		}
		a, err := idnaProfile.ToASCII(base)
		if err == nil && a != base {
			// the A-labels must pass the checks themselves: the mapping can
			// produce labels (a right-to-left one with a Latin letter) that
			// idna accepts from U-labels but not back from A-labels
			_, err = idnaProfile.ToASCII(a)
		}
		if err != nil {
			return fail("it is not a valid internationalized name (" + err.Error() + ")")
		}
		name = prefix + a
	}
	return lexicalName(orig, name)
}

// storedName reports whether name is a domain name as the store keeps it:
// what lexicalName returns unchanged. Snapshots are checked with it, and
// records and journal entries with lexicalName, not with NormalizeDomain,
// so that a name an earlier version accepted stays readable.
func storedName(name string) bool {
	n, err := lexicalName(name, name)
	return err == nil && n == name
}

// lexicalName checks an ASCII name and returns it lowercased without its
// trailing dot: labels of a-z, 0-9 and hyphens, at most 63 characters,
// not starting or ending with a hyphen, a non-numeric last label, at least
// two labels, a wildcard only as the whole first label. orig is the name
// as given, for the error.
func lexicalName(orig, name string) (string, error) {
	fail := func(why string) (string, error) {
		return "", dcerr.New(dcerr.DomainInvalid,
			"domain %q is not a valid DNS name: %s; use a name like app.example.com or *.example.com", orig, why).
			WithDetail("domain", orig)
	}
	name = sniindex.LowerASCII(strings.TrimSuffix(name, "."))
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

// idnaProfile maps and checks internationalized names: UTS #46 mapping
// for lookup, nontransitional (ß stays ß), the Bidi rule, and DNS lengths;
// "--" in the third and fourth position is allowed, as in ASCII labels.
var idnaProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false), idna.VerifyDNSLength(true),
	idna.CheckHyphens(false)) // hyphens are checked for every label alike, by lexicalName

// needsIDNA reports whether name has non-ASCII characters or an A-label
// ("xn--") to check.
func needsIDNA(name string) bool {
	for i := 0; i < len(name); i++ {
		if name[i] >= utf8.RuneSelf {
			return true
		}
	}
	l := sniindex.LowerASCII(name)
	return strings.HasPrefix(l, "xn--") || strings.Contains(l, ".xn--")
}

func sniNormalize(name string) string { return sniindex.Normalize(name) }
