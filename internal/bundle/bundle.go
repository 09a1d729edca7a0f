package bundle

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// Size limits of the uploaded PEM values, in bytes, as the admin API contract
// sets them.
const (
	// MaxCertPEM is the largest certificate_pem accepted (128 KiB).
	MaxCertPEM = 128 << 10
	// MaxKeyPEM is the largest private_key_pem accepted (16 KiB).
	MaxKeyPEM = 16 << 10
)

// Bundle is a validated certificate chain with the private key of its leaf.
// Parse is the only way to make a valid one.
type Bundle struct {
	// Chain is the certificate chain as uploaded, leaf first; each
	// certificate is signed by the next. Never empty.
	Chain []*x509.Certificate
	// CertPEM is Chain re-encoded as canonical PEM: only CERTIFICATE
	// blocks, LF line endings, no text around them.
	CertPEM []byte
	// Key is the private key of Chain[0]: an *rsa.PrivateKey, an
	// *ecdsa.PrivateKey or an ed25519.PrivateKey.
	Key crypto.Signer
	// KeyPEM is Key re-encoded as one unencrypted PKCS#8 "PRIVATE KEY" PEM
	// block. It is secret: never log it or store it unsealed.
	KeyPEM []byte
	// KeyType is the key's algorithm as the API names it: KeyTypeRSA,
	// KeyTypeECDSA or KeyTypeEd25519.
	KeyType string
}

// Parse validates an uploaded bundle in the order of the admin API contract:
// the size limits of both fields, then certificate_pem (see
// ParseCertificates, including chain order), then
// private_key_pem (see ParseKey), then that the key belongs to the leaf
// (KEY_MISMATCH). The first failing check decides the error, always a
// *dcerr.Error. Parse never panics, whatever its input.
func Parse(certPEM, keyPEM string) (*Bundle, error) {
	// the size limits come first, with the request's shape: a key over its
	// limit is reported as such whatever the certificate holds
	if len(certPEM) > MaxCertPEM {
		_, err := ParseCertificates(certPEM)
		return nil, err
	}
	if len(keyPEM) > MaxKeyPEM {
		_, _, err := ParseKey(keyPEM)
		return nil, err
	}
	chain, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, err
	}
	key, keyType, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if err := checkMatch(chain, key, keyType); err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, dcerr.New(dcerr.Internal, "encoding the private key as PKCS#8 failed; try again or report a bug")
	}
	var certPEMOut []byte
	for _, c := range chain {
		certPEMOut = append(certPEMOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return &Bundle{
		Chain:   chain,
		CertPEM: certPEMOut,
		Key:     key,
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		KeyType: keyType,
	}, nil
}

// TLSCertificate returns the bundle for crypto/tls: the DER chain as
// uploaded less a self-signed root at its end (clients have it already),
// the private key, and a trimmed copy of the parsed leaf (see trimLeaf).
// The slices are shared with b; do not modify them.
func (b *Bundle) TLSCertificate() tls.Certificate {
	chain := b.Chain
	if n := len(chain); n > 1 && selfSigned(chain[n-1]) {
		chain = chain[:n-1] // clients have the root; sending it wastes bytes on every handshake
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	tc := tls.Certificate{Certificate: der, PrivateKey: b.Key}
	if len(b.Chain) > 0 {
		tc.Leaf = trimLeaf(b.Chain[0], b.Key)
	}
	return tc
}

// checkMatch checks that key is the private key of the leaf, chain[0].
func checkMatch(chain []*x509.Certificate, key crypto.Signer, keyType string) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if ok && pub.Equal(chain[0].PublicKey) {
		return nil
	}
	leaf := name(chain[0].Subject)
	for i := 1; ok && i < len(chain); i++ {
		if pub.Equal(chain[i].PublicKey) {
			return dcerr.New(dcerr.KeyMismatch,
				"private_key_pem is the key of certificate_pem block %d (%s), not of the leaf (block 1, %s); upload the private key the leaf certificate was issued for",
				i+1, name(chain[i].Subject), leaf)
		}
	}
	if certType := KeyType(chain[0].PublicKey); certType != keyType {
		return dcerr.New(dcerr.KeyMismatch,
			"private_key_pem is an %s key but the leaf certificate (%s) holds an %s public key; upload the private key the leaf certificate was issued for",
			keyType, leaf, certType)
	}
	return dcerr.New(dcerr.KeyMismatch,
		"private_key_pem does not belong to the leaf certificate (block 1, %s); upload the private key the leaf certificate was issued for",
		leaf)
}

// KeyType names the algorithm of a certificate's public key: KeyTypeRSA,
// KeyTypeECDSA, KeyTypeEd25519 or "unsupported".
func KeyType(pub crypto.PublicKey) string {
	switch pub.(type) {
	case *rsa.PublicKey:
		return KeyTypeRSA
	case *ecdsa.PublicKey:
		return KeyTypeECDSA
	case ed25519.PublicKey:
		return KeyTypeEd25519
	default:
		return "unsupported"
	}
}
