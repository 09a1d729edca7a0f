package bundle

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"time"
)

// CertInfo holds the fields of the API's TLS certificate object that come
// from the leaf certificate. Every field is always present in JSON: absent
// strings are "" and absent lists are [], never null, as the contract asks.
type CertInfo struct {
	// SubjectCommonName is the subject's common name, or "".
	SubjectCommonName string `json:"subject_common_name"`
	// SubjectAlternativeNames are the DNS names and IP addresses the
	// certificate is valid for.
	SubjectAlternativeNames SubjectAlternativeNames `json:"subject_alternative_names"`
	// NotBefore is the start of the validity period, in UTC.
	NotBefore time.Time `json:"not_before"`
	// NotAfter is the end of the validity period, in UTC.
	NotAfter time.Time `json:"not_after"`
	// KeyUsages are the key usage names (digital_signature, cert_sign, ...)
	// in the order of RFC 5280's bit string.
	KeyUsages []string `json:"key_usages"`
	// ExtendedKeyUsages are the extended key usage names (server_auth,
	// client_auth, ...) in certificate order; an unnamed one is
	// "oid:<dotted>".
	ExtendedKeyUsages []string `json:"extended_key_usages"`
	// IssuerCommonName is the issuer's common name, or "".
	IssuerCommonName string `json:"issuer_common_name"`
	// SerialNumber is the serial number in lowercase hex, no colons.
	SerialNumber string `json:"serial_number"`
	// SubjectOrganization is the subject's first O value, or "".
	SubjectOrganization string `json:"subject_organization"`
	// SubjectOrganizationalUnit is the subject's first OU value, or "".
	SubjectOrganizationalUnit string `json:"subject_organizational_unit"`
	// SubjectLocality is the subject's first L value, or "".
	SubjectLocality string `json:"subject_locality"`
	// SubjectProvince is the subject's first ST value, or "".
	SubjectProvince string `json:"subject_province"`
	// SubjectCountry is the subject's first C value, or "".
	SubjectCountry string `json:"subject_country"`
	// Fingerprint is the SHA-256 of the leaf's DER, in lowercase hex.
	Fingerprint string `json:"fingerprint"`
}

// Fingerprint returns the SHA-256 of the DER of the first certificate in
// chainPEM, in lowercase hex; "" if there is none.
func Fingerprint(chainPEM string) string {
	block, _ := pem.Decode([]byte(chainPEM))
	if block == nil {
		return ""
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}

// SubjectAlternativeNames are the names a certificate is valid for. Both
// lists are never nil.
type SubjectAlternativeNames struct {
	// DNSNames are the DNS names, as written in the certificate.
	DNSNames []string `json:"dns_names"`
	// IPs are the IP addresses in their canonical text form.
	IPs []string `json:"ips"`
}

// keyUsageNames names x509.KeyUsage bits, lowest bit first.
var keyUsageNames = []string{
	"digital_signature", "content_commitment", "key_encipherment",
	"data_encipherment", "key_agreement", "cert_sign", "crl_sign",
	"encipher_only", "decipher_only",
}

// extKeyUsageNames names extended key usage OIDs (RFC 5280, 4.2.1.12).
var extKeyUsageNames = map[string]string{
	"2.5.29.37.0":       "any",
	"1.3.6.1.5.5.7.3.1": "server_auth",
	"1.3.6.1.5.5.7.3.2": "client_auth",
	"1.3.6.1.5.5.7.3.3": "code_signing",
	"1.3.6.1.5.5.7.3.4": "email_protection",
	"1.3.6.1.5.5.7.3.8": "time_stamping",
	"1.3.6.1.5.5.7.3.9": "ocsp_signing",
}

// extKeyUsageOIDs are the OIDs of the extended key usages that crypto/x509
// knows but the API does not name, so that they can be shown as "oid:...".
var extKeyUsageOIDs = map[x509.ExtKeyUsage]string{
	x509.ExtKeyUsageAny:                            "2.5.29.37.0",
	x509.ExtKeyUsageServerAuth:                     "1.3.6.1.5.5.7.3.1",
	x509.ExtKeyUsageClientAuth:                     "1.3.6.1.5.5.7.3.2",
	x509.ExtKeyUsageCodeSigning:                    "1.3.6.1.5.5.7.3.3",
	x509.ExtKeyUsageEmailProtection:                "1.3.6.1.5.5.7.3.4",
	x509.ExtKeyUsageIPSECEndSystem:                 "1.3.6.1.5.5.7.3.5",
	x509.ExtKeyUsageIPSECTunnel:                    "1.3.6.1.5.5.7.3.6",
	x509.ExtKeyUsageIPSECUser:                      "1.3.6.1.5.5.7.3.7",
	x509.ExtKeyUsageTimeStamping:                   "1.3.6.1.5.5.7.3.8",
	x509.ExtKeyUsageOCSPSigning:                    "1.3.6.1.5.5.7.3.9",
	x509.ExtKeyUsageMicrosoftServerGatedCrypto:     "1.3.6.1.4.1.311.10.3.3",
	x509.ExtKeyUsageNetscapeServerGatedCrypto:      "2.16.840.1.113730.4.1",
	x509.ExtKeyUsageMicrosoftCommercialCodeSigning: "1.3.6.1.4.1.311.2.1.22",
	x509.ExtKeyUsageMicrosoftKernelCodeSigning:     "1.3.6.1.4.1.311.61.1.1",
}

// oidExtKeyUsage is the extended key usage extension.
var oidExtKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}

// Info returns the API fields of leaf. A nil leaf gives empty fields.
func Info(leaf *x509.Certificate) CertInfo {
	info := CertInfo{
		SubjectAlternativeNames: SubjectAlternativeNames{DNSNames: []string{}, IPs: []string{}},
		KeyUsages:               []string{},
		ExtendedKeyUsages:       []string{},
	}
	if leaf == nil {
		return info
	}
	info.SubjectCommonName = leaf.Subject.CommonName
	info.SubjectAlternativeNames.DNSNames = append(info.SubjectAlternativeNames.DNSNames, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		info.SubjectAlternativeNames.IPs = append(info.SubjectAlternativeNames.IPs, ip.String())
	}
	info.NotBefore = leaf.NotBefore.UTC()
	info.NotAfter = leaf.NotAfter.UTC()
	for i, n := range keyUsageNames {
		if leaf.KeyUsage&(1<<i) != 0 {
			info.KeyUsages = append(info.KeyUsages, n)
		}
	}
	for _, oid := range extKeyUsages(leaf) {
		if n, ok := extKeyUsageNames[oid]; ok {
			info.ExtendedKeyUsages = append(info.ExtendedKeyUsages, n)
		} else {
			info.ExtendedKeyUsages = append(info.ExtendedKeyUsages, "oid:"+oid)
		}
	}
	info.IssuerCommonName = leaf.Issuer.CommonName
	sum := sha256.Sum256(leaf.Raw)
	info.Fingerprint = hex.EncodeToString(sum[:])
	if leaf.SerialNumber != nil {
		info.SerialNumber = leaf.SerialNumber.Text(16)
	}
	info.SubjectOrganization = first(leaf.Subject.Organization)
	info.SubjectOrganizationalUnit = first(leaf.Subject.OrganizationalUnit)
	info.SubjectLocality = first(leaf.Subject.Locality)
	info.SubjectProvince = first(leaf.Subject.Province)
	info.SubjectCountry = first(leaf.Subject.Country)
	return info
}

// extKeyUsages returns the dotted OIDs of c's extended key usages in
// certificate order, read from the extension itself; crypto/x509 splits them
// into known and unknown ones and loses the order.
func extKeyUsages(c *x509.Certificate) []string {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidExtKeyUsage) {
			continue
		}
		var oids []asn1.ObjectIdentifier
		if rest, err := asn1.Unmarshal(ext.Value, &oids); err != nil || len(rest) > 0 {
			break
		}
		out := make([]string, len(oids))
		for i, oid := range oids {
			out[i] = oid.String()
		}
		return out
	}
	var out []string
	for _, u := range c.ExtKeyUsage {
		if oid, ok := extKeyUsageOIDs[u]; ok {
			out = append(out, oid)
		}
	}
	for _, oid := range c.UnknownExtKeyUsage {
		out = append(out, oid.String())
	}
	return out
}

// first returns the first value or "".
func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}
