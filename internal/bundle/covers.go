package bundle

import (
	"crypto/x509"
	"strings"
)

// Covers reports whether leaf is valid for domain, a DNS name such as
// "a.example.com" or a wildcard such as "*.example.com". Case and a trailing
// dot are ignored. Only DNS subject alternative names count; the subject
// common name is used only when the certificate has no subject alternative
// names at all. A wildcard name "*.example.com" in the certificate covers
// "a.example.com" and "*.example.com", but neither "example.com" nor
// "a.b.example.com"; a certificate for "a.example.com" does not cover
// "*.example.com".
func Covers(leaf *x509.Certificate, domain string) bool {
	if leaf == nil {
		return false
	}
	domain = normalizeName(domain)
	if domain == "" {
		return false
	}
	names := leaf.DNSNames
	if len(names) == 0 && len(leaf.IPAddresses) == 0 && len(leaf.EmailAddresses) == 0 && len(leaf.URIs) == 0 {
		names = []string{leaf.Subject.CommonName}
	}
	for _, n := range names {
		if nameCovers(normalizeName(n), domain) {
			return true
		}
	}
	return false
}

// nameCovers reports whether the certificate name pattern covers domain; both
// are normalized.
func nameCovers(pattern, domain string) bool {
	if pattern == "" {
		return false
	}
	if pattern == domain {
		return !strings.Contains(strings.TrimPrefix(pattern, "*."), "*")
	}
	suffix, ok := strings.CutPrefix(pattern, "*.")
	if !ok || suffix == "" || strings.Contains(suffix, "*") {
		return false
	}
	label, rest, ok := strings.Cut(domain, ".")
	return ok && rest == suffix && label != "" && label != "*"
}

// normalizeName lowercases a DNS name and drops one trailing dot.
func normalizeName(s string) string {
	return strings.ToLower(strings.TrimSuffix(s, "."))
}
