package domainstore

import (
	"bytes"
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
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
// rewritten with it when a handshake has read one: at most
// keyFileBatch of them every keyFileEvery, each batch under one hold of
// the journal lock, so that the writes that share it are barely delayed.
var (
	keyFileBatch = 16
	keyFileEvery = time.Second
)

// wantKeyFile queues certificate id, whose key file LoadKeyPair found
// without its chain, for upgradeKeyFiles; a full queue drops it (a later
// load asks again).
func (s *Store) wantKeyFile(id string) {
	select {
	case s.keyFiles <- id:
	default:
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
		var ids []string
	drain:
		for len(ids) < keyFileBatch {
			select {
			case id := <-s.keyFiles:
				ids = append(ids, id)
			default:
				break drain
			}
		}
		if len(ids) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
		n, err := s.upgradeKeyFiles(ctx, ids)
		cancel()
		if err != nil {
			s.log.Warn("adding certificate chains to key files", zap.Int("certificates", len(ids)), zap.Error(err))
		} else if n > 0 {
			s.log.Debug("added certificate chains to key files", zap.Int("certificates", n))
		}
	}
}

// upgradeKeyFiles rewrites the key files of the uploads ids that hold only
// the key as keyFile writes them, and returns how many it rewrote. It runs
// under the journal lock with memory at the journal's end, so a deletion
// cannot come between the check and the write (a deletion committed after
// it removes the rewritten file); managed and deleted certificates, and key
// files that hold the chain already, are left as they are. A key that does
// not match the record's leaf is left as it is, and reported.
func (s *Store) upgradeKeyFiles(ctx context.Context, ids []string) (int, error) {
	n := 0
	err := s.submit(ctx, func(tx *txn) error {
		for _, id := range ids {
			c, err := tx.certificate(id)
			if dcerr.CodeOf(err) == dcerr.NotFound {
				continue
			}
			if err != nil {
				return err
			}
			if c.KeyStorageKey != "" {
				continue // managed: CertMagic's key file
			}
			key, err := s.Storage().Load(tx.ctx, CertificateKeyKey(id))
			if err != nil {
				return storageFailed("reading the private key of "+id, err)
			}
			if bytes.Contains(key, pemCertificate) {
				continue
			}
			if _, err := bundle.ParseStored([]byte(c.CertificatePEM), key); err != nil {
				return storageFailed("checking the private key of "+id, err)
			}
			if err := s.Storage().Store(tx.ctx, CertificateKeyKey(id), withChain(key, []byte(c.CertificatePEM))); err != nil {
				return storageFailed("writing the private key of "+id, err)
			}
			n++
		}
		return nil
	})
	return n, err
}
