package dnscheck

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
)

// labelEncoding is lowercase base32 without padding: only letters and
// digits 2–7, so every label it makes is a valid DNS label.
var labelEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// RandomTarget returns a new name under zone for a customer's record to
// point to (a cname_target or an acme_challenge_cname_target): a label of
// 16 base32 characters, 80 random bits, followed by zone (normalized:
// lowercase, no trailing dot). Nothing about a domain can be derived from
// it, and a name registered again gets a new one, so a CNAME that a former
// customer left in place does not validate for the next one.
func RandomTarget(zone string) string {
	var b [10]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return labelEncoding.EncodeToString(b[:]) + "." + normalize(zone)
}

// normalize lowercases name and removes one trailing dot.
func normalize(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}
