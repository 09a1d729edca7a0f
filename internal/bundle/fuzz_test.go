package bundle

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// Codes each parser may return.
var (
	certCodes = map[dcerr.Code]bool{
		dcerr.CertPEMMissing: true, dcerr.CertTooLarge: true, dcerr.CertPEMInvalid: true,
		dcerr.CertIsKey: true, dcerr.CertPEMType: true, dcerr.PEMHeaders: true, dcerr.ChainOrder: true,
	}
	keyCodes = map[dcerr.Code]bool{
		dcerr.KeyMissing: true, dcerr.FieldTooLarge: true, dcerr.KeyUnsupported: true, dcerr.KeyIsCert: true,
		dcerr.KeyEncrypted: true, dcerr.PEMHeaders: true, dcerr.KeyWeak: true,
	}
)

// certSeeds are certificate_pem seeds: valid chains and broken ones.
func certSeeds(tb testing.TB) []string {
	p := pki(tb)
	chain := p.ecLeaf.pem + p.inter.pem
	return []string{
		"", " \n", "hello", chain, chain + p.root.pem, p.rsaLeaf.pem + p.inter.pem, p.edLeaf.pem, p.selfLeaf.pem,
		crlf(chain), "text\n" + chain + "more text\n",
		p.inter.pem + p.ecLeaf.pem, p.ecLeaf.pem + p.root.pem, p.root.pem + p.inter.pem + p.ecLeaf.pem,
		chain + "-----BEGIN CERTIFICATE-----\nMIIB\n", chain + "-----END CERTIFICATE-----\n",
		p.ecLeaf.pem[:len(p.ecLeaf.pem)/2], p.ecLeaf.keyPEM, p.ecLeaf.pem + p.ecLeaf.keyPEM,
		pemOf("CERTIFICATE REQUEST", nil, []byte{1}), pemOf("CERTIFICATE", map[string]string{"A": "b"}, p.ecLeaf.cert.Raw),
		pemOf("CERTIFICATE", nil, []byte("not der")), string(p.ecLeaf.cert.Raw),
	}
}

// keySeeds are private_key_pem seeds: every accepted form and broken ones.
func keySeeds(tb testing.TB) []string {
	p := pki(tb)
	return []string{
		"", "\t", "key", p.ecLeaf.keyPEM, keyPEMAs(tb, p.ecLeaf.key, "sec1"), p.rsaLeaf.keyPEM,
		keyPEMAs(tb, p.rsaLeaf.key, "pkcs1"), p.edLeaf.keyPEM, p.p384Leaf.keyPEM, p.rsaWeakLeaf.keyPEM,
		keyPEMAs(tb, p.rsaWeakLeaf.key, "pkcs1"), crlf(p.ecLeaf.keyPEM), "Bag Attributes\n" + p.ecLeaf.keyPEM,
		pemOf("EC PARAMETERS", nil, []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}) + keyPEMAs(tb, p.ecLeaf.key, "sec1"),
		p.ecLeaf.pem, p.ecLeaf.keyPEM + p.otherLeaf.keyPEM, pemOf("ENCRYPTED PRIVATE KEY", nil, []byte{0x30, 0}),
		pemOf("RSA PRIVATE KEY", map[string]string{"Proc-Type": "4,ENCRYPTED"}, []byte{1}),
		pemOf("PRIVATE KEY", map[string]string{"Comment": "x"}, []byte{1}), pemOf("OPENSSH PRIVATE KEY", nil, []byte{1}),
		pemOf("PRIVATE KEY", nil, []byte("junk")), p.ecLeaf.keyPEM[:len(p.ecLeaf.keyPEM)-20],
	}
}

// checkFuzzError asserts the invariants of a rejection.
func checkFuzzError(t *testing.T, err error, codes map[dcerr.Code]bool, inputs ...string) {
	t.Helper()
	var e *dcerr.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *dcerr.Error", err, err)
	}
	if !codes[e.Code] {
		t.Fatalf("unexpected code %s: %s", e.Code, e.Msg)
	}
	if !strings.HasPrefix(e.Msg, "certificate_pem") && !strings.HasPrefix(e.Msg, "private_key_pem") {
		t.Fatalf("message does not name its field: %s", e.Msg)
	}
	checkMessage(t, e.Msg, inputs...)
}

func FuzzParseCertificates(f *testing.F) {
	for _, s := range certSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, certPEM string) {
		chain, err := ParseCertificates(certPEM)
		if err != nil {
			checkFuzzError(t, err, certCodes, certPEM)
			return
		}
		if len(chain) == 0 {
			t.Fatal("accepted an empty chain")
		}
		for i := 0; i+1 < len(chain); i++ {
			if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
				t.Fatalf("accepted block %d not signed by the next: %v", i+1, err)
			}
		}
		Info(chain[0])
		Covers(chain[0], "a.example.com")
	})
}

func FuzzParseKey(f *testing.F) {
	for _, s := range keySeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, keyPEM string) {
		key, keyType, err := ParseKey(keyPEM)
		if err != nil {
			checkFuzzError(t, err, keyCodes, keyPEM)
			return
		}
		if key == nil || key.Public() == nil {
			t.Fatal("accepted a nil key")
		}
		switch keyType {
		case KeyTypeRSA, KeyTypeECDSA, KeyTypeEd25519:
		default:
			t.Fatalf("accepted key type %q", keyType)
		}
	})
}

func FuzzParse(f *testing.F) {
	p := pki(f)
	chain := p.ecLeaf.pem + p.inter.pem
	f.Add(chain, p.ecLeaf.keyPEM)
	f.Add(chain+p.root.pem, keyPEMAs(f, p.ecLeaf.key, "sec1"))
	f.Add(p.rsaLeaf.pem+p.inter.pem, keyPEMAs(f, p.rsaLeaf.key, "pkcs1"))
	f.Add(p.edLeaf.pem, p.edLeaf.keyPEM)
	f.Add(crlf(chain), crlf(p.ecLeaf.keyPEM))
	f.Add(chain, p.otherLeaf.keyPEM)
	f.Add(chain, p.inter.keyPEM)
	f.Add(p.inter.pem+p.ecLeaf.pem, "")
	for _, s := range certSeeds(f) {
		f.Add(s, p.ecLeaf.keyPEM)
	}
	for _, s := range keySeeds(f) {
		f.Add(chain, s)
	}
	allCodes := map[dcerr.Code]bool{dcerr.KeyMismatch: true}
	for c := range certCodes {
		allCodes[c] = true
	}
	for c := range keyCodes {
		allCodes[c] = true
	}
	f.Fuzz(func(t *testing.T, certPEM, keyPEM string) {
		b, err := Parse(certPEM, keyPEM)
		if err != nil {
			checkFuzzError(t, err, allCodes, certPEM, keyPEM)
			return
		}
		again, err := Parse(string(b.CertPEM), string(b.KeyPEM))
		if err != nil {
			t.Fatalf("canonical PEM of an accepted bundle rejected: %v", err)
		}
		if again.KeyType != b.KeyType || len(again.Chain) != len(b.Chain) {
			t.Fatalf("round trip changed the bundle: %s/%d to %s/%d", b.KeyType, len(b.Chain), again.KeyType, len(again.Chain))
		}
		if tc := b.TLSCertificate(); len(tc.Certificate) != servedLen(b) || !tc.Leaf.Equal(b.Chain[0]) {
			t.Fatal("TLSCertificate does not carry the chain")
		}
	})
}

// FuzzParseStored feeds arbitrary stored bundles to the parser of the
// handshake's miss path: it must return an error or a certificate whose
// key matches its leaf, never panic.
func FuzzParseStored(f *testing.F) {
	certs, keys := certSeeds(f), keySeeds(f)
	for i := range max(len(certs), len(keys)) {
		f.Add(certs[i%len(certs)], keys[i%len(keys)])
	}
	p := pki(f)
	f.Add(p.ecLeaf.pem+p.inter.pem, p.ecLeaf.keyPEM)
	f.Add(p.rsaLeaf.pem+p.inter.pem+p.root.pem, keyPEMAs(f, p.rsaLeaf.key, "pkcs1"))
	f.Fuzz(func(t *testing.T, certPEM, keyPEM string) {
		tc, err := ParseStored([]byte(certPEM), []byte(keyPEM))
		if err != nil {
			return
		}
		if len(tc.Certificate) == 0 || tc.Leaf == nil || tc.PrivateKey == nil {
			t.Fatalf("accepted an incomplete certificate: %d blocks, leaf %v, key %v", len(tc.Certificate), tc.Leaf != nil, tc.PrivateKey != nil)
		}
		leaf, err := x509.ParseCertificate(tc.Certificate[0])
		if err != nil {
			t.Fatalf("served leaf does not parse: %v", err)
		}
		pub := tc.PrivateKey.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool })
		if !pub.Equal(leaf.PublicKey) {
			t.Fatal("accepted a key that does not match the leaf")
		}
		// it is no more lenient than crypto/tls, which served these
		// bundles before
		if _, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM)); err != nil {
			t.Fatalf("accepted a bundle that tls.X509KeyPair rejects: %v", err)
		}
	})
}
