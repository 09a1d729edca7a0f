package domainstore

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
	"github.com/domaincerts/caddy-domaincerts/internal/testpki"
)

// heldRecords holds the writes of certificate records until released, as a
// slow storage does between a write's answer and its records.
type heldRecords struct {
	*memstorage.Storage
	hold    chan struct{}
	holding atomic.Bool
}

func (h *heldRecords) Store(ctx context.Context, key string, v []byte) error {
	if h.holding.Load() && strings.HasPrefix(key, certificatesDir+"/") && strings.HasSuffix(key, ".json") {
		<-h.hold
	}
	return h.Storage.Store(ctx, key, v)
}

// TestCertificateReadBeforeItsRecord: a GET right after an update, before
// the updated record is written, returns the update (from the journal
// entry), not the record it replaces.
func TestCertificateReadBeforeItsRecord(t *testing.T) {
	ctx := context.Background()
	st := &heldRecords{Storage: new(memstorage.Storage), hold: make(chan struct{})}
	s := openOn(t, st)
	chain := testpki.NewChain(t, "Held")
	leaf := chain.Leaf(t, "held.test")
	c, err := s.CreateCertificate(ctx, CertificateInput{CertificatePEM: leaf.ChainPEM, PrivateKeyPEM: leaf.KeyPEM, Description: "first"})
	if err != nil {
		t.Fatal(err)
	}
	// the create's own record is written after its answer: hold only the
	// update's
	for !st.Exists(ctx, certRecordKey(c.ID)) {
		time.Sleep(time.Millisecond)
	}
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	st.holding.Store(true)
	defer close(st.hold)
	second := "second"
	if _, err := s.UpdateCertificate(ctx, c.ID, CertificatePatch{Description: &second}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetCertificate(ctx, c.ID)
	if err != nil || got.Description != "second" || got.Fingerprint == "" {
		t.Fatalf("GET before the record is written: %+v, %v; want description second", got, err)
	}
	list, _, err := s.ListCertificates(ctx, 10, "")
	if err != nil || len(list) != 1 || list[0].Description != "second" {
		t.Fatalf("list before the record is written: %+v, %v", list, err)
	}
}
