package bundle

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"strconv"
	"strings"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// The key types that ParseKey returns, as the API's private_key_type names
// them.
const (
	// KeyTypeRSA is an RSA key of at least MinRSABits bits.
	KeyTypeRSA = "rsa"
	// KeyTypeECDSA is an ECDSA key on P-256, P-384 or P-521.
	KeyTypeECDSA = "ecdsa"
	// KeyTypeEd25519 is an Ed25519 key.
	KeyTypeEd25519 = "ed25519"
)

// MinRSABits is the smallest RSA modulus accepted, in bits. Smaller keys are
// rejected as KEY_WEAK.
const MinRSABits = 2048

// supportedKeys names the accepted keys for messages.
const supportedKeys = "use an RSA key of at least 2048 bits, an ECDSA key on P-256, P-384 or P-521, or an Ed25519 key"

// ParseKey parses private_key_pem. It checks, in this order, that the value
// is present, within MaxKeyPEM, PEM, not a certificate, not encrypted, free of
// PEM headers, a single key in a supported form, and strong enough. Accepted
// forms are "RSA PRIVATE KEY" (PKCS#1), "EC PRIVATE KEY" (SEC 1, optionally
// with an "EC PARAMETERS" block, which is skipped) and "PRIVATE KEY" (PKCS#8
// holding an RSA, ECDSA or Ed25519 key). Text around the blocks is ignored.
// It returns the key and its type: KeyTypeRSA, KeyTypeECDSA or
// KeyTypeEd25519. Every error is a *dcerr.Error.
func ParseKey(keyPEM string) (crypto.Signer, string, error) {
	if strings.TrimSpace(keyPEM) == "" {
		return nil, "", dcerr.New(dcerr.KeyMissing,
			"private_key_pem is empty; paste the unencrypted private key of the leaf certificate in PEM form")
	}
	if len(keyPEM) > MaxKeyPEM {
		return nil, "", dcerr.New(dcerr.FieldTooLarge,
			"private_key_pem is %d bytes, over the limit of %d bytes; paste only the private key of the leaf certificate",
			len(keyPEM), MaxKeyPEM).WithDetail("field", "private_key_pem")
	}
	sc := scanPEM(keyPEM)
	if sc.broken > 0 {
		return nil, "", dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem block %d is not valid PEM (a BEGIN line without its END line, an END line without its BEGIN line, or damaged base64); expected a PEM private key, pasted whole",
			sc.broken).WithDetail("block", strconv.Itoa(sc.broken))
	}
	if len(sc.blocks) == 0 {
		return nil, "", dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem holds no PEM block; expected a PEM private key (a BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY line), converting DER first with openssl pkey -inform der -in key.der")
	}
	for i, b := range sc.blocks {
		if isCertType(b.Type) {
			return nil, "", dcerr.New(dcerr.KeyIsCert,
				"private_key_pem block %d is a certificate; paste certificates into certificate_pem and only the private key into private_key_pem",
				i+1).WithDetail("block", strconv.Itoa(i+1))
		}
	}
	for i, b := range sc.blocks {
		if b.Type == "ENCRYPTED PRIVATE KEY" || procTypeEncrypted(b) {
			return nil, "", dcerr.New(dcerr.KeyEncrypted,
				"private_key_pem block %d is encrypted; upload it unencrypted (decrypt it with openssl pkey -in key.pem -out plain.pem), it is stored sealed",
				i+1).WithDetail("block", strconv.Itoa(i+1))
		}
	}
	for i, b := range sc.blocks {
		if len(b.Headers) > 0 {
			return nil, "", dcerr.New(dcerr.PEMHeaders,
				"private_key_pem block %d carries PEM headers (%s); remove the header lines between its BEGIN line and the base64 data",
				i+1, headerNames(b)).WithDetail("block", strconv.Itoa(i+1))
		}
	}

	key, n, params := -1, 0, 0
	for i, b := range sc.blocks {
		switch b.Type {
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
			key = i
			n++
		case "EC PARAMETERS":
			params++
		default:
			return nil, "", unsupportedType(i+1, b.Type)
		}
	}
	switch {
	case n == 0:
		return nil, "", dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem holds no private key; paste the private key block, not only its EC PARAMETERS")
	case n > 1:
		return nil, "", dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem holds %d private keys; paste only the private key of the leaf certificate", n)
	case params > 1 || params == 1 && sc.blocks[key].Type != "EC PRIVATE KEY":
		return nil, "", dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem holds EC PARAMETERS that do not go with its key; paste only the private key block")
	}
	return parseKeyBlock(key+1, sc.blocks[key])
}

// procTypeEncrypted reports whether b has an RFC 1421 "Proc-Type: 4,ENCRYPTED"
// header, whatever the case of its name and value.
func procTypeEncrypted(b *pem.Block) bool {
	for k, v := range b.Headers {
		if strings.EqualFold(k, "Proc-Type") && strings.Contains(strings.ToUpper(v), "ENCRYPTED") {
			return true
		}
	}
	return false
}

// unsupportedType rejects block n of private_key_pem for its type.
func unsupportedType(n int, t string) *dcerr.Error {
	var what string
	switch {
	case t == "OPENSSH PRIVATE KEY":
		what = "is an OpenSSH private key; convert it to PKCS#8 with ssh-keygen -p -m PKCS8 -f key (RSA and ECDSA keys)"
	case t == "DSA PRIVATE KEY":
		what = "is a DSA key, which TLS no longer uses; " + supportedKeys
	case strings.Contains(t, "PUBLIC KEY"):
		what = "is a public key; paste the private key of the leaf certificate"
	case strings.Contains(t, "CERTIFICATE REQUEST"):
		what = "is a certificate signing request; paste the private key of the leaf certificate"
	default:
		what = fmt.Sprintf("has type %s; expected a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block", typeName(t))
	}
	return dcerr.New(dcerr.KeyUnsupported, "private_key_pem block %d %s", n, what).WithDetail("block", strconv.Itoa(n))
}

// parseKeyBlock parses block n, one of the accepted key types, and checks the
// key's algorithm and strength.
func parseKeyBlock(n int, b *pem.Block) (crypto.Signer, string, error) {
	switch b.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
		if err != nil {
			if bits := pkcs1Bits(b.Bytes); bits > 0 && bits < MinRSABits {
				return nil, "", weakRSA(n, bits)
			}
			return nil, "", badForm(n, b, "a PKCS#1 RSA key", err)
		}
		return checkKey(n, k)
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(b.Bytes)
		if err != nil {
			return nil, "", badForm(n, b, "a SEC 1 EC key on P-256, P-384 or P-521", err)
		}
		return checkKey(n, k)
	default: // "PRIVATE KEY"
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			var p8 pkcs8
			if _, aerr := asn1.Unmarshal(b.Bytes, &p8); aerr == nil {
				alg := p8.Algo.Algorithm
				if alg.Equal(oidRSA) {
					if bits := pkcs1Bits(p8.PrivateKey); bits > 0 && bits < MinRSABits {
						return nil, "", weakRSA(n, bits)
					}
				} else if name, ok := pkcs8Names[alg.String()]; ok {
					return nil, "", dcerr.New(dcerr.KeyUnsupported,
						"private_key_pem block %d is a key of type %s, which is not supported; %s",
						n, name, supportedKeys).WithDetail("block", strconv.Itoa(n))
				}
			}
			return nil, "", badForm(n, b, "a PKCS#8 RSA, ECDSA or Ed25519 key", err)
		}
		return checkKey(n, k)
	}
}

// checkKey accepts the supported algorithms, curves and sizes.
func checkKey(n int, k any) (crypto.Signer, string, error) {
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < MinRSABits {
			return nil, "", weakRSA(n, bits)
		}
		return k, KeyTypeRSA, nil
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return k, KeyTypeECDSA, nil
		}
		return nil, "", dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem block %d is an ECDSA key on %s, which is not supported; %s",
			n, clean(k.Curve.Params().Name, 20), supportedKeys).WithDetail("block", strconv.Itoa(n))
	case ed25519.PrivateKey:
		return k, KeyTypeEd25519, nil
	case *ecdh.PrivateKey:
		return nil, "", dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem block %d is an X25519 key, which cannot sign; %s", n, supportedKeys).WithDetail("block", strconv.Itoa(n))
	default:
		return nil, "", dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem block %d holds an unsupported kind of key; %s", n, supportedKeys).WithDetail("block", strconv.Itoa(n))
	}
}

// weakRSA rejects an RSA key of bits bits.
func weakRSA(n, bits int) *dcerr.Error {
	return dcerr.New(dcerr.KeyWeak,
		"private_key_pem block %d is a %d-bit RSA key; RSA keys need at least %d bits, so generate a new key (openssl genrsa 2048) and have the certificate reissued for it",
		n, bits, MinRSABits).WithDetail("block", strconv.Itoa(n))
}

// badForm rejects block b, number n, whose DER does not parse as the form its
// type names.
func badForm(n int, b *pem.Block, want string, err error) *dcerr.Error {
	if label := actualLabel(b.Bytes); label != "" && label != b.Type {
		return dcerr.New(dcerr.KeyUnsupported,
			"private_key_pem block %d is labelled %s but holds a %s key; change its BEGIN and END lines to %s",
			n, typeName(b.Type), formNames[label], label).WithDetail("block", strconv.Itoa(n))
	}
	return dcerr.New(dcerr.KeyUnsupported,
		"private_key_pem block %d is not %s (%s); %s, in PEM form as your tool wrote it",
		n, want, parserReason(err), supportedKeys).WithDetail("block", strconv.Itoa(n))
}

// formNames names the key form of each accepted PEM type.
var formNames = map[string]string{
	"PRIVATE KEY":     "PKCS#8",
	"RSA PRIVATE KEY": "PKCS#1 RSA",
	"EC PRIVATE KEY":  "SEC 1 EC",
}

// actualLabel returns the PEM type that the key DER would parse under, or ""
// if it parses under none.
func actualLabel(der []byte) string {
	if _, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return "PRIVATE KEY"
	}
	if _, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return "RSA PRIVATE KEY"
	}
	if _, err := x509.ParseECPrivateKey(der); err == nil {
		return "EC PRIVATE KEY"
	}
	return ""
}

// pkcs8 is the start of a PKCS#8 PrivateKeyInfo (RFC 5208), enough to name
// the algorithm of a key that crypto/x509 rejects.
type pkcs8 struct {
	Version    int
	Algo       pkix.AlgorithmIdentifier
	PrivateKey []byte
}

// oidRSA is rsaEncryption.
var oidRSA = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}

// pkcs8Names names PKCS#8 algorithms that crypto/x509 does not parse.
var pkcs8Names = map[string]string{
	"1.2.840.113549.1.1.10": "RSA-PSS",
	"1.2.840.10040.4.1":     "DSA",
	"1.3.101.110":           "X25519",
	"1.3.101.111":           "X448",
	"1.3.101.113":           "Ed448",
	"1.2.840.10046.2.1":     "X9.42 DH",
	"1.2.840.113549.1.3.1":  "DH",
}

// pkcs1Bits returns the modulus size of a PKCS#1 RSAPrivateKey, or 0 if der
// does not start like one. It lets a key that crypto/x509 refuses for being
// too small still be reported as KEY_WEAK.
func pkcs1Bits(der []byte) int {
	var k struct {
		Version int
		N       *big.Int
	}
	if _, err := asn1.Unmarshal(der, &k); err != nil || k.N == nil || k.N.Sign() <= 0 {
		return 0
	}
	return k.N.BitLen()
}
