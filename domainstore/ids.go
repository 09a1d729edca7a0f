package domainstore

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

// Prefixes of record IDs.
const (
	CertificatePrefix = "cert_"
	DomainPrefix      = "rd_"
)

// alphabet is Crockford's base32 in lowercase; it sorts like the numbers
// it encodes, so IDs sort by creation time.
const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"

var (
	idMu   sync.Mutex
	idLast uint64 // milliseconds of the last ID, kept strictly increasing
)

// newID returns prefix followed by 26 characters: 50 bits of creation time
// in milliseconds (strictly increasing within this process) and 80 random
// bits. IDs are URL-safe and unguessable, and they sort newest last.
func newID(prefix string) string {
	ms := uint64(time.Now().UnixMilli())
	idMu.Lock()
	if ms <= idLast {
		ms = idLast + 1
	}
	idLast = ms
	idMu.Unlock()

	var rnd [10]byte
	_, _ = rand.Read(rnd[:]) // crypto/rand.Read never fails on supported platforms
	hi := binary.BigEndian.Uint64(rnd[0:8])
	lo := uint64(binary.BigEndian.Uint16(rnd[8:10]))

	var out [26]byte
	// 10 characters of time (50 bits)
	for i := 9; i >= 0; i-- {
		out[i] = alphabet[ms&31]
		ms >>= 5
	}
	// 16 characters of randomness (80 bits): 64 bits of hi, 16 of lo
	r := hi
	for i := 0; i < 12; i++ {
		out[10+i] = alphabet[r&31]
		r >>= 5
	}
	r = r | lo<<4 // the 4 bits left of hi, then 16 bits of lo
	for i := 12; i < 16; i++ {
		out[10+i] = alphabet[r&31]
		r >>= 5
	}
	return prefix + string(out[:])
}

// ValidID reports whether id is an ID of the kind prefix names
// (CertificatePrefix, DomainPrefix).
func ValidID(prefix, id string) bool { return validID(prefix, id) }

// validID reports whether id has the given prefix and the shape of newID's
// output, so that it can be used in a storage key.
func validID(prefix, id string) bool {
	rest, ok := cutPrefix(id, prefix)
	if !ok || len(rest) != 26 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || s[:len(prefix)] != prefix {
		return s, false
	}
	return s[len(prefix):], true
}
