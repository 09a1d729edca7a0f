package bundle

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestInfo(t *testing.T) {
	p := pki(t)
	got := Info(p.ecLeaf.cert)
	want := CertInfo{
		SubjectCommonName: "a.example.com",
		SubjectAlternativeNames: SubjectAlternativeNames{
			DNSNames: []string{"a.example.com", "*.wild.example.com"},
			IPs:      []string{"127.0.0.1", "2001:db8::1"},
		},
		NotBefore:         p.ecLeaf.cert.NotBefore.UTC(),
		NotAfter:          p.ecLeaf.cert.NotAfter.UTC(),
		KeyUsages:         []string{"digital_signature", "key_encipherment"},
		ExtendedKeyUsages: []string{"server_auth", "client_auth", "oid:1.2.3.4.5"},
		IssuerCommonName:  "Test Intermediate",
		SerialNumber:      "a1b2c3d4e5f60718293a4b5c6d7e8f9",
		// Both O values sit in one RDN, a DER SET, which sorts the shorter
		// "Second Org" first: the first value is the certificate's first.
		SubjectOrganization:       "Second Org",
		SubjectOrganizationalUnit: "Ops",
		SubjectLocality:           "Lyon",
		SubjectProvince:           "Rhone",
		SubjectCountry:            "FR",
		Fingerprint:               fmt.Sprintf("%x", sha256.Sum256(p.ecLeaf.cert.Raw)),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Info() =\n%+v\nwant\n%+v", got, want)
	}
	if got.NotBefore.Location() != time.UTC || got.NotAfter.Location() != time.UTC {
		t.Errorf("times are not in UTC")
	}
	// a stored record of an earlier version gets it from its PEM
	chain := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.ecLeaf.cert.Raw}))
	if fp := Fingerprint(chain); fp != want.Fingerprint {
		t.Errorf("Fingerprint(PEM) = %s, want %s", fp, want.Fingerprint)
	}
	if fp := Fingerprint("no PEM here"); fp != "" {
		t.Errorf("Fingerprint(no PEM) = %q, want empty", fp)
	}
}

func TestInfoUsageNames(t *testing.T) {
	tmpl := leafTemplate("u.example.com")
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment |
		x509.KeyUsageDataEncipherment | x509.KeyUsageKeyAgreement | x509.KeyUsageCertSign | x509.KeyUsageCRLSign |
		x509.KeyUsageEncipherOnly | x509.KeyUsageDecipherOnly
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{
		x509.ExtKeyUsageAny, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageCodeSigning,
		x509.ExtKeyUsageEmailProtection, x509.ExtKeyUsageTimeStamping, x509.ExtKeyUsageOCSPSigning,
		x509.ExtKeyUsageIPSECEndSystem, x509.ExtKeyUsageMicrosoftServerGatedCrypto,
	}
	tmpl.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 99999, 7}}
	c, err := makeCert("p256", tmpl, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantKU := "digital_signature,content_commitment,key_encipherment,data_encipherment,key_agreement,cert_sign,crl_sign,encipher_only,decipher_only"
	wantEKU := "any,server_auth,client_auth,code_signing,email_protection,time_stamping,ocsp_signing,oid:1.3.6.1.5.5.7.3.5,oid:1.3.6.1.4.1.311.10.3.3,oid:1.3.6.1.4.1.99999.7"
	for name, info := range map[string]CertInfo{
		"from the extension": Info(c.cert),
		// A certificate built in memory has no raw extensions: Info falls
		// back to the parsed fields.
		"from parsed fields": Info(&x509.Certificate{KeyUsage: tmpl.KeyUsage, ExtKeyUsage: tmpl.ExtKeyUsage, UnknownExtKeyUsage: tmpl.UnknownExtKeyUsage}),
	} {
		t.Run(name, func(t *testing.T) {
			if got := strings.Join(info.KeyUsages, ","); got != wantKU {
				t.Errorf("key usages = %s, want %s", got, wantKU)
			}
			if got := strings.Join(info.ExtendedKeyUsages, ","); got != wantEKU {
				t.Errorf("extended key usages = %s, want %s", got, wantEKU)
			}
		})
	}
}

func TestInfoJSON(t *testing.T) {
	bare, err := makeCert("ed25519", &x509.Certificate{
		SerialNumber: big.NewInt(0x0100),
		NotBefore:    time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)),
		NotAfter:     time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		info CertInfo
		want map[string]string // fields to check, as raw JSON
	}{
		{"bare certificate", Info(bare.cert), map[string]string{
			"subject_common_name":       `""`,
			"subject_alternative_names": `{"dns_names":[],"ips":[]}`,
			"key_usages":                `[]`,
			"extended_key_usages":       `[]`,
			"serial_number":             `"100"`,
			"not_before":                `"2026-01-02T02:04:05Z"`,
			"not_after":                 `"2027-01-02T03:04:05Z"`,
			"subject_country":           `""`,
		}},
		{"nil certificate", Info(nil), map[string]string{
			"subject_alternative_names": `{"dns_names":[],"ips":[]}`,
			"key_usages":                `[]`,
			"extended_key_usages":       `[]`,
			"serial_number":             `""`,
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.info)
			if err != nil {
				t.Fatal(err)
			}
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(b, &fields); err != nil {
				t.Fatal(err)
			}
			var keys []string
			for k := range fields {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			wantKeys := "extended_key_usages,fingerprint,issuer_common_name,key_usages,not_after,not_before,serial_number,subject_alternative_names,subject_common_name,subject_country,subject_locality,subject_organization,subject_organizational_unit,subject_province"
			if got := strings.Join(keys, ","); got != wantKeys {
				t.Errorf("JSON keys = %s\nwant %s", got, wantKeys)
			}
			for k, v := range tt.want {
				if string(fields[k]) != v {
					t.Errorf("%s = %s, want %s", k, fields[k], v)
				}
			}
		})
	}
}
