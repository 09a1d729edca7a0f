package bundle

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"testing"
)

func TestParseKeyTypes(t *testing.T) {
	p := pki(t)
	tests := []struct {
		name    string
		keyPEM  string
		keyType string
		check   func(any) bool
	}{
		{"rsa pkcs1", keyPEMAs(t, p.rsaLeaf.key, "pkcs1"), KeyTypeRSA, func(k any) bool { _, ok := k.(*rsa.PrivateKey); return ok }},
		{"rsa pkcs8", p.rsaLeaf.keyPEM, KeyTypeRSA, func(k any) bool { _, ok := k.(*rsa.PrivateKey); return ok }},
		{"ecdsa sec1", keyPEMAs(t, p.ecLeaf.key, "sec1"), KeyTypeECDSA, func(k any) bool { _, ok := k.(*ecdsa.PrivateKey); return ok }},
		{"ecdsa pkcs8", p.p384Leaf.keyPEM, KeyTypeECDSA, func(k any) bool { _, ok := k.(*ecdsa.PrivateKey); return ok }},
		{"ed25519 pkcs8", p.edLeaf.keyPEM, KeyTypeEd25519, func(k any) bool { _, ok := k.(ed25519.PrivateKey); return ok }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, typ, err := ParseKey(tt.keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			if typ != tt.keyType || !tt.check(k) {
				t.Errorf("ParseKey() = %T, %q; want %q", k, typ, tt.keyType)
			}
		})
	}
}

func TestPKCS1Bits(t *testing.T) {
	p := pki(t)
	for name, tt := range map[string]struct {
		der  []byte
		want int
	}{
		"2048":    {derOfPEM(t, keyPEMAs(t, p.rsaLeaf.key, "pkcs1")), 2048},
		"1024":    {derOfPEM(t, keyPEMAs(t, p.rsaWeakLeaf.key, "pkcs1")), 1024},
		"not der": {[]byte("nope"), 0},
		"empty":   {nil, 0},
	} {
		if got := pkcs1Bits(tt.der); got != tt.want {
			t.Errorf("%s: pkcs1Bits() = %d, want %d", name, got, tt.want)
		}
	}
}

// derOfPEM returns the bytes of the first PEM block of s.
func derOfPEM(t *testing.T, s string) []byte {
	t.Helper()
	sc := scanPEM(s)
	if len(sc.blocks) == 0 {
		t.Fatal("no PEM block")
	}
	return sc.blocks[0].Bytes
}
