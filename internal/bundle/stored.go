package bundle

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
)

// ParseStored decodes a bundle that passed Parse when it was stored (the
// canonical CertPEM and KeyPEM): it checks that the key matches the leaf,
// but not the chain's signatures again, which makes loading a stored
// certificate about twice as fast. Like TLSCertificate, it leaves out a
// self-signed root at the end of the chain, and sets Leaf.
func ParseStored(certPEM, keyPEM []byte) (tls.Certificate, error) {
	tc, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("decoding stored bundle: %w", err)
	}
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
