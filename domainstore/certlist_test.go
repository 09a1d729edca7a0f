package domainstore

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// flakyListStorage fails the first failures listings of the certificates.
type flakyListStorage struct {
	*memstorage.Storage
	failures atomic.Int32
}

func (f *flakyListStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	if strings.HasPrefix(path, certificatesDir) && f.failures.Add(-1) >= 0 {
		return nil, errors.New("storage unavailable")
	}
	return f.Storage.List(ctx, path, recursive)
}

// TestCertificateListingRetried checks that a failed listing of the
// certificates at start-up makes certificate operations fail for a while,
// not for good: the store lists again until it succeeds.
func TestCertificateListingRetried(t *testing.T) {
	defer func(d time.Duration) { certListRetry = d }(certListRetry)
	certListRetry = 10 * time.Millisecond
	ctx := context.Background()

	// a certificate stored by an earlier run
	st := &flakyListStorage{Storage: new(memstorage.Storage)}
	first := openOn(t, st)
	l := testpki.NewCA(t, "Listing CA").Issue(t, "a.example.test")
	c, err := first.CreateCertificate(ctx, CertificateInput{CertificatePEM: l.CertPEM, PrivateKeyPEM: l.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	st.failures.Store(3)
	s := openOn(t, st)
	// three failures take at least 70 ms of pauses: this runs before
	if s.CertificateExists(c.ID) {
		t.Fatal("the certificate is known although the listing failed")
	}
	if err := s.waitCertificates(); err == nil || !strings.Contains(err.Error(), "storage unavailable") {
		t.Fatalf("during the outage: %v, want the listing error", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !s.CertificateExists(c.ID) {
		if time.Now().After(deadline) {
			t.Fatal("the certificate list never recovered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got, err := s.GetCertificate(ctx, c.ID); err != nil || got.ID != c.ID {
		t.Fatalf("after the outage: %v, %v", got, err)
	}
}
