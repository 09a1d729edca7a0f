package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// keyKind is the key type of the generated leaf certificates.
type keyKind string

const (
	keyECDSA keyKind = "ecdsa"
	keyRSA   keyKind = "rsa"
)

// String names the key type as the report prints it.
func (k keyKind) String() string {
	if k == keyRSA {
		return "RSA-2048"
	}
	return "ECDSA P-256"
}

// rsaPoolSize is how many RSA-2048 keys the RSA certificates share: RSA
// key generation takes tens to hundreds of milliseconds per key, too slow
// for 100,000 certificates. Each certificate is still a separate upload
// (and a separate key file for stock) that both servers parse on their own.
const rsaPoolSize = 8

// authority is the one CA of a run. It signs every leaf, ECDSA or RSA.
type authority struct {
	cert   *x509.Certificate
	pem    []byte
	key    crypto.Signer
	serial atomic.Int64 // last serial number issued
}

func newAuthority() (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dcbench CA", Organization: []string{"dcbench"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		SubjectKeyId:          []byte("dcbench-ca-key-1"),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	a := &authority{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	a.serial.Store(1)
	return a, nil
}

// site is one generated domain with its own certificate.
type site struct {
	name     string
	serial   int64  // serial number of the leaf; unique within a run
	chainPEM []byte // the leaf, then the CA
	keyPEM   []byte // PKCS#8
}

// issuer makes leaf certificates of one key type.
type issuer struct {
	ca      *authority
	kind    keyKind
	rsaKeys []*rsa.PrivateKey
	rsaPEMs [][]byte
}

func newIssuer(ctx context.Context, ca *authority, kind keyKind) (*issuer, error) {
	is := &issuer{ca: ca, kind: kind}
	if kind != keyRSA {
		return is, nil
	}
	is.rsaKeys = make([]*rsa.PrivateKey, rsaPoolSize)
	is.rsaPEMs = make([][]byte, rsaPoolSize)
	err := parallel(ctx, rsaPoolSize, func(i int) error {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return fmt.Errorf("generating RSA key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return fmt.Errorf("encoding RSA key: %w", err)
		}
		is.rsaKeys[i] = k
		is.rsaPEMs[i] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return is, nil
}

// issue makes the certificate of site number i, named name.
func (is *issuer) issue(name string, i int) (*site, error) {
	var signer crypto.Signer
	var keyPEM []byte
	usage := x509.KeyUsageDigitalSignature
	if is.kind == keyRSA {
		signer, keyPEM = is.rsaKeys[i%len(is.rsaKeys)], is.rsaPEMs[i%len(is.rsaKeys)]
		usage |= x509.KeyUsageKeyEncipherment
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating ECDSA key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("encoding ECDSA key: %w", err)
		}
		signer, keyPEM = k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	serial := is.ca.serial.Add(1)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour),
		// 90 days, as Let's Encrypt issues: past the plugin's default
		// expiry_warning, so that loading is not also announcing
		NotAfter:              now.Add(90 * 24 * time.Hour),
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.ca.cert, signer.Public(), is.ca.key)
	if err != nil {
		return nil, fmt.Errorf("creating certificate for %s: %w", name, err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	chain = append(chain, is.ca.pem...)
	return &site{name: name, serial: serial, chainPEM: chain, keyPEM: keyPEM}, nil
}

// issueAll makes the certificates of names, using every CPU.
func (is *issuer) issueAll(ctx context.Context, names []string) ([]*site, error) {
	sites := make([]*site, len(names))
	err := parallel(ctx, len(names), func(i int) error {
		s, err := is.issue(names[i], i)
		sites[i] = s
		return err
	})
	return sites, err
}

// parallel calls fn(0..n-1) on GOMAXPROCS goroutines and returns the
// first error.
func parallel(ctx context.Context, n int, fn func(i int) error) error {
	return parallelN(ctx, runtime.GOMAXPROCS(0), n, fn, nil)
}

// parallelN calls fn(0..n-1) on workers goroutines and returns the first
// error. It stops handing out work once ctx is done or a call failed.
// progress, if set, is called after each call with the number done so
// far, never concurrently.
func parallelN(ctx context.Context, workers, n int, fn func(i int) error, progress func(done int)) error {
	var (
		next, done atomic.Int64
		once       sync.Once
		firstErr   error
		mu         sync.Mutex // serializes progress
		wg         sync.WaitGroup
	)
	fail := func(err error) {
		once.Do(func() { firstErr = err })
		next.Store(int64(n)) // stop the others
	}
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := ctx.Err(); err != nil {
					fail(err)
					return
				}
				if err := fn(i); err != nil {
					fail(err)
					return
				}
				d := int(done.Add(1))
				if progress != nil {
					mu.Lock()
					progress(d)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}
