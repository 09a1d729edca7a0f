package bundle

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// ParseStored decodes a bundle that passed Parse when it was stored (the
// canonical CertPEM and KeyPEM), or a certificate CertMagic issued with its
// key file: it checks that the key matches the leaf, but not the chain's
// signatures again, which makes loading a stored certificate about twice
// as fast. Like TLSCertificate, it leaves out a self-signed root at the end
// of the chain, and sets Leaf to a trimmed copy of the parsed leaf (see
// trimLeaf).
func ParseStored(certPEM, keyPEM []byte) (tls.Certificate, error) {
	var tc tls.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			tc.Certificate = append(tc.Certificate, b.Bytes)
		}
	}
	if len(tc.Certificate) == 0 {
		return tls.Certificate{}, errors.New("no certificate")
	}
	// pem.Decode passes over a block it cannot decode: a damaged block
	// must fail the load, not shorten the chain
	if n := bytes.Count(certPEM, pemBeginCertificate); n != len(tc.Certificate) {
		return tls.Certificate{}, fmt.Errorf("%d of %d certificate blocks do not decode", n-len(tc.Certificate), n)
	}
	leaf, err := x509.ParseCertificate(tc.Certificate[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing the leaf: %w", err)
	}
	key, err := parseStoredKey(keyPEM)
	if err != nil {
		return tls.Certificate{}, err
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return tls.Certificate{}, errors.New("the private key does not match the leaf certificate")
	}
	tc.PrivateKey = key
	tc.Leaf = trimLeaf(leaf, key)
	if n := len(tc.Certificate); n > 1 && rootAtEnd(tc.Certificate[n-1]) {
		// the same test as TLSCertificate's, so that a stored bundle is
		// served with the chain it was served with after its upload
		tc.Certificate = tc.Certificate[:n-1]
	}
	return tc, nil
}

// pemBeginCertificate begins a PEM certificate block.
var pemBeginCertificate = []byte("-----BEGIN CERTIFICATE-----")

// parseStoredKey decodes the first private key block of a stored key in the
// form its type names: PKCS#8 as uploads are stored, and PKCS#1, SEC 1 and
// PKCS#8 under "RSA", "EC" and "ED25519 PRIVATE KEY" as CertMagic writes
// keys (certmagic.PEMEncodePrivateKey). crypto/tls's X509KeyPair instead
// tries one form after another, a failed PKCS#1 attempt before every
// PKCS#8 key. Blocks that hold no key, such as EC PARAMETERS, are skipped.
func parseStoredKey(keyPEM []byte) (crypto.Signer, error) {
	for rest := keyPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil, errors.New("no private key block")
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY", "ED25519 PRIVATE KEY":
			if ec, ok := parsePKCS8ECDSA(b.Bytes); ok {
				return ec, nil
			}
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		default:
			if strings.HasSuffix(b.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("private key block of unsupported type %q", b.Type)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parsing the %s: %w", strings.ToLower(b.Type), err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key of type %T cannot sign", k)
		}
		return s, nil
	}
}

// maxRootMemo bounds rootMemo. Chains end in a few shared intermediates or
// roots, so a fleet of any size needs only a handful of entries; when a
// fleet whose chains end in many different certificates fills it, it
// starts over.
const maxRootMemo = 1024

var (
	rootMemoMu sync.RWMutex
	rootMemo   = make(map[[sha256.Size]byte]bool)
)

// rootAtEnd reports whether der, the last certificate of a stored chain,
// is self-signed. Checking costs a parse and a signature verification
// (about 100 µs with ECDSA), which would double the cost of loading a
// certificate on a cache miss, so the answer is remembered per certificate.
func rootAtEnd(der []byte) bool {
	sum := sha256.Sum256(der)
	rootMemoMu.RLock()
	self, ok := rootMemo[sum]
	rootMemoMu.RUnlock()
	if ok {
		return self
	}
	c, err := x509.ParseCertificate(der)
	self = err == nil && selfSigned(c)
	rootMemoMu.Lock()
	if len(rootMemo) >= maxRootMemo {
		clear(rootMemo)
	}
	rootMemo[sum] = self
	rootMemoMu.Unlock()
	return self
}

// trimLeaf returns a copy of leaf, the parsed leaf of a certificate that
// is about to be cached for serving, without what serving never reads:
// the raw extension list (its parsed fields stay), the attribute lists of
// subject and issuer (their parsed fields such as CommonName and
// Organization stay) and the policy OIDs. Its PublicKey is key's, which
// ParseStored or Parse has checked to match, instead of a second parsed
// copy. CertMagic reads the names, dates and serial number of the leaf on
// every handshake; crypto/tls on the server side signs with the private key
// and reads the leaf's names and issuer only to choose among several
// certificates (SupportsCertificate); Caddy's certificate selection reads
// the subject, serial number and public key algorithm. This drops about 1.1 KB and 19 of the 32 heap objects of a
// parsed leaf, which is a third of the memory of a cached ECDSA
// certificate and much of what the garbage collector scans at 100,000.
func trimLeaf(leaf *x509.Certificate, key crypto.PrivateKey) *x509.Certificate {
	if leaf == nil {
		return nil
	}
	t := *leaf
	t.Extensions = nil
	t.Subject.Names = nil
	t.Issuer.Names = nil
	t.Policies = nil
	t.PolicyIdentifiers = nil
	if s, ok := key.(crypto.Signer); ok {
		t.PublicKey = s.Public()
	}
	return &t
}
