package dnscheck

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// labelEncoding is lowercase base32 without padding: only letters and
// digits 2–7, so every label it makes is a valid DNS label.
var labelEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Target returns the name under zone that the customer domain name must
// CNAME to (the cname_target): a 16-character label unique to name,
// followed by zone. The label is the lowercase base32 of the first 10
// bytes of SHA-256("domaincerts-cname\x00" + name).
//
// Both name and zone are normalized first (lowercased, trailing dot
// removed), so "App.Customer.com." and "app.customer.com" share a target.
// The result has no trailing dot. It is stable across releases: changing
// it would break every customer's DNS.
func Target(zone, name string) string {
	return label("domaincerts-cname\x00", name) + "." + normalize(zone)
}

// ChallengeTarget returns the name under zone that
// "_acme-challenge.<base>" must CNAME to (the acme_challenge_cname_target)
// for a wildcard customer domain "*.<base>". It is built like Target, from
// "domaincerts-acme\x00" + base, so it never equals a Target.
func ChallengeTarget(zone, base string) string {
	return label("domaincerts-acme\x00", base) + "." + normalize(zone)
}

func label(prefix, name string) string {
	sum := sha256.Sum256([]byte(prefix + normalize(name)))
	return labelEncoding.EncodeToString(sum[:10])
}

// normalize lowercases name and removes one trailing dot.
func normalize(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}
