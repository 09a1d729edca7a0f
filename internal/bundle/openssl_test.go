package bundle

import (
	"context"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// openssl runs the openssl command line in dir. A missing openssl fails the
// test: these cases are the point of the test, not an extra.
func openssl(t *testing.T, dir string, args ...string) {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is required for this test: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// readFile returns a file of dir as a string.
func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseKeyOpenSSL(t *testing.T) {
	tests := []struct {
		name    string
		cmds    [][]string // run in order; the last one writes key.pem
		has     []string   // lines key.pem must hold, to pin the form under test
		keyType string
		code    dcerr.Code
		msgHas  string
	}{
		{name: "rsa pkcs1", cmds: [][]string{{"genrsa", "-traditional", "-out", "key.pem", "2048"}}, has: []string{"BEGIN RSA PRIVATE KEY"}, keyType: "rsa"},
		{name: "rsa pkcs8", cmds: [][]string{{"genrsa", "-out", "key.pem", "2048"}}, has: []string{"BEGIN PRIVATE KEY"}, keyType: "rsa"},
		{name: "rsa pkcs1 to pkcs8", cmds: [][]string{{"genrsa", "-traditional", "-out", "k.pem", "3072"}, {"pkcs8", "-topk8", "-nocrypt", "-in", "k.pem", "-out", "key.pem"}}, has: []string{"BEGIN PRIVATE KEY"}, keyType: "rsa"},
		{name: "ec sec1 with ec parameters", cmds: [][]string{{"ecparam", "-genkey", "-name", "prime256v1", "-out", "key.pem"}}, has: []string{"BEGIN EC PARAMETERS", "BEGIN EC PRIVATE KEY"}, keyType: "ecdsa"},
		{name: "ec sec1 noout", cmds: [][]string{{"ecparam", "-genkey", "-name", "secp384r1", "-noout", "-out", "key.pem"}}, has: []string{"BEGIN EC PRIVATE KEY"}, keyType: "ecdsa"},
		{name: "ec sec1 p521 rewritten", cmds: [][]string{{"ecparam", "-genkey", "-name", "secp521r1", "-noout", "-out", "k.pem"}, {"ec", "-in", "k.pem", "-out", "key.pem"}}, has: []string{"BEGIN EC PRIVATE KEY"}, keyType: "ecdsa"},
		{name: "ec pkcs8", cmds: [][]string{{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521", "-out", "key.pem"}}, has: []string{"BEGIN PRIVATE KEY"}, keyType: "ecdsa"},
		{name: "ed25519", cmds: [][]string{{"genpkey", "-algorithm", "ed25519", "-out", "key.pem"}}, has: []string{"BEGIN PRIVATE KEY"}, keyType: "ed25519"},
		{name: "ec parameters only via param_out", cmds: [][]string{{"ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "k.pem"}, {"ec", "-in", "k.pem", "-param_out", "-out", "key.pem"}}, has: []string{"BEGIN EC PARAMETERS"}, code: dcerr.KeyUnsupported, msgHas: "no private key"},
		{name: "ec explicit parameters", cmds: [][]string{{"ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "k.pem"}, {"ec", "-in", "k.pem", "-param_enc", "explicit", "-out", "key.pem"}}, has: []string{"BEGIN EC PRIVATE KEY"}, code: dcerr.KeyUnsupported},
		{name: "encrypted pkcs8", cmds: [][]string{{"genpkey", "-algorithm", "ed25519", "-out", "k.pem"}, {"pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:x", "-in", "k.pem", "-out", "key.pem"}}, has: []string{"BEGIN ENCRYPTED PRIVATE KEY"}, code: dcerr.KeyEncrypted},
		{name: "legacy encrypted rsa", cmds: [][]string{{"genrsa", "-aes256", "-traditional", "-passout", "pass:x", "-out", "key.pem", "2048"}}, has: []string{"Proc-Type: 4,ENCRYPTED"}, code: dcerr.KeyEncrypted},
		{name: "legacy encrypted rsa via rsa", cmds: [][]string{{"genrsa", "-out", "k.pem", "2048"}, {"rsa", "-in", "k.pem", "-aes256", "-traditional", "-passout", "pass:x", "-out", "key.pem"}}, has: []string{"Proc-Type: 4,ENCRYPTED"}, code: dcerr.KeyEncrypted},
		{name: "legacy encrypted ec", cmds: [][]string{{"ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "k.pem"}, {"ec", "-in", "k.pem", "-aes256", "-passout", "pass:x", "-out", "key.pem"}}, has: []string{"Proc-Type: 4,ENCRYPTED"}, code: dcerr.KeyEncrypted},
		{name: "dsa pkcs8", cmds: [][]string{{"dsaparam", "-noout", "-genkey", "-out", "key.pem", "1024"}}, has: []string{"BEGIN PRIVATE KEY"}, code: dcerr.KeyUnsupported, msgHas: "DSA"},
		{name: "dsa traditional", cmds: [][]string{{"dsaparam", "-noout", "-genkey", "-out", "k.pem", "1024"}, {"pkey", "-in", "k.pem", "-traditional", "-out", "key.pem"}}, has: []string{"BEGIN DSA PRIVATE KEY"}, code: dcerr.KeyUnsupported, msgHas: "DSA"},
		{name: "x25519", cmds: [][]string{{"genpkey", "-algorithm", "X25519", "-out", "key.pem"}}, has: []string{"BEGIN PRIVATE KEY"}, code: dcerr.KeyUnsupported, msgHas: "X25519"},
		{name: "ed448", cmds: [][]string{{"genpkey", "-algorithm", "ed448", "-out", "key.pem"}}, has: []string{"BEGIN PRIVATE KEY"}, code: dcerr.KeyUnsupported, msgHas: "Ed448"},
		{name: "rsa-pss", cmds: [][]string{{"genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem"}}, has: []string{"BEGIN PRIVATE KEY"}, code: dcerr.KeyUnsupported, msgHas: "RSA-PSS"},
		{name: "secp256k1", cmds: [][]string{{"ecparam", "-genkey", "-name", "secp256k1", "-noout", "-out", "key.pem"}}, has: []string{"BEGIN EC PRIVATE KEY"}, code: dcerr.KeyUnsupported},
		{name: "p224 pkcs8", cmds: [][]string{{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-224", "-out", "key.pem"}}, has: []string{"BEGIN PRIVATE KEY"}, code: dcerr.KeyUnsupported, msgHas: "P-224"},
		{name: "rsa 1024 pkcs1", cmds: [][]string{{"genrsa", "-traditional", "-out", "key.pem", "1024"}}, has: []string{"BEGIN RSA PRIVATE KEY"}, code: dcerr.KeyWeak, msgHas: "1024-bit"},
		{name: "rsa 512 pkcs1", cmds: [][]string{{"genrsa", "-traditional", "-out", "key.pem", "512"}}, has: []string{"BEGIN RSA PRIVATE KEY"}, code: dcerr.KeyWeak, msgHas: "512-bit"},
		{name: "rsa 512 pkcs8", cmds: [][]string{{"genrsa", "-out", "key.pem", "512"}}, has: []string{"BEGIN PRIVATE KEY"}, code: dcerr.KeyWeak, msgHas: "512-bit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, c := range tt.cmds {
				openssl(t, dir, c...)
			}
			keyPEM := readFile(t, dir, "key.pem")
			for _, h := range tt.has {
				if !strings.Contains(keyPEM, h) {
					t.Fatalf("openssl wrote another form than expected: no %q in key.pem", h)
				}
			}
			_, keyType, err := ParseKey(keyPEM)
			if tt.code != "" {
				e := checkRejection(t, err, tt.code, keyPEM)
				if !strings.Contains(e.Msg, tt.msgHas) {
					t.Errorf("message lacks %q: %s", tt.msgHas, e.Msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if keyType != tt.keyType {
				t.Errorf("key type = %q, want %q", keyType, tt.keyType)
			}
		})
	}
}

// TestParseOpenSSLCertificates uploads self-signed certificates and a small
// CA chain made by openssl, checks the parsed fields, and serves them.
func TestParseOpenSSLCertificates(t *testing.T) {
	subj := "/C=FR/ST=Rhone/L=Lyon/O=Example Org/OU=Ops/CN=x.example.com"
	for _, tt := range []struct {
		newkey  []string
		keyType string
	}{
		{[]string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"}, "ecdsa"},
		{[]string{"-newkey", "rsa:2048"}, "rsa"},
		{[]string{"-newkey", "ed25519"}, "ed25519"},
	} {
		t.Run("self-signed "+tt.keyType, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"req", "-x509"}, tt.newkey...)
			openssl(t, dir, append(args, "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2",
				"-set_serial", "0x00fab1", "-subj", subj,
				"-addext", "subjectAltName=DNS:x.example.com,DNS:*.x.example.com,IP:192.0.2.1",
				"-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
				"-addext", "extendedKeyUsage=serverAuth,1.3.6.1.4.1.99999.1,clientAuth")...)
			certPEM, keyPEM := readFile(t, dir, "cert.pem"), readFile(t, dir, "key.pem")

			b, err := Parse(certPEM, keyPEM)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkBundle(t, b, tt.keyType, 1)
			info := Info(b.Chain[0])
			for _, c := range []struct{ got, want string }{
				{info.SubjectCommonName, "x.example.com"},
				{info.IssuerCommonName, "x.example.com"},
				{info.SerialNumber, "fab1"},
				{info.SubjectOrganization, "Example Org"},
				{info.SubjectOrganizationalUnit, "Ops"},
				{info.SubjectLocality, "Lyon"},
				{info.SubjectProvince, "Rhone"},
				{info.SubjectCountry, "FR"},
				{strings.Join(info.SubjectAlternativeNames.DNSNames, ","), "x.example.com,*.x.example.com"},
				{strings.Join(info.SubjectAlternativeNames.IPs, ","), "192.0.2.1"},
				{strings.Join(info.KeyUsages, ","), "digital_signature,key_encipherment"},
				{strings.Join(info.ExtendedKeyUsages, ","), "server_auth,oid:1.3.6.1.4.1.99999.1,client_auth"},
			} {
				if c.got != c.want {
					t.Errorf("info field = %q, want %q", c.got, c.want)
				}
			}
			if !Covers(b.Chain[0], "a.x.example.com") || Covers(b.Chain[0], "a.b.x.example.com") {
				t.Errorf("Covers disagrees with the wildcard SAN")
			}
			roots := x509.NewCertPool()
			roots.AddCert(b.Chain[0])
			handshake(t, b.TLSCertificate(), roots, 0, "x.example.com")

			// openssl x509 -text prints the fields before the PEM block.
			openssl(t, dir, "x509", "-in", "cert.pem", "-text", "-out", "text.pem")
			text := readFile(t, dir, "text.pem")
			if !strings.HasPrefix(text, "Certificate:") {
				t.Fatalf("openssl x509 -text wrote no text before the block")
			}
			if _, err := Parse(text, keyPEM); err != nil {
				t.Errorf("certificate with openssl text rejected: %v", err)
			}

			_, err = Parse(certPEM+keyPEM, keyPEM)
			checkRejection(t, err, dcerr.CertIsKey, keyPEM)
			_, err = Parse(certPEM, certPEM)
			checkRejection(t, err, dcerr.KeyIsCert)
			_, err = Parse(certPEM, pki(t).ecLeaf.keyPEM)
			checkRejection(t, err, dcerr.KeyMismatch)

			openssl(t, dir, "req", "-new", "-key", "key.pem", "-subj", "/CN=x.example.com", "-out", "csr.pem")
			_, err = Parse(readFile(t, dir, "csr.pem"), keyPEM)
			checkRejection(t, err, dcerr.CertPEMType)
			openssl(t, dir, "x509", "-in", "cert.pem", "-trustout", "-addtrust", "serverAuth", "-out", "trusted.pem")
			_, err = Parse(readFile(t, dir, "trusted.pem"), keyPEM)
			checkRejection(t, err, dcerr.CertPEMType)
		})
	}

	t.Run("ca chain", func(t *testing.T) {
		dir := t.TempDir()
		openssl(t, dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes",
			"-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=OpenSSL Test CA",
			"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
		openssl(t, dir, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=y.example.com")
		if err := os.WriteFile(filepath.Join(dir, "ext.cnf"), []byte("subjectAltName=DNS:y.example.com\nextendedKeyUsage=serverAuth\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		openssl(t, dir, "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "7", "-days", "1", "-extfile", "ext.cnf", "-out", "leaf.pem")
		leaf, ca, key := readFile(t, dir, "leaf.pem"), readFile(t, dir, "ca.pem"), readFile(t, dir, "leaf.key")

		b, err := Parse(leaf+ca, key)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		checkBundle(t, b, "rsa", 2)
		if got := Info(b.Chain[0]).SerialNumber; got != "7" {
			t.Errorf("serial = %q, want 7", got)
		}
		roots := x509.NewCertPool()
		roots.AddCert(b.Chain[1])
		handshake(t, b.TLSCertificate(), roots, 0, "y.example.com")

		_, err = Parse(ca+leaf, key)
		e := checkRejection(t, err, dcerr.ChainOrder, key)
		if !strings.Contains(e.Msg, "found [CN=OpenSSL Test CA (issuer CN=OpenSSL Test CA), CN=y.example.com (issuer CN=OpenSSL Test CA)]") {
			t.Errorf("message does not name the order: %s", e.Msg)
		}

		// A SHA-1 signature is not a valid link in the chain.
		openssl(t, dir, "x509", "-req", "-sha1", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "8", "-days", "1", "-extfile", "ext.cnf", "-out", "sha1.pem")
		_, err = Parse(readFile(t, dir, "sha1.pem")+ca, key)
		if e := checkRejection(t, err, dcerr.ChainOrder, key); !strings.Contains(e.Msg, "SHA1") {
			t.Errorf("message does not name SHA-1: %s", e.Msg)
		}
	})
}
