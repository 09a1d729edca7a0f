package bundle

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
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
	if n := len(tc.Certificate); n > 1 {
		// the same test as TLSCertificate's, so that a stored bundle is
		// served with the chain it was served with after its upload
		if last, err := x509.ParseCertificate(tc.Certificate[n-1]); err == nil && selfSigned(last) {
			tc.Certificate = tc.Certificate[:n-1]
		}
	}
	return tc, nil
}
