package bundle

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"testing"
)

// pkcs8Of returns x509.MarshalPKCS8PrivateKey(k).
func pkcs8Of(tb testing.TB, k any) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// ecPKCS8With returns the PKCS#8 encoding of k with the inner ECPrivateKey
// built from its parts: the scalar as given, and the optional curve
// parameters and public key when set.
func ecPKCS8With(tb testing.TB, curveOID asn1.ObjectIdentifier, d []byte, params *asn1.ObjectIdentifier, pub []byte) []byte {
	tb.Helper()
	type ecKey struct {
		Version    int
		PrivateKey []byte
		Params     asn1.ObjectIdentifier `asn1:"optional,explicit,tag:0"`
		PublicKey  asn1.BitString        `asn1:"optional,explicit,tag:1"`
	}
	k := ecKey{Version: 1, PrivateKey: d}
	if params != nil {
		k.Params = *params
	}
	if pub != nil {
		k.PublicKey = asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)}
	}
	inner, err := asn1.Marshal(k)
	if err != nil {
		tb.Fatal(err)
	}
	curve, err := asn1.Marshal(curveOID)
	if err != nil {
		tb.Fatal(err)
	}
	type algorithm struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue
	}
	der, err := asn1.Marshal(struct {
		Version    int
		Algo       algorithm
		PrivateKey []byte
	}{0, algorithm{oidPublicKeyECDSA, asn1.RawValue{FullBytes: curve}}, inner})
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func TestParsePKCS8ECDSA(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	d, _ := p256.Bytes()
	pub, _ := p256.PublicKey.Bytes()
	otherCurve := oidNamedCurveP384
	tests := []struct {
		name string
		der  []byte
		fast bool // parsed without x509
	}{
		{"P-256 as stored", pkcs8Of(t, p256), true},
		{"P-384", pkcs8Of(t, p384), true},
		{"P-521", pkcs8Of(t, p521), true},
		{"no public key", ecPKCS8With(t, oidNamedCurveP256, d, nil, nil), true},
		{"curve parameters inside", ecPKCS8With(t, oidNamedCurveP256, d, &oidNamedCurveP256, pub), true},
		{"other curve inside (x509 ignores it)", ecPKCS8With(t, oidNamedCurveP256, d, &otherCurve, pub), true},
		{"scalar padded with a zero", ecPKCS8With(t, oidNamedCurveP256, append([]byte{0}, d...), nil, pub), false},
		{"scalar short", ecPKCS8With(t, oidNamedCurveP256, d[1:], nil, nil), false},
		{"RSA", pkcs8Of(t, rsaKey), false},
		{"Ed25519", pkcs8Of(t, edKey), false},
		{"trailing data", append(pkcs8Of(t, p256), 0), false},
		{"empty", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parsePKCS8ECDSA(tt.der)
			if ok != tt.fast {
				t.Fatalf("parsed = %v; want %v", ok, tt.fast)
			}
			if ok {
				checkSameKey(t, tt.der, got)
			}
		})
	}
}

// checkSameKey fails unless x509.ParsePKCS8PrivateKey accepts der and
// decodes it to got.
func checkSameKey(t *testing.T, der []byte, got *ecdsa.PrivateKey) {
	t.Helper()
	want, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatalf("accepted a key that x509 rejects: %v", err)
	}
	if !got.Equal(want) || !got.PublicKey.Equal(want.(crypto.Signer).Public()) {
		t.Fatal("decoded a different key than x509")
	}
}

// FuzzParsePKCS8ECDSA checks that the fast PKCS#8 parser accepts only what
// x509.ParsePKCS8PrivateKey accepts, decoding it to the same key.
func FuzzParsePKCS8ECDSA(f *testing.F) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	d, _ := p256.Bytes()
	pub, _ := p256.PublicKey.Bytes()
	for _, seed := range [][]byte{
		pkcs8Of(f, p256), pkcs8Of(f, p384), pkcs8Of(f, edKey),
		ecPKCS8With(f, oidNamedCurveP256, d, &oidNamedCurveP256, pub),
		ecPKCS8With(f, oidNamedCurveP256, append([]byte{0}, d...), nil, nil),
		{0x30, 0},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		if got, ok := parsePKCS8ECDSA(der); ok {
			checkSameKey(t, der, got)
		}
	})
}

// BenchmarkParsePKCS8ECDSA decodes a stored P-256 key on the miss path,
// against x509.ParsePKCS8PrivateKey.
func BenchmarkParsePKCS8ECDSA(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der := pkcs8Of(b, k)
	b.Run("cryptobyte", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := parsePKCS8ECDSA(der); !ok {
				b.Fatal("not parsed")
			}
		}
	})
	b.Run("x509", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := x509.ParsePKCS8PrivateKey(der); err != nil {
				b.Fatal(err)
			}
		}
	})
}
