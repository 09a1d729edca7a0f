package integration

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
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA is a root CA and an intermediate that signs test leaves.
type testCA struct {
	Root      *x509.Certificate
	RootKey   crypto.Signer
	RootPEM   string
	Inter     *x509.Certificate
	InterKey  crypto.Signer
	InterPEM  string
	rootsPool *x509.CertPool
}

// leaf is a test end-entity certificate with its chain and key.
type leaf struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertPEM  string // the leaf alone
	ChainPEM string // leaf, then intermediate
	KeyPEM   string // PKCS#8 "PRIVATE KEY"
	// Serial is the lowercase hex serial number as the contract prints it.
	Serial string
}

type leafOpts struct {
	// RSA makes a 2048-bit RSA key instead of ECDSA P-256.
	RSA bool
	// IPs are added as IP SANs.
	IPs []net.IP
	// NotAfter defaults to 30 days from now.
	NotAfter time.Time
}

// newTestCA makes a root CA ("<name> Root") and an intermediate
// ("<name> Intermediate"), both ECDSA P-256.
func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	rootKey := newECKey(t)
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber:          newSerial(t),
		Subject:               pkix.Name{CommonName: name + " Root", Organization: []string{"domaincerts tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	root := mustCreate(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	interKey := newECKey(t)
	interTmpl := &x509.Certificate{
		SerialNumber:          newSerial(t),
		Subject:               pkix.Name{CommonName: name + " Intermediate", Organization: []string{"domaincerts tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	inter := mustCreate(t, interTmpl, root, interKey.Public(), rootKey)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &testCA{
		Root: root, RootKey: rootKey, RootPEM: certPEM(root),
		Inter: inter, InterKey: interKey, InterPEM: certPEM(inter),
		rootsPool: pool,
	}
}

// Roots is a pool holding the root.
func (ca *testCA) Roots() *x509.CertPool { return ca.rootsPool }

// RootFile writes the root PEM to a file in dir and returns its path.
func (ca *testCA) RootFile(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(p, []byte(ca.RootPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Leaf issues a server certificate for names (the first is also the
// subject common name), signed by the intermediate.
func (ca *testCA) Leaf(t testing.TB, names ...string) *leaf {
	t.Helper()
	return ca.LeafWith(t, leafOpts{}, names...)
}

// LeafWith is Leaf with options.
func (ca *testCA) LeafWith(t testing.TB, o leafOpts, names ...string) *leaf {
	t.Helper()
	var key crypto.Signer
	if o.RSA {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	} else {
		key = newECKey(t)
	}
	now := time.Now()
	notAfter := o.NotAfter
	if notAfter.IsZero() {
		notAfter = now.Add(30 * 24 * time.Hour)
	}
	cn := ""
	if len(names) > 0 {
		cn = names[0]
	}
	ku := x509.KeyUsageDigitalSignature
	if o.RSA {
		ku |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(t),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     names,
		IPAddresses:  o.IPs,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     ku,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	cert := mustCreate(t, tmpl, ca.Inter, key.Public(), ca.InterKey)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return &leaf{
		Cert:     cert,
		Key:      key,
		CertPEM:  certPEM(cert),
		ChainPEM: certPEM(cert) + ca.InterPEM,
		KeyPEM:   keyPEM,
		Serial:   serialHex(cert.SerialNumber),
	}
}

// serialHex prints a serial number as the contract does: lowercase hex,
// no colons. newSerial makes serials whose DER has no padding byte and no
// leading zero nibble, so this is unambiguous.
func serialHex(n *big.Int) string { return strings.ToLower(n.Text(16)) }

// newSerial returns a random 127-bit serial in [2^124, 2^127): 32 hex digits
// without a leading zero, 16 DER bytes without a sign-padding byte.
func newSerial(t testing.TB) *big.Int {
	t.Helper()
	span := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 127), new(big.Int).Lsh(big.NewInt(1), 124))
	n, err := rand.Int(rand.Reader, span)
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, new(big.Int).Lsh(big.NewInt(1), 124))
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCreate(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}
