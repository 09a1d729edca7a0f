package bundle

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
)

// ParseStored decodes a bundle that passed Parse when it was stored (the
// canonical CertPEM and KeyPEM): it checks that the key matches the leaf,
// but not the chain's signatures again, which makes loading a stored
// certificate about twice as fast. Like TLSCertificate, it leaves out a
// self-signed root at the end of the chain, and sets Leaf to a trimmed
// copy of the parsed leaf (see trimLeaf).
func ParseStored(certPEM, keyPEM []byte) (tls.Certificate, error) {
	tc, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("decoding stored bundle: %w", err)
	}
	tc.Leaf = trimLeaf(tc.Leaf, tc.PrivateKey)
	if n := len(tc.Certificate); n > 1 && rootAtEnd(tc.Certificate[n-1]) {
		// the same test as TLSCertificate's, so that a stored bundle is
		// served with the chain it was served with after its upload
		tc.Certificate = tc.Certificate[:n-1]
	}
	return tc, nil
}

// maxRootMemo bounds rootMemo. Chains end in a few shared intermediates or
// roots, so a fleet of any size needs only a handful of entries; a fleet
// whose every chain ends differently stops being remembered at the bound
// and is checked each time instead.
const maxRootMemo = 1024

var (
	rootMemoMu sync.RWMutex
	rootMemo   = make(map[string]bool)
)

// rootAtEnd reports whether der, the last certificate of a stored chain,
// is self-signed. Checking costs a parse and a signature verification
// (about 100 µs with ECDSA), which would double the cost of loading a
// certificate on a cache miss, so the answer is remembered per certificate.
func rootAtEnd(der []byte) bool {
	rootMemoMu.RLock()
	self, ok := rootMemo[string(der)]
	rootMemoMu.RUnlock()
	if ok {
		return self
	}
	c, err := x509.ParseCertificate(der)
	self = err == nil && selfSigned(c)
	rootMemoMu.Lock()
	if len(rootMemo) < maxRootMemo {
		rootMemo[string(der)] = self
	}
	rootMemoMu.Unlock()
	return self
}

// trimLeaf returns a copy of leaf, the parsed leaf of a certificate that
// is about to be cached for serving, without what serving never reads:
// the raw extension list (its parsed fields stay), the attribute lists of
// subject and issuer (their parsed fields such as CommonName and
// Organization stay) and the policy OIDs. Its PublicKey is key's, which
// X509KeyPair or Parse has checked to match, instead of a second parsed
// copy. CertMagic reads the names, dates and serial number of the leaf on
// every handshake, crypto/tls on the server side only the private key, and
// Caddy's certificate selection the subject, serial number and public key
// algorithm. This drops about 1.1 KB and 19 of the 32 heap objects of a
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
