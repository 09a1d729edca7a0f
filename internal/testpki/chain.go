package testpki

import (
	"crypto"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Chain is a root CA and an intermediate that signs leaves, both ECDSA
// P-256.
type Chain struct {
	Root     *x509.Certificate
	RootKey  crypto.Signer
	RootPEM  string
	Inter    *x509.Certificate
	InterKey crypto.Signer
	InterPEM string
	roots    *x509.CertPool
}

// ChainLeaf is an end-entity certificate of a Chain, with its key.
type ChainLeaf struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertPEM  string // the leaf alone
	ChainPEM string // leaf, then intermediate
	KeyPEM   string // PKCS#8 "PRIVATE KEY"
	Serial   string // lowercase hex, as the admin API prints it
}

// LeafOptions change what Chain.LeafWith issues.
type LeafOptions struct {
	// RSA makes a 2048-bit RSA key instead of ECDSA P-256.
	RSA bool
	// IPs are added as IP SANs.
	IPs []net.IP
	// NotAfter defaults to 30 days from now.
	NotAfter time.Time
	// NotBefore defaults to an hour ago.
	NotBefore time.Time
}

// NewChain makes a root CA ("<name> Root", valid 10 years) and an
// intermediate ("<name> Intermediate", 5 years, path length 0).
func NewChain(tb testing.TB, name string) *Chain {
	tb.Helper()
	rootKey := newECKey(tb)
	rootTmpl := caTemplate(tb, name+" Root", 10*365*24*time.Hour)
	root := mustCreate(tb, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	interKey := newECKey(tb)
	interTmpl := caTemplate(tb, name+" Intermediate", 5*365*24*time.Hour)
	interTmpl.MaxPathLen, interTmpl.MaxPathLenZero = 0, true
	inter := mustCreate(tb, interTmpl, root, interKey.Public(), rootKey)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &Chain{
		Root: root, RootKey: rootKey, RootPEM: certPEM(root),
		Inter: inter, InterKey: interKey, InterPEM: certPEM(inter),
		roots: pool,
	}
}

// Roots is a pool holding the root.
func (c *Chain) Roots() *x509.CertPool { return c.roots }

// RootFile writes the root PEM to root.pem in dir and returns its path.
func (c *Chain) RootFile(tb testing.TB, dir string) string {
	tb.Helper()
	p := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(p, []byte(c.RootPEM), 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

// Leaf issues a server certificate for names (the first is also the
// subject common name), signed by the intermediate.
func (c *Chain) Leaf(tb testing.TB, names ...string) *ChainLeaf {
	tb.Helper()
	return c.LeafWith(tb, LeafOptions{}, names...)
}

// LeafWith is Leaf with options.
func (c *Chain) LeafWith(tb testing.TB, o LeafOptions, names ...string) *ChainLeaf {
	tb.Helper()
	var key crypto.Signer
	if o.RSA {
		key = newRSAKey(tb)
	} else {
		key = newECKey(tb)
	}
	cert := mustCreate(tb, leafTemplate(tb, names, o, key), c.Inter, key.Public(), c.InterKey)
	return &ChainLeaf{
		Cert:     cert,
		Key:      key,
		CertPEM:  certPEM(cert),
		ChainPEM: certPEM(cert) + c.InterPEM,
		KeyPEM:   keyPEM(tb, key),
		Serial:   SerialHex(cert.SerialNumber),
	}
}
