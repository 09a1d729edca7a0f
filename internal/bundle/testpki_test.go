package bundle

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCert is a certificate made by the test PKI with its key.
type testCert struct {
	cert   *x509.Certificate
	key    crypto.Signer
	pem    string // the certificate as one CERTIFICATE block
	keyPEM string // the key as PKCS#8
}

// testPKI is a root, an intermediate and leaves of every supported key type.
type testPKI struct {
	root, inter                 *testCert
	ecLeaf, p384Leaf            *testCert
	rsaLeaf, rsaWeakLeaf        *testCert
	edLeaf, otherLeaf, selfLeaf *testCert
	// nonCALeaf is signed by otherLeaf, which is not a CA.
	nonCALeaf *testCert
}

var (
	pkiOnce sync.Once
	pkiVal  *testPKI
	pkiErr  error
)

// leafSerial is the serial number of every test leaf.
var leafSerial, _ = new(big.Int).SetString("0a1b2c3d4e5f60718293a4b5c6d7e8f9", 16)

// pki returns the shared test PKI, made once.
func pki(tb testing.TB) *testPKI {
	tb.Helper()
	pkiOnce.Do(func() { pkiVal, pkiErr = newTestPKI() })
	if pkiErr != nil {
		tb.Fatalf("making the test PKI: %v", pkiErr)
	}
	return pkiVal
}

func newTestPKI() (*testPKI, error) {
	var p testPKI
	var err error
	mk := func(kind string, tmpl *x509.Certificate, parent *testCert) *testCert {
		if err != nil {
			return nil
		}
		var c *testCert
		c, err = makeCert(kind, tmpl, parent)
		return c
	}
	p.root = mk("p384", caTemplate("Test Root"), nil)
	p.inter = mk("p256", caTemplate("Test Intermediate"), p.root)
	p.ecLeaf = mk("p256", leafTemplate("a.example.com"), p.inter)
	p.p384Leaf = mk("p384", leafTemplate("a.example.com"), p.inter)
	p.rsaLeaf = mk("rsa2048", leafTemplate("a.example.com"), p.inter)
	p.rsaWeakLeaf = mk("rsa1024", leafTemplate("a.example.com"), p.inter)
	p.edLeaf = mk("ed25519", leafTemplate("a.example.com"), p.inter)
	p.otherLeaf = mk("p256", leafTemplate("other.example.com"), p.inter)
	p.selfLeaf = mk("p256", leafTemplate("self.example.com"), nil)
	p.nonCALeaf = mk("p256", leafTemplate("sub.example.com"), p.otherLeaf)
	return &p, err
}

// newKey makes a key: rsa2048, rsa1024, p224, p256, p384, p521 or ed25519.
func newKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "rsa2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "rsa1024":
		return rsa.GenerateKey(rand.Reader, 1024)
	case "p224":
		return ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case "p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p521":
		return ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	default:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
}

// makeCert makes a key of kind and a certificate for it from tmpl, signed by
// parent, or self-signed if parent is nil.
func makeCert(kind string, tmpl *x509.Certificate, parent *testCert) (*testCert, error) {
	key, err := newKey(kind)
	if err != nil {
		return nil, err
	}
	signer, issuer := key, tmpl
	if parent != nil {
		signer, issuer = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &testCert{
		cert:   cert,
		key:    key,
		pem:    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		keyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
	}, nil
}

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Test CA"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

func leafTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: leafSerial,
		Subject: pkix.Name{
			CommonName:         cn,
			Organization:       []string{"Example Org", "Second Org"},
			OrganizationalUnit: []string{"Ops"},
			Locality:           []string{"Lyon"},
			Province:           []string{"Rhone"},
			Country:            []string{"FR"},
		},
		DNSNames:           []string{cn, "*.wild.example.com"},
		IPAddresses:        []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("2001:db8::1")},
		NotBefore:          time.Now().Add(-time.Hour),
		NotAfter:           time.Now().Add(24 * time.Hour),
		KeyUsage:           x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:        []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{{1, 2, 3, 4, 5}},
	}
}

// join concatenates PEM strings.
func join(parts ...string) string { return strings.Join(parts, "") }

// keyPEMAs re-encodes k in the given PEM form: "pkcs1", "sec1" or "pkcs8".
func keyPEMAs(tb testing.TB, k crypto.Signer, form string) string {
	tb.Helper()
	var (
		der []byte
		typ = "PRIVATE KEY"
		err error
	)
	switch form {
	case "pkcs1":
		der, typ = x509.MarshalPKCS1PrivateKey(k.(*rsa.PrivateKey)), "RSA PRIVATE KEY"
	case "sec1":
		der, err = x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
		typ = "EC PRIVATE KEY"
	default:
		der, err = x509.MarshalPKCS8PrivateKey(k)
	}
	if err != nil {
		tb.Fatalf("encoding key: %v", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}
