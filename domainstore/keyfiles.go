package domainstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
)

// pemCertificate begins a PEM certificate block.
var pemCertificate = []byte("-----BEGIN CERTIFICATE-----")

// keyFile returns what an upload's key file holds: its private key, then
// its certificate chain as the record has it. The chain is public and
// never changes for a certificate ID; keeping it beside the key lets a
// handshake that finds the certificate uncached read one file instead of
// two (with sealed storage, the chain is sealed along with the key).
func keyFile(b *bundle.Bundle) []byte {
	return withChain(b.KeyPEM, b.CertPEM)
}

// withChain returns keyPEM followed by certPEM.
func withChain(keyPEM, certPEM []byte) []byte {
	out := make([]byte, 0, len(keyPEM)+1+len(certPEM))
	out = append(out, keyPEM...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	return append(out, certPEM...)
}

// Key files written without their chain (by earlier releases) are
// rewritten with it once a handshake has read one: at most keyFileBatch of
// them every keyFileEvery, each batch under one hold of the journal lock.
var (
	keyFileBatch = 16
	keyFileEvery = 2 * time.Second
)

// keyFileQueue holds the certificates whose key file LoadKeyPair found
// without its chain, each once, and those whose rewrite failed, which are
// not tried again in this process.
type keyFileQueue struct {
	mu     sync.Mutex
	queued []string
	known  map[string]bool // queued, or failed: true
}

// wantKeyFile queues certificate id for keyFilesLoop, unless it is queued
// or failed already, or the queue is full.
func (s *Store) wantKeyFile(id string) {
	q := &s.keyFileQ
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, seen := q.known[id]; seen || len(q.queued) >= 1024 {
		return
	}
	if q.known == nil {
		q.known = make(map[string]bool)
	}
	q.known[id] = false
	q.queued = append(q.queued, id)
}

// takeKeyFiles returns up to n queued IDs.
func (q *keyFileQueue) take(n int) []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	n = min(n, len(q.queued))
	ids := append([]string(nil), q.queued[:n]...)
	q.queued = q.queued[n:]
	return ids
}

// done forgets ids that were rewritten or found not to need it, and
// remembers those that failed.
func (q *keyFileQueue) done(ok, failed []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, id := range ok {
		delete(q.known, id)
	}
	for _, id := range failed {
		if len(q.known) < 100_000 {
			q.known[id] = true
		}
	}
}

// keyFilesLoop upgrades the queued key files until the store closes.
func (s *Store) keyFilesLoop() {
	defer close(s.keyFilesDone)
	t := time.NewTicker(keyFileEvery)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		ids := s.keyFileQ.take(keyFileBatch)
		if len(ids) == 0 {
			continue
		}
		n, failed := s.upgradeKeyFiles(context.Background(), ids)
		if n > 0 {
			s.log.Debug("added certificate chains to key files", zap.Int("certificates", n))
		}
		ok := ids[:0:0]
		for _, id := range ids {
			if _, bad := failed[id]; !bad {
				ok = append(ok, id)
			}
		}
		var bad []string
		for id, err := range failed {
			bad = append(bad, id)
			if !errors.Is(err, errClosed) {
				s.log.Warn("adding the certificate chain to a key file", zap.String("cert_id", id), zap.Error(err))
			}
		}
		s.keyFileQ.done(ok, bad)
	}
}

// upgradeKeyFiles rewrites the key files of the uploads ids that hold only
// the key, as keyFile writes them, and returns how many it rewrote and the
// errors of those it could not. Managed and deleted certificates, and key
// files that hold a chain already, are left alone.
//
// The files are read and checked (the key must match the record's leaf)
// outside the journal lock; the writes happen under it, each after memory,
// at the journal's end, still holds the certificate, so that a deletion
// cannot come between the check and the write. Holding the lock is not
// enough if this instance stalls past its lease and another takes it: so
// after the writes, the journal entry this batch would take is read, and
// when another writer took it, the files of certificates deleted meanwhile
// are deleted again (a deletion writes its entry before it deletes the key,
// so one written after that read removes the rewritten file itself).
func (s *Store) upgradeKeyFiles(ctx context.Context, ids []string) (int, map[string]error) {
	failed := make(map[string]error)
	files := make(map[string][]byte, len(ids))
	for _, id := range ids {
		if !s.uploadKnown(id) {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout())
		b, err := s.upgradedKeyFile(rctx, id)
		cancel()
		switch {
		case err != nil:
			failed[id] = err
		case b != nil:
			files[id] = b
		}
	}
	if len(files) == 0 {
		return 0, failed
	}
	// the op may still run after submit gave up waiting for it
	var mu sync.Mutex
	var written []string
	lost, late := false, false
	err := s.submit(ctx, func(tx *txn) error {
		mu.Lock()
		defer mu.Unlock()
		if late {
			return nil // the caller has moved on: write nothing
		}
		// a budget of its own, a quarter of the one the writes batched
		// with it share, so that they keep time for their journal entry
		wctx, cancel := context.WithTimeout(context.WithoutCancel(tx.ctx), s.timeout()/4)
		defer cancel()
		for id, b := range files {
			if wctx.Err() != nil {
				break // the rest wait for a later load to queue them again
			}
			if c, staged := tx.stagedCert(id); staged && c == nil {
				continue
			}
			if _, ok := tx.s.certs[id]; !ok {
				continue
			}
			if err := s.Storage().Store(wctx, CertificateKeyKey(id), b); err != nil {
				failed[id] = err
				continue
			}
			written = append(written, id)
		}
		if len(written) > 0 {
			fctx, fcancel := context.WithTimeout(context.WithoutCancel(tx.ctx), s.timeout()/4)
			_, err := s.Storage().Load(fctx, entryKey(tx.seq))
			fcancel()
			lost = !errors.Is(err, fs.ErrNotExist)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	late = true
	if err != nil {
		for id := range files {
			failed[id] = err
		}
		lost = lost || len(written) > 0
	}
	if lost {
		s.recheckKeyFiles(written)
	}
	out := make(map[string]error, len(failed))
	maps.Copy(out, failed)
	return len(written), out
}

// upgradedKeyFile returns the key file of upload id with its chain added,
// or nil if it holds a chain already.
func (s *Store) upgradedKeyFile(ctx context.Context, id string) ([]byte, error) {
	key, err := s.Storage().Load(ctx, CertificateKeyKey(id))
	if err != nil {
		return nil, err
	}
	if bytes.Contains(key, pemCertificate) {
		return nil, nil
	}
	var c keyPairRecord
	if err := s.readKnownCertificate(ctx, id, &c); err != nil {
		return nil, err
	}
	if c.KeyStorageKey != "" {
		return nil, nil // managed: CertMagic's key file
	}
	if _, err := bundle.ParseStored([]byte(c.CertificatePEM), key); err != nil {
		return nil, fmt.Errorf("the key file does not hold the certificate's key: %w", err)
	}
	return withChain(key, []byte(c.CertificatePEM)), nil
}

// recheckKeyFiles deletes again the key files of certificates in ids that
// the journal says were deleted, after a batch of rewrites found that
// another writer took the journal lock meanwhile.
func (s *Store) recheckKeyFiles(ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.timeout())
	defer cancel()
	if err := s.Sync(ctx); err != nil {
		s.log.Error("rechecking rewritten key files after losing the journal lock", zap.Error(err))
		return
	}
	for _, id := range ids {
		if s.CertificateExists(id) {
			continue
		}
		if err := s.Storage().Delete(ctx, CertificateKeyKey(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("deleting the key file of a deleted certificate", zap.String("cert_id", id), zap.Error(err))
		}
	}
}
