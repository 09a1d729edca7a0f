// Package testpki makes certificate authorities and leaf certificates for
// tests. It is not for production use.
//
// CA is a single self-signed CA whose leaves carry the CA in their chain,
// enough for unit tests. Chain is a root and an intermediate, as real CAs
// work: leaves come with the intermediate, and only clients know the root.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

// CA is a test certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  string
}

// Leaf is a certificate issued by a CA, with its key.
type Leaf struct {
	Cert    *x509.Certificate
	CertPEM string // leaf first, then the CA
	KeyPEM  string // PKCS#8
	Serial  string // lowercase hex
}

// NewCA returns a self-signed ECDSA P-256 CA.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key := newECKey(tb)
	tmpl := caTemplate(tb, name, 24*time.Hour)
	cert := mustCreate(tb, tmpl, tmpl, key.Public(), key)
	return &CA{Cert: cert, Key: key, PEM: certPEM(cert)}
}

// Pool returns a cert pool holding the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue returns an ECDSA P-256 leaf for names.
func (ca *CA) Issue(tb testing.TB, names ...string) *Leaf {
	tb.Helper()
	return ca.IssueWithKey(tb, newECKey(tb), names...)
}

// IssueRSA returns an RSA-2048 leaf for names.
func (ca *CA) IssueRSA(tb testing.TB, names ...string) *Leaf {
	tb.Helper()
	return ca.IssueWithKey(tb, newRSAKey(tb), names...)
}

// IssueWithKey returns a leaf for names with the given key.
func (ca *CA) IssueWithKey(tb testing.TB, key crypto.Signer, names ...string) *Leaf {
	tb.Helper()
	tmpl := leafTemplate(tb, names, LeafOptions{NotAfter: time.Now().Add(24 * time.Hour)}, key)
	cert := mustCreate(tb, tmpl, ca.Cert, key.Public(), ca.Key)
	return &Leaf{
		Cert:    cert,
		CertPEM: certPEM(cert) + ca.PEM,
		KeyPEM:  keyPEM(tb, key),
		Serial:  SerialHex(cert.SerialNumber),
	}
}

// SerialHex prints a serial number as the admin API does: lowercase hex,
// no colons. The serials made here have no padding byte in DER and no
// leading zero nibble, so this is unambiguous.
func SerialHex(n *big.Int) string { return strings.ToLower(n.Text(16)) }

// caTemplate is a CA certificate template valid from an hour ago for life.
func caTemplate(tb testing.TB, name string, life time.Duration) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          newSerial(tb),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"domaincerts tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(life),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

// leafTemplate is a server certificate template for names (the first is
// also the subject common name).
func leafTemplate(tb testing.TB, names []string, o LeafOptions, key crypto.Signer) *x509.Certificate {
	now := time.Now()
	notAfter := o.NotAfter
	if notAfter.IsZero() {
		notAfter = now.Add(30 * 24 * time.Hour)
	}
	notBefore := o.NotBefore
	if notBefore.IsZero() {
		notBefore = now.Add(-time.Hour)
	}
	cn := ""
	if len(names) > 0 {
		cn = names[0]
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := key.(*rsa.PrivateKey); ok {
		ku |= x509.KeyUsageKeyEncipherment
	}
	return &x509.Certificate{
		SerialNumber: newSerial(tb),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     names,
		IPAddresses:  o.IPs,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     ku,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

// newSerial returns a random 127-bit serial in [2^124, 2^127): 32 hex digits
// without a leading zero, 16 DER bytes without a sign-padding byte.
func newSerial(tb testing.TB) *big.Int {
	tb.Helper()
	span := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 127), new(big.Int).Lsh(big.NewInt(1), 124))
	n, err := rand.Int(rand.Reader, span)
	if err != nil {
		tb.Fatal(err)
	}
	return n.Add(n, new(big.Int).Lsh(big.NewInt(1), 124))
}

func newECKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func newRSAKey(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func mustCreate(tb testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// keyPEM encodes key as PKCS#8 "PRIVATE KEY".
func keyPEM(tb testing.TB, key crypto.Signer) string {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}
