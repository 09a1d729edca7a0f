package bundle

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var (
	oidPublicKeyECDSA = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidNamedCurveP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidNamedCurveP384 = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidNamedCurveP521 = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
)

// parsePKCS8ECDSA decodes an unencrypted PKCS#8 ECDSA private key on
// P-256, P-384 or P-521 in the exact form x509.MarshalPKCS8PrivateKey
// writes, which is how uploads are stored. It reports false for anything
// else (other algorithms, attributes, padded scalars, trailing data), for
// x509.ParsePKCS8PrivateKey to parse. x509's parser decodes the structure
// by reflection with a dozen allocations, which on a cache miss cost more
// than computing the public key (each allocation pays GC assists on a
// large heap); this one allocates little besides the key itself.
//
// A key it accepts is one x509.ParsePKCS8PrivateKey accepts and decodes to
// the same key (FuzzParsePKCS8ECDSA).
func parsePKCS8ECDSA(der []byte) (*ecdsa.PrivateKey, bool) {
	// PrivateKeyInfo ::= SEQUENCE { version INTEGER (0), algorithm
	// AlgorithmIdentifier, privateKey OCTET STRING }
	var info, alg, inner cryptobyte.String
	var version int
	var algOID, curveOID asn1.ObjectIdentifier
	in := cryptobyte.String(der)
	if !in.ReadASN1(&info, cbasn1.SEQUENCE) || !in.Empty() ||
		!info.ReadASN1Integer(&version) || version != 0 ||
		!info.ReadASN1(&alg, cbasn1.SEQUENCE) ||
		!alg.ReadASN1ObjectIdentifier(&algOID) || !algOID.Equal(oidPublicKeyECDSA) ||
		!alg.ReadASN1ObjectIdentifier(&curveOID) || !alg.Empty() ||
		!info.ReadASN1(&inner, cbasn1.OCTET_STRING) || !info.Empty() {
		return nil, false
	}
	var curve elliptic.Curve
	switch {
	case curveOID.Equal(oidNamedCurveP256):
		curve = elliptic.P256()
	case curveOID.Equal(oidNamedCurveP384):
		curve = elliptic.P384()
	case curveOID.Equal(oidNamedCurveP521):
		curve = elliptic.P521()
	default:
		return nil, false
	}
	// ECPrivateKey ::= SEQUENCE { version INTEGER (1), privateKey OCTET
	// STRING, parameters [0] OPTIONAL, publicKey [1] OPTIONAL }; x509
	// takes the curve from the algorithm and computes the public key from
	// the scalar, but requires the optional fields to be well formed
	var ecKey, d, params, pub cryptobyte.String
	var ecVersion int
	var hasParams, hasPub bool
	if !inner.ReadASN1(&ecKey, cbasn1.SEQUENCE) || !inner.Empty() ||
		!ecKey.ReadASN1Integer(&ecVersion) || ecVersion != 1 ||
		!ecKey.ReadASN1(&d, cbasn1.OCTET_STRING) ||
		!ecKey.ReadOptionalASN1(&params, &hasParams, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!ecKey.ReadOptionalASN1(&pub, &hasPub, cbasn1.Tag(1).Constructed().ContextSpecific()) ||
		!ecKey.Empty() || len(d) != (curve.Params().N.BitLen()+7)/8 {
		return nil, false
	}
	var paramsOID asn1.ObjectIdentifier
	if hasParams && (!params.ReadASN1ObjectIdentifier(&paramsOID) || !params.Empty()) {
		return nil, false
	}
	var pubBits asn1.BitString
	if hasPub && (!pub.ReadASN1BitString(&pubBits) || !pub.Empty()) {
		return nil, false
	}
	k, err := ecdsa.ParseRawPrivateKey(curve, d)
	if err != nil {
		return nil, false
	}
	return k, true
}
