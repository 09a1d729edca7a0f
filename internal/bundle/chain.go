package bundle

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// ParseCertificates parses certificate_pem into a certificate chain, leaf
// first. It checks, in this order, that the value is present, within
// MaxCertPEM, made of PEM blocks that decode, holds no private key, holds only
// CERTIFICATE blocks, carries no PEM headers, parses as X.509, and that each
// certificate is signed by the next one. Text around the blocks is ignored and
// CRLF line endings are accepted. Every error is a *dcerr.Error.
func ParseCertificates(certPEM string) ([]*x509.Certificate, error) {
	if strings.TrimSpace(certPEM) == "" {
		return nil, dcerr.New(dcerr.CertPEMMissing,
			"certificate_pem is empty; paste the certificate chain in PEM form, leaf first, then each intermediate")
	}
	if len(certPEM) > MaxCertPEM {
		return nil, dcerr.New(dcerr.CertTooLarge,
			"certificate_pem is %d bytes, over the limit of %d bytes; paste only the leaf certificate and its intermediates",
			len(certPEM), MaxCertPEM).WithDetail("field", "certificate_pem")
	}
	sc := scanPEM(certPEM)
	if sc.broken > 0 {
		return nil, dcerr.New(dcerr.CertPEMInvalid,
			"certificate_pem block %d is not valid PEM (a BEGIN line without its END line, an END line without its BEGIN line, or damaged base64); paste each certificate whole, from its BEGIN CERTIFICATE line to its END CERTIFICATE line",
			sc.broken).WithDetail("block", strconv.Itoa(sc.broken))
	}
	if len(sc.blocks) == 0 {
		return nil, dcerr.New(dcerr.CertPEMInvalid,
			"certificate_pem holds no PEM block; paste the certificate chain in PEM form (BEGIN CERTIFICATE lines), converting DER first with openssl x509 -inform der -in cert.der")
	}
	for i, b := range sc.blocks {
		if isKeyType(b.Type) {
			return nil, dcerr.New(dcerr.CertIsKey,
				"certificate_pem block %d is a private key (type %s); paste the key into private_key_pem and only certificates into certificate_pem",
				i+1, typeName(b.Type)).WithDetail("block", strconv.Itoa(i+1))
		}
	}
	for i, b := range sc.blocks {
		if b.Type != "CERTIFICATE" {
			return nil, dcerr.New(dcerr.CertPEMType,
				"certificate_pem block %d has type %s; %s",
				i+1, typeName(b.Type), certTypeHint(b.Type)).WithDetail("block", strconv.Itoa(i+1))
		}
	}
	for i, b := range sc.blocks {
		if len(b.Headers) > 0 {
			return nil, dcerr.New(dcerr.PEMHeaders,
				"certificate_pem block %d carries PEM headers (%s); remove the header lines between its BEGIN line and the base64 data",
				i+1, headerNames(b)).WithDetail("block", strconv.Itoa(i+1))
		}
	}
	chain := make([]*x509.Certificate, len(sc.blocks))
	for i, b := range sc.blocks {
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, dcerr.New(dcerr.CertPEMInvalid,
				"certificate_pem block %d is not a valid X.509 certificate (%s); paste the certificate exactly as your certificate authority issued it",
				i+1, parserReason(err)).WithDetail("block", strconv.Itoa(i+1))
		}
		chain[i] = c
	}
	if err := checkChainOrder(chain); err != nil {
		return nil, err
	}
	return chain, nil
}

// certTypeHint tells the user what to do with a non-certificate block.
func certTypeHint(t string) string {
	switch {
	case strings.Contains(t, "CERTIFICATE REQUEST"):
		return "that is a certificate signing request; paste the certificate your certificate authority issued for it"
	case t == "TRUSTED CERTIFICATE":
		return "convert it to a plain certificate with openssl x509 -in cert.pem -out plain.pem"
	case isCertType(t):
		return "re-encode it as a plain CERTIFICATE block with openssl x509 -in cert.pem -out plain.pem"
	default:
		return "certificate_pem takes only CERTIFICATE blocks, leaf first, then each intermediate"
	}
}

// parserReason is a parser error fit for a message: short, without Go API
// advice or ASN.1 internals.
func parserReason(err error) string {
	s := strings.TrimPrefix(err.Error(), "x509: ")
	if strings.Contains(s, "asn1:") {
		return "malformed DER"
	}
	if k := strings.Index(s, " (use "); k > 0 {
		s = s[:k]
	}
	return clean(s, 80)
}

// maxOrderShown is how many certificates a CHAIN_ORDER message lists; the
// "order" detail always lists them all.
const maxOrderShown = 10

// checkChainOrder checks that chain[i] is signed by chain[i+1] for every i.
// The last certificate is not checked: it may be a self-signed root, or an
// intermediate whose issuer the client already has.
func checkChainOrder(chain []*x509.Certificate) error {
	for i := 0; i+1 < len(chain); i++ {
		err := chain[i].CheckSignatureFrom(chain[i+1])
		if err == nil {
			continue
		}
		order := make([]string, len(chain))
		for j, c := range chain {
			order[j] = describe(c)
		}
		shown := strings.Join(order, ", ")
		if len(order) > maxOrderShown {
			shown = fmt.Sprintf("%s, and %d more", strings.Join(order[:maxOrderShown], ", "), len(order)-maxOrderShown)
		}
		return dcerr.New(dcerr.ChainOrder,
			"certificate_pem block %d is not signed by block %d%s; order the chain leaf first, then each issuer: found [%s]",
			i+1, i+2, orderHint(chain, i, err), shown).WithDetail("order", strings.Join(order, "; "))
	}
	return nil
}

// orderHint explains why chain[i] is not signed by chain[i+1], most likely
// cause first.
func orderHint(chain []*x509.Certificate, i int, err error) string {
	c, next := chain[i], chain[i+1]
	var ia x509.InsecureAlgorithmError
	if errors.As(err, &ia) {
		return fmt.Sprintf(" (block %d is signed with %s, which is not accepted; have it reissued)", i+1, x509.SignatureAlgorithm(ia))
	}
	if next.CheckSignatureFrom(c) == nil {
		return fmt.Sprintf(" (block %d is signed by block %d: they are in reverse order)", i+2, i+1)
	}
	if selfSigned(c) {
		return fmt.Sprintf(" (block %d is self-signed, so it can only be the last block)", i+1)
	}
	for j, other := range chain {
		if j != i && j != i+1 && c.CheckSignatureFrom(other) == nil {
			return fmt.Sprintf(" (its issuer is block %d)", j+1)
		}
	}
	if next.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil {
		return fmt.Sprintf(" (block %d made the signature but is not a CA certificate)", i+2)
	}
	return fmt.Sprintf(" (its issuer %s is missing; add that intermediate certificate right after block %d)", name(c.Issuer), i+1)
}

// selfSigned reports whether c is signed by its own key.
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) &&
		c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// describe names a certificate and its issuer for a message: "CN=a.example
// (issuer CN=Int)".
func describe(c *x509.Certificate) string {
	return name(c.Subject) + " (issuer " + name(c.Issuer) + ")"
}

// name is a short, safe form of a distinguished name: its common name, else
// the whole name.
func name(n pkix.Name) string {
	if n.CommonName != "" {
		return "CN=" + clean(n.CommonName, 64)
	}
	if s := n.String(); s != "" {
		return clean(s, 64)
	}
	return "an empty name"
}
