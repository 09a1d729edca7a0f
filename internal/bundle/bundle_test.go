package bundle

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// pemOf encodes one PEM block.
func pemOf(typ string, headers map[string]string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Headers: headers, Bytes: der}))
}

// pad appends comment lines to s until it is exactly n bytes long.
func pad(s string, n int) string {
	var b strings.Builder
	b.WriteString(s)
	for b.Len() < n {
		line := "# padding after the blocks\n"
		if rem := n - b.Len(); rem < len(line) {
			line = strings.Repeat("#", rem)
		}
		b.WriteString(line)
	}
	return b.String()
}

// crlf turns LF line endings into CRLF.
func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

// checkRejection asserts that err is a *dcerr.Error with code want whose
// message follows the house rules and echoes no PEM line of the inputs.
func checkRejection(t *testing.T, err error, want dcerr.Code, inputs ...string) *dcerr.Error {
	t.Helper()
	var e *dcerr.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want a *dcerr.Error with code %s", err, err, want)
	}
	if e.Code != want {
		t.Fatalf("code = %s, want %s; message: %s", e.Code, want, e.Msg)
	}
	checkMessage(t, e.Msg, inputs...)
	t.Logf("%s: %s", e.Code, e.Msg)
	return e
}

// checkMessage asserts the house rules for an error message: lowercase
// start, no trailing period, no PEM boundary and no PEM body line.
func checkMessage(t testing.TB, msg string, inputs ...string) {
	t.Helper()
	if msg == "" {
		t.Fatal("empty message")
	}
	if r := []rune(msg)[0]; unicode.IsUpper(r) {
		t.Errorf("message starts uppercase: %s", msg)
	}
	if strings.HasSuffix(msg, ".") {
		t.Errorf("message ends with a period: %s", msg)
	}
	if strings.Contains(msg, "-----") {
		t.Errorf("message holds a PEM boundary: %s", msg)
	}
	for _, in := range inputs {
		for _, line := range strings.Split(in, "\n") {
			line = strings.TrimSpace(line)
			if len(line) >= 24 && !strings.HasPrefix(line, "-----") && !strings.HasPrefix(line, "#") && strings.Contains(msg, line) {
				t.Errorf("message echoes input line %q: %s", line, msg)
			}
		}
	}
}

func TestParse(t *testing.T) {
	p := pki(t)
	leaf, inter, root := p.ecLeaf.pem, p.inter.pem, p.root.pem
	chain := join(leaf, inter)
	ecKey := p.ecLeaf.keyPEM
	ecParams, err := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	if err != nil {
		t.Fatal(err)
	}
	xKey, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	xDER, err := x509.MarshalPKCS8PrivateKey(xKey)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := newKey("p224")
	if err != nil {
		t.Fatal(err)
	}
	notX509 := pemOf("CERTIFICATE", nil, []byte("this is not DER"))
	derOf := func(s string) []byte { b, _ := pem.Decode([]byte(s)); return b.Bytes }

	tests := []struct {
		name      string
		cert, key string
		code      dcerr.Code // "" means accepted
		keyType   string
		chainLen  int
		msgHas    []string
	}{
		// Accepted bundles.
		{name: "ecdsa leaf and intermediate", cert: chain, key: ecKey, keyType: "ecdsa", chainLen: 2},
		{name: "root included at the end", cert: join(chain, root), key: ecKey, keyType: "ecdsa", chainLen: 3},
		{name: "lone leaf", cert: leaf, key: ecKey, keyType: "ecdsa", chainLen: 1},
		{name: "lone self-signed leaf", cert: p.selfLeaf.pem, key: p.selfLeaf.keyPEM, keyType: "ecdsa", chainLen: 1},
		{name: "ecdsa sec1", cert: chain, key: keyPEMAs(t, p.ecLeaf.key, "sec1"), keyType: "ecdsa", chainLen: 2},
		{name: "ecdsa sec1 after ec parameters", cert: chain, key: pemOf("EC PARAMETERS", nil, ecParams) + keyPEMAs(t, p.ecLeaf.key, "sec1"), keyType: "ecdsa", chainLen: 2},
		{name: "ecdsa p384", cert: join(p.p384Leaf.pem, inter), key: p.p384Leaf.keyPEM, keyType: "ecdsa", chainLen: 2},
		{name: "rsa pkcs8", cert: join(p.rsaLeaf.pem, inter), key: p.rsaLeaf.keyPEM, keyType: "rsa", chainLen: 2},
		{name: "rsa pkcs1", cert: join(p.rsaLeaf.pem, inter), key: keyPEMAs(t, p.rsaLeaf.key, "pkcs1"), keyType: "rsa", chainLen: 2},
		{name: "ed25519", cert: join(p.edLeaf.pem, inter, root), key: p.edLeaf.keyPEM, keyType: "ed25519", chainLen: 3},
		{name: "crlf line endings", cert: crlf(join(chain, root)), key: crlf(ecKey), keyType: "ecdsa", chainLen: 3},
		{name: "text around blocks", cert: "subject=CN=a.example.com\nissuer=CN=Test Intermediate\n" + leaf + "\nthe intermediate:\n" + inter + "\nthanks!\n", key: "Bag Attributes\n    localKeyID: 01\n" + ecKey + "\n", keyType: "ecdsa", chainLen: 2},
		{name: "trailing text", cert: chain + "this is the end", key: ecKey + "  \n\n", keyType: "ecdsa", chainLen: 2},
		{name: "certificate_pem at the limit", cert: pad(chain, MaxCertPEM), key: ecKey, keyType: "ecdsa", chainLen: 2},
		{name: "private_key_pem at the limit", cert: chain, key: pad(ecKey, MaxKeyPEM), keyType: "ecdsa", chainLen: 2},

		// certificate_pem presence, size, PEM, types, headers, X.509.
		{name: "empty certificate_pem", cert: "", key: ecKey, code: dcerr.CertPEMMissing},
		{name: "whitespace certificate_pem", cert: " \r\n\t\n", key: ecKey, code: dcerr.CertPEMMissing},
		{name: "certificate_pem over the limit", cert: pad(chain, MaxCertPEM+1), key: ecKey, code: dcerr.CertTooLarge},
		{name: "certificate_pem not PEM", cert: "hello, here is my certificate", key: ecKey, code: dcerr.CertPEMInvalid, msgHas: []string{"no PEM block"}},
		{name: "certificate_pem DER", cert: string(p.ecLeaf.cert.Raw), key: ecKey, code: dcerr.CertPEMInvalid},
		{name: "trailing broken block", cert: chain + "-----BEGIN CERTIFICATE-----\nMIIBkTCCATegAwIBAgIU\n", key: ecKey, code: dcerr.CertPEMInvalid, msgHas: []string{"block 3"}},
		{name: "begin line only", cert: "-----BEGIN CERTIFICATE-----", key: ecKey, code: dcerr.CertPEMInvalid, msgHas: []string{"block 1"}},
		{name: "stray end line", cert: chain + "-----END CERTIFICATE-----\n", key: ecKey, code: dcerr.CertPEMInvalid, msgHas: []string{"block 3"}},
		{name: "leading end line", cert: "-----END CERTIFICATE-----\n" + chain, key: ecKey, code: dcerr.CertPEMInvalid, msgHas: []string{"block 1"}},
		{name: "damaged base64", cert: "-----BEGIN CERTIFICATE-----\n!!!!****\n-----END CERTIFICATE-----\n", key: ecKey, code: dcerr.CertPEMInvalid},
		{name: "mismatched end type", cert: strings.Replace(leaf, "END CERTIFICATE", "END CERT", 1) + inter, key: ecKey, code: dcerr.CertPEMInvalid, msgHas: []string{"block 1"}},
		{name: "block is not X.509", cert: leaf + notX509, key: ecKey, code: dcerr.CertPEMInvalid, msgHas: []string{"block 2", "not a valid X.509"}},
		{name: "key pasted into certificate_pem", cert: ecKey, key: ecKey, code: dcerr.CertIsKey},
		{name: "leaf then its key in certificate_pem", cert: leaf + ecKey, key: ecKey, code: dcerr.CertIsKey, msgHas: []string{"block 2"}},
		{name: "rsa private key in certificate_pem", cert: keyPEMAs(t, p.rsaLeaf.key, "pkcs1"), key: ecKey, code: dcerr.CertIsKey},
		{name: "ec private key in certificate_pem", cert: keyPEMAs(t, p.ecLeaf.key, "sec1") + leaf, key: ecKey, code: dcerr.CertIsKey},
		{name: "encrypted private key in certificate_pem", cert: pemOf("ENCRYPTED PRIVATE KEY", nil, []byte{1, 2, 3}), key: ecKey, code: dcerr.CertIsKey},
		{name: "key beats other types", cert: pemOf("CERTIFICATE REQUEST", nil, []byte{1}) + ecKey, key: ecKey, code: dcerr.CertIsKey},
		{name: "csr in certificate_pem", cert: pemOf("CERTIFICATE REQUEST", nil, []byte{1}), key: ecKey, code: dcerr.CertPEMType, msgHas: []string{"signing request"}},
		{name: "crl after leaf", cert: leaf + pemOf("X509 CRL", nil, []byte{1}), key: ecKey, code: dcerr.CertPEMType, msgHas: []string{"block 2", `"X509 CRL"`}},
		{name: "trusted certificate", cert: pemOf("TRUSTED CERTIFICATE", nil, p.ecLeaf.cert.Raw), key: ecKey, code: dcerr.CertPEMType},
		{name: "type beats headers", cert: pemOf("CERTIFICATE", map[string]string{"Comment": "x"}, p.ecLeaf.cert.Raw) + pemOf("PKCS7", nil, []byte{1}), key: ecKey, code: dcerr.CertPEMType},
		{name: "certificate with headers", cert: leaf + pemOf("CERTIFICATE", map[string]string{"Comment": "intermediate"}, p.inter.cert.Raw), key: ecKey, code: dcerr.PEMHeaders, msgHas: []string{"block 2", "Comment"}},
		{name: "headers beat x509", cert: notX509 + pemOf("CERTIFICATE", map[string]string{"Comment": "x"}, p.inter.cert.Raw), key: ecKey, code: dcerr.PEMHeaders},

		// Chain order.
		{name: "wrong order", cert: join(inter, leaf), key: ecKey, code: dcerr.ChainOrder,
			msgHas: []string{"block 1 is not signed by block 2 (block 2 is signed by block 1: they are in reverse order)", "found [CN=Test Intermediate (issuer CN=Test Root), CN=a.example.com (issuer CN=Test Intermediate)]"}},
		{name: "wrong order whatever the key", cert: join(inter, leaf), key: "", code: dcerr.ChainOrder},
		{name: "reversed chain with root", cert: join(root, inter, leaf), key: ecKey, code: dcerr.ChainOrder, msgHas: []string{"reverse order"}},
		{name: "root first", cert: join(root, leaf, inter), key: ecKey, code: dcerr.ChainOrder, msgHas: []string{"block 1 is self-signed"}},
		{name: "root in the middle", cert: join(leaf, root, inter), key: ecKey, code: dcerr.ChainOrder,
			msgHas: []string{"block 1 is not signed by block 2 (its issuer is block 3)", "found [CN=a.example.com (issuer CN=Test Intermediate), CN=Test Root (issuer CN=Test Root), CN=Test Intermediate (issuer CN=Test Root)]"}},
		{name: "missing intermediate", cert: join(leaf, root), key: ecKey, code: dcerr.ChainOrder,
			msgHas: []string{"its issuer CN=Test Intermediate is missing", "found [CN=a.example.com (issuer CN=Test Intermediate), CN=Test Root (issuer CN=Test Root)]"}},
		{name: "unrelated second leaf", cert: join(leaf, p.otherLeaf.pem), key: ecKey, code: dcerr.ChainOrder, msgHas: []string{"is missing"}},
		{name: "issuer is not a CA", cert: join(p.nonCALeaf.pem, p.otherLeaf.pem), key: p.nonCALeaf.keyPEM, code: dcerr.ChainOrder, msgHas: []string{"block 2 made the signature but is not a CA certificate"}},

		// private_key_pem presence, size, PEM, type, encryption, headers, form, strength.
		{name: "empty private_key_pem", cert: chain, key: "", code: dcerr.KeyMissing},
		{name: "whitespace private_key_pem", cert: chain, key: "\r\n  \t", code: dcerr.KeyMissing},
		{name: "private_key_pem over the limit", cert: chain, key: pad(ecKey, MaxKeyPEM+1), code: dcerr.FieldTooLarge},
		// the limits come before the certificate's own checks
		{name: "private_key_pem over the limit, no certificate", cert: "", key: pad(ecKey, MaxKeyPEM+1), code: dcerr.FieldTooLarge},
		{name: "private_key_pem over the limit, garbage certificate", cert: "garbage", key: pad(ecKey, MaxKeyPEM+1), code: dcerr.FieldTooLarge},
		{name: "private_key_pem not PEM", cert: chain, key: "my key is secret", code: dcerr.KeyUnsupported, msgHas: []string{"expected a PEM private key"}},
		{name: "private_key_pem broken block", cert: chain, key: ecKey[:len(ecKey)/2], code: dcerr.KeyUnsupported, msgHas: []string{"expected a PEM private key"}},
		{name: "certificate pasted into private_key_pem", cert: chain, key: leaf, code: dcerr.KeyIsCert},
		{name: "key then certificate in private_key_pem", cert: chain, key: ecKey + leaf, code: dcerr.KeyIsCert, msgHas: []string{"block 2"}},
		{name: "encrypted pkcs8", cert: chain, key: pemOf("ENCRYPTED PRIVATE KEY", nil, []byte{0x30, 0}), code: dcerr.KeyEncrypted},
		{name: "proc-type encrypted", cert: chain, key: pemOf("EC PRIVATE KEY", map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"}, []byte{1, 2, 3}), code: dcerr.KeyEncrypted},
		{name: "proc-type in other case", cert: chain, key: pemOf("RSA PRIVATE KEY", map[string]string{"proc-type": "4,encrypted"}, []byte{1}), code: dcerr.KeyEncrypted},
		{name: "key with headers", cert: chain, key: pemOf("PRIVATE KEY", map[string]string{"Comment": "mine"}, derOf(ecKey)), code: dcerr.PEMHeaders, msgHas: []string{"Comment"}},
		{name: "openssh key", cert: chain, key: pemOf("OPENSSH PRIVATE KEY", nil, []byte("openssh-key-v1\x00")), code: dcerr.KeyUnsupported, msgHas: []string{"OpenSSH"}},
		{name: "dsa key type", cert: chain, key: pemOf("DSA PRIVATE KEY", nil, []byte{0x30, 0}), code: dcerr.KeyUnsupported, msgHas: []string{"DSA"}},
		{name: "public key", cert: chain, key: pemOf("PUBLIC KEY", nil, []byte{0x30, 0}), code: dcerr.KeyUnsupported, msgHas: []string{"public key"}},
		{name: "two keys", cert: chain, key: ecKey + p.otherLeaf.keyPEM, code: dcerr.KeyUnsupported, msgHas: []string{"2 private keys"}},
		{name: "ec parameters only", cert: chain, key: pemOf("EC PARAMETERS", nil, ecParams), code: dcerr.KeyUnsupported},
		{name: "ec parameters with pkcs8", cert: chain, key: pemOf("EC PARAMETERS", nil, ecParams) + ecKey, code: dcerr.KeyUnsupported},
		{name: "unparseable pkcs8", cert: chain, key: pemOf("PRIVATE KEY", nil, []byte("not DER at all")), code: dcerr.KeyUnsupported},
		{name: "pkcs8 labelled as pkcs1", cert: chain, key: pemOf("RSA PRIVATE KEY", nil, derOf(p.rsaLeaf.keyPEM)), code: dcerr.KeyUnsupported},
		{name: "x25519 pkcs8", cert: chain, key: pemOf("PRIVATE KEY", nil, xDER), code: dcerr.KeyUnsupported, msgHas: []string{"X25519"}},
		{name: "p224 sec1", cert: chain, key: keyPEMAs(t, p224, "sec1"), code: dcerr.KeyUnsupported, msgHas: []string{"P-224"}},
		{name: "p224 pkcs8", cert: chain, key: keyPEMAs(t, p224, "pkcs8"), code: dcerr.KeyUnsupported, msgHas: []string{"P-224"}},
		{name: "rsa 1024 pkcs8", cert: join(p.rsaWeakLeaf.pem, inter), key: p.rsaWeakLeaf.keyPEM, code: dcerr.KeyWeak, msgHas: []string{"1024-bit"}},
		{name: "rsa 1024 pkcs1", cert: join(p.rsaWeakLeaf.pem, inter), key: keyPEMAs(t, p.rsaWeakLeaf.key, "pkcs1"), code: dcerr.KeyWeak},
		{name: "weak key before mismatch", cert: chain, key: p.rsaWeakLeaf.keyPEM, code: dcerr.KeyWeak},

		// Key matches the leaf.
		{name: "key of another certificate", cert: chain, key: p.otherLeaf.keyPEM, code: dcerr.KeyMismatch, msgHas: []string{"does not belong to the leaf"}},
		{name: "key of the intermediate", cert: chain, key: p.inter.keyPEM, code: dcerr.KeyMismatch, msgHas: []string{"block 2 (CN=Test Intermediate)"}},
		{name: "rsa key for an ecdsa leaf", cert: chain, key: p.rsaLeaf.keyPEM, code: dcerr.KeyMismatch, msgHas: []string{"rsa key", "ecdsa public key"}},
		{name: "ed25519 key for an ecdsa leaf", cert: chain, key: p.edLeaf.keyPEM, code: dcerr.KeyMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse(tt.cert, tt.key)
			if tt.code != "" {
				if err == nil {
					t.Fatalf("accepted, want %s", tt.code)
				}
				e := checkRejection(t, err, tt.code, tt.cert, tt.key)
				for _, s := range tt.msgHas {
					if !strings.Contains(e.Msg, s) {
						t.Errorf("message lacks %q: %s", s, e.Msg)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			checkBundle(t, b, tt.keyType, tt.chainLen)
		})
	}
}

// checkBundle asserts the shape of an accepted bundle and that its canonical
// PEM parses back to the same bundle.
func checkBundle(t *testing.T, b *Bundle, keyType string, chainLen int) {
	t.Helper()
	if b.KeyType != keyType {
		t.Errorf("KeyType = %q, want %q", b.KeyType, keyType)
	}
	if len(b.Chain) != chainLen {
		t.Fatalf("len(Chain) = %d, want %d", len(b.Chain), chainLen)
	}
	var want bytes.Buffer
	for _, c := range b.Chain {
		pem.Encode(&want, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if !bytes.Equal(b.CertPEM, want.Bytes()) {
		t.Errorf("CertPEM is not the canonical chain:\n%s", b.CertPEM)
	}
	if !bytes.HasPrefix(b.KeyPEM, []byte("-----BEGIN PRIVATE KEY-----\n")) || bytes.Count(b.KeyPEM, []byte("-----BEGIN")) != 1 || bytes.Contains(b.KeyPEM, []byte("\r")) {
		t.Errorf("KeyPEM is not one canonical PKCS#8 block")
	}
	again, err := Parse(string(b.CertPEM), string(b.KeyPEM))
	if err != nil {
		t.Fatalf("canonical PEM rejected: %v", err)
	}
	if again.KeyType != b.KeyType || len(again.Chain) != len(b.Chain) || !bytes.Equal(again.KeyPEM, b.KeyPEM) {
		t.Errorf("canonical PEM parses to a different bundle")
	}
	tc := b.TLSCertificate()
	if len(tc.Certificate) != servedLen(b) || tc.Leaf == nil || !tc.Leaf.Equal(b.Chain[0]) || !bytes.Equal(tc.Certificate[0], b.Chain[0].Raw) {
		t.Errorf("TLSCertificate() = %d certs, leaf set %v", len(tc.Certificate), tc.Leaf != nil)
	}
	if k, ok := tc.PrivateKey.(interface{ Equal(crypto.PrivateKey) bool }); !ok || !k.Equal(b.Key) {
		t.Errorf("TLSCertificate().PrivateKey is not the bundle's key")
	}
}

func TestParseDetails(t *testing.T) {
	p := pki(t)
	_, err := Parse(join(p.ecLeaf.pem, p.inter.pem), pad(p.ecLeaf.keyPEM, MaxKeyPEM+1))
	e := checkRejection(t, err, dcerr.FieldTooLarge)
	if e.Details["field"] != "private_key_pem" {
		t.Errorf("details = %v, want field=private_key_pem", e.Details)
	}
	_, err = Parse(join(p.ecLeaf.pem, p.root.pem, p.inter.pem), p.ecLeaf.keyPEM)
	e = checkRejection(t, err, dcerr.ChainOrder)
	order := e.Details["order"]
	want := "CN=a.example.com (issuer CN=Test Intermediate); CN=Test Root (issuer CN=Test Root); CN=Test Intermediate (issuer CN=Test Root)"
	if order != want {
		t.Errorf("details order = %q, want %q", order, want)
	}

	// A long chain is cut short in the message, never in the details.
	_, err = Parse(strings.Repeat(p.ecLeaf.pem, 12), p.ecLeaf.keyPEM)
	e = checkRejection(t, err, dcerr.ChainOrder)
	if order := strings.Split(e.Details["order"], "; "); len(order) != 12 || !strings.HasSuffix(e.Msg, ", and 2 more]") {
		t.Errorf("long chain: %d in details, message %s", len(order), e.Msg)
	}
}

// TestTLSCertificateHandshake serves each accepted bundle in a real TLS
// handshake and verifies it as a client that trusts only the test root.
func TestTLSCertificateHandshake(t *testing.T) {
	p := pki(t)
	roots := x509.NewCertPool()
	roots.AddCert(p.root.cert)
	tests := []struct {
		name      string
		cert, key string
		version   uint16
	}{
		{"ecdsa p256", join(p.ecLeaf.pem, p.inter.pem), p.ecLeaf.keyPEM, tls.VersionTLS13},
		{"ecdsa p384 with root", join(p.p384Leaf.pem, p.inter.pem, p.root.pem), p.p384Leaf.keyPEM, tls.VersionTLS13},
		{"rsa pkcs1 tls 1.2", join(p.rsaLeaf.pem, p.inter.pem), keyPEMAs(t, p.rsaLeaf.key, "pkcs1"), tls.VersionTLS12},
		{"rsa tls 1.3", join(p.rsaLeaf.pem, p.inter.pem), p.rsaLeaf.keyPEM, tls.VersionTLS13},
		{"ed25519", join(p.edLeaf.pem, p.inter.pem), p.edLeaf.keyPEM, tls.VersionTLS13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse(tt.cert, tt.key)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			handshake(t, b.TLSCertificate(), roots, tt.version, "a.example.com")
		})
	}
}

// handshake runs a TLS handshake over net.Pipe with cert on the server side
// and fails t unless the client verifies it for serverName. A version of 0
// lets crypto/tls choose.
func handshake(t *testing.T, cert tls.Certificate, roots *x509.CertPool, version uint16, serverName string) {
	t.Helper()
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	srvErr := make(chan error, 1)
	go func() {
		srv := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: version, MaxVersion: version})
		err := srv.Handshake()
		if err != nil {
			sc.Close()
		}
		srvErr <- err
	}()
	cli := tls.Client(cc, &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: version, MaxVersion: version})
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	st := cli.ConnectionState()
	if version != 0 && st.Version != version {
		t.Errorf("version = %x, want %x", st.Version, version)
	}
	if !st.PeerCertificates[0].Equal(cert.Leaf) {
		t.Errorf("client got another leaf")
	}
	if len(st.VerifiedChains) == 0 {
		t.Errorf("client verified no chain")
	}
}

func BenchmarkParse(b *testing.B) {
	p := pki(b)
	for _, bb := range []struct {
		name      string
		cert, key string
	}{
		{"ecdsa", join(p.ecLeaf.pem, p.inter.pem, p.root.pem), p.ecLeaf.keyPEM},
		{"rsa", join(p.rsaLeaf.pem, p.inter.pem, p.root.pem), p.rsaLeaf.keyPEM},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(bb.cert, bb.key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// servedLen is how many certificates TLSCertificate serves: the chain less
// a self-signed root at its end.
func servedLen(b *Bundle) int {
	n := len(b.Chain)
	if n > 1 && selfSigned(b.Chain[n-1]) {
		return n - 1
	}
	return n
}

func TestParseStored(t *testing.T) {
	p := pki(t)
	tests := []struct {
		name  string
		chain string
		key   string
		want  int // certificates served
	}{
		{"leaf and intermediate", join(p.ecLeaf.pem, p.inter.pem), p.ecLeaf.keyPEM, 2},
		{"root at the end is left out", join(p.ecLeaf.pem, p.inter.pem, p.root.pem), p.ecLeaf.keyPEM, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse(tt.chain, tt.key)
			if err != nil {
				t.Fatal(err)
			}
			// twice: the second time the root test is remembered
			last := b.Chain[len(b.Chain)-1].Raw
			for i := range 2 {
				tc, err := ParseStored(b.CertPEM, b.KeyPEM)
				if err != nil {
					t.Fatal(err)
				}
				if len(tc.Certificate) != tt.want || tc.Leaf == nil || !tc.Leaf.Equal(b.Chain[0]) {
					t.Fatalf("ParseStored #%d: %d certificates, leaf %v", i+1, len(tc.Certificate), tc.Leaf != nil)
				}
				want := b.TLSCertificate()
				if len(want.Certificate) != len(tc.Certificate) {
					t.Fatalf("ParseStored #%d serves %d certificates, TLSCertificate %d", i+1, len(tc.Certificate), len(want.Certificate))
				}
				rootMemoMu.RLock()
				self, remembered := rootMemo[sha256.Sum256(last)]
				rootMemoMu.RUnlock()
				if !remembered || self != (tt.want < len(b.Chain)) {
					t.Fatalf("ParseStored #%d: root test of the last certificate remembered %v as %v", i+1, remembered, self)
				}
			}
		})
	}
	// the key forms CertMagic writes for the certificates it issues
	ecParams, err := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	if err != nil {
		t.Fatal(err)
	}
	certmagicPEM := func(k crypto.PrivateKey) string {
		b, err := certmagic.PEMEncodePrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	chain := join(p.ecLeaf.pem, p.inter.pem)
	for _, k := range []struct{ name, cert, key string }{
		{"sec1", chain, keyPEMAs(t, p.ecLeaf.key, "sec1")},
		{"sec1 after ec parameters", chain, pemOf("EC PARAMETERS", nil, ecParams) + keyPEMAs(t, p.ecLeaf.key, "sec1")},
		{"pkcs1", join(p.rsaLeaf.pem, p.inter.pem), keyPEMAs(t, p.rsaLeaf.key, "pkcs1")},
		{"ed25519 pkcs8", join(p.edLeaf.pem, p.inter.pem), p.edLeaf.keyPEM},
		{"certmagic ecdsa", chain, certmagicPEM(p.ecLeaf.key)},
		{"certmagic rsa", join(p.rsaLeaf.pem, p.inter.pem), certmagicPEM(p.rsaLeaf.key)},
		{"certmagic ed25519", join(p.edLeaf.pem, p.inter.pem), certmagicPEM(p.edLeaf.key)},
	} {
		tc, err := ParseStored([]byte(k.cert), []byte(k.key))
		if err != nil {
			t.Errorf("%s: %v", k.name, err)
			continue
		}
		if len(tc.Certificate) != 2 || tc.Leaf == nil || tc.PrivateKey == nil {
			t.Errorf("%s: %d certificates, leaf %v, key %v", k.name, len(tc.Certificate), tc.Leaf != nil, tc.PrivateKey != nil)
		}
	}
	for _, bad := range []struct{ name, cert, key, want string }{
		{"key of another certificate", p.ecLeaf.pem, p.rsaLeaf.keyPEM, "does not match"},
		{"key of the intermediate", chain, keyPEMAs(t, p.inter.key, "pkcs8"), "does not match"},
		{"no key", chain, pemOf("EC PARAMETERS", nil, ecParams), "no private key"},
		{"no certificate", p.ecLeaf.keyPEM, p.ecLeaf.keyPEM, "no certificate"},
		{"corrupt key", chain, pemOf("PRIVATE KEY", nil, []byte{0x30, 0x03, 0x02, 0x01, 0x00}), "parsing the private key"},
		{"unknown key type", chain, pemOf("OPENSSH PRIVATE KEY", nil, []byte{1}), `unsupported type "OPENSSH PRIVATE KEY"`},
		// pem.Decode passes over a block whose body is not base64
		{"damaged intermediate", p.ecLeaf.pem + strings.Replace(p.inter.pem, "\n", "\n!", 1), p.ecLeaf.keyPEM, "1 of 2 certificate blocks do not decode"},
	} {
		if _, err := ParseStored([]byte(bad.cert), []byte(bad.key)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err = %v, want one containing %q", bad.name, err, bad.want)
		}
	}
}

// TestTrimmedLeaf checks that the leaf handed to CertMagic for serving
// keeps every field serving and certificate selection read, for every key
// type, whichever way the certificate was loaded.
func TestTrimmedLeaf(t *testing.T) {
	p := pki(t)
	for _, tt := range []struct {
		name string
		leaf *testCert
	}{{"p256", p.ecLeaf}, {"p384", p.p384Leaf}, {"rsa", p.rsaLeaf}, {"ed25519", p.edLeaf}} {
		leaf := tt.leaf
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse(join(leaf.pem, p.inter.pem), leaf.keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			stored, err := ParseStored(b.CertPEM, b.KeyPEM)
			if err != nil {
				t.Fatal(err)
			}
			uploaded := b.TLSCertificate()
			for name, tc := range map[string]tls.Certificate{"uploaded": uploaded, "stored": stored} {
				got, want := tc.Leaf, leaf.cert
				switch {
				case got == b.Chain[0]:
					t.Errorf("%s: leaf is the parsed certificate itself, not a trimmed copy", name)
				case !got.Equal(want) || got.SerialNumber.Cmp(want.SerialNumber) != 0:
					t.Errorf("%s: leaf is another certificate", name)
				case !slices.Equal(got.DNSNames, want.DNSNames) || !got.NotBefore.Equal(want.NotBefore) || !got.NotAfter.Equal(want.NotAfter):
					t.Errorf("%s: names or dates lost: %v %v %v", name, got.DNSNames, got.NotBefore, got.NotAfter)
				case got.Subject.CommonName != want.Subject.CommonName || !slices.Equal(got.Subject.Organization, want.Subject.Organization) || got.Issuer.CommonName != want.Issuer.CommonName:
					t.Errorf("%s: subject or issuer lost: %v / %v", name, got.Subject, got.Issuer)
				case got.PublicKeyAlgorithm != want.PublicKeyAlgorithm || got.KeyUsage != want.KeyUsage || !slices.Equal(got.ExtKeyUsage, want.ExtKeyUsage):
					t.Errorf("%s: key algorithm or usages lost", name)
				case got.Extensions != nil || got.Subject.Names != nil:
					t.Errorf("%s: leaf not trimmed: %d extensions, %d subject attributes", name, len(got.Extensions), len(got.Subject.Names))
				}
				pub, ok := got.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
				if !ok || !pub.Equal(want.PublicKey) {
					t.Errorf("%s: public key %T does not match the certificate's", name, got.PublicKey)
				}
			}
			if len(b.Chain[0].Extensions) == 0 {
				t.Error("trimming changed the bundle's own parsed leaf")
			}
		})
	}
}
