package bundle

import (
	"strings"
	"testing"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

func TestParseCertificates(t *testing.T) {
	p := pki(t)
	chain, err := ParseCertificates("intermediate below\n" + crlf(p.ecLeaf.pem+"\n\n"+p.inter.pem+p.root.pem))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a.example.com", "Test Intermediate", "Test Root"}
	if len(chain) != len(want) {
		t.Fatalf("len(chain) = %d, want %d", len(chain), len(want))
	}
	for i, c := range chain {
		if c.Subject.CommonName != want[i] {
			t.Errorf("chain[%d] = %s, want %s", i, c.Subject.CommonName, want[i])
		}
	}

	// The first failing check decides, across all blocks: a key in block 3
	// beats a wrong type in block 1, headers in block 1 lose to both.
	in := pemOf("CERTIFICATE", map[string]string{"A": "b"}, p.ecLeaf.cert.Raw) + pemOf("X509 CRL", nil, []byte{1}) + p.ecLeaf.keyPEM
	_, err = ParseCertificates(in)
	if e := checkRejection(t, err, dcerr.CertIsKey, in); !strings.Contains(e.Msg, "block 3") {
		t.Errorf("message does not name block 3: %s", e.Msg)
	}
}
