package certsource

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
)

// Heap bytes that a cached certificate takes besides its leaf's DER and
// names, and its private key, by key type. They were measured with
// TestCertMemoryEstimate (Go 1.26, amd64) on certificates loaded the way
// the handshake path loads them; keep them in step with it.
const (
	// the cache entry, its map and ring slots and ID, the tls.Certificate
	// and the trimmed parsed leaf
	entryOverhead = 2340
	// per name on the leaf, besides its length (the string and its slot)
	nameOverhead = 32
	// a parsed and precomputed RSA key: a base and per byte of modulus
	rsaKeyBase             = 2150
	rsaBytesPerModulusByte = 9
	// a parsed ECDSA key: a base and per byte of field size
	ecdsaKeyBase           = 220
	ecdsaBytesPerFieldByte = 3
	// a parsed Ed25519 key and its public half
	ed25519KeyBytes = 100
)

// CertMemory estimates the heap memory that cert takes in the cache: an
// RSA-2048 certificate about 7 KB, an ECDSA P-256 one about 3 KB.
// Intermediates are shared between cached certificates and not counted.
func CertMemory(cert *tls.Certificate) int64 {
	n := int64(entryOverhead)
	if len(cert.Certificate) > 0 {
		n += int64(len(cert.Certificate[0]))
	}
	if l := cert.Leaf; l != nil {
		for _, name := range l.DNSNames {
			n += int64(len(name)) + nameOverhead
		}
		n += int64(len(l.Subject.CommonName))
	}
	switch k := cert.PrivateKey.(type) {
	case *rsa.PrivateKey:
		n += rsaKeyBase + int64(k.Size())*rsaBytesPerModulusByte
	case *ecdsa.PrivateKey:
		n += ecdsaKeyBase + int64((k.Curve.Params().BitSize+7)/8)*ecdsaBytesPerFieldByte
	case ed25519.PrivateKey:
		n += ed25519KeyBytes
	}
	return n
}
