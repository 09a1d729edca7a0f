package domainstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
)

// The journal is the ordered record of every change, in storage. Each
// entry is one key, written once, under the journal lock; writing it is
// the commit point of every operation in it. Entries carry the whole new
// state of each record they touch, so reading them is enough to follow the
// changes, and a crash at any point after an entry was written loses
// nothing: the next holder of the journal lock writes the records again.
//
//	journal/<seq, 16 hex digits>.json  entry number seq, from 1 up, no gaps
//	journal/head                       {"seq": S, "base": B}: every entry up
//	                                   to S is applied to the records; the
//	                                   entries below B were compacted away
//
// See docs/store.md for the invariants and the flow of a change.
const (
	journalDir  = prefix + "/journal"
	headKey     = journalDir + "/head"
	journalLock = "domaincerts_journal"
)

// Operations of a journal entry.
const (
	opPutDomain   = "put_domain"
	opDelDomain   = "delete_domain"
	opPutCert     = "put_certificate"
	opDelCert     = "delete_certificate"
	entryFormat   = 1
	headFormat    = 1
	maxEntryBytes = 4 << 20
)

func entryKey(seq uint64) string { return fmt.Sprintf("%s/%016x.json", journalDir, seq) }

// entry is one journal entry: the changes of one batch of operations.
type entry struct {
	Format int       `json:"format"`
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	// Writer is a random nonce, so that no two writers' entries are
	// ever the same bytes: a writer that reads its entry back knows it is
	// its own.
	Writer string    `json:"writer,omitempty"`
	Ops    []entryOp `json:"ops"`
}

// entryOp is one record change. A put carries the whole new record; a
// domain change names the version it replaces (Prev), whose record key
// is deleted when the change is applied.
type entryOp struct {
	Op          string       `json:"op"`
	ID          string       `json:"id"`
	Prev        uint64       `json:"prev,omitempty"`
	Name        string       `json:"name,omitempty"`
	Domain      *Domain      `json:"domain,omitempty"`
	Certificate *Certificate `json:"certificate,omitempty"`
	// DeleteKey is set when deleting a certificate whose private key the
	// store keeps (an upload): the key is deleted with the record.
	DeleteKey bool `json:"delete_key,omitempty"`

	// what this instance knows of a change it made itself, for listeners
	old    *Domain
	upload *bundle.Bundle
}

// head is the content of the head key.
type head struct {
	Format int    `json:"format"`
	Seq    uint64 `json:"seq"`
	Base   uint64 `json:"base"`

	// repaired marks a head rebuilt from the entries because the stored
	// one was damaged; the next holder of the lock writes it back.
	repaired bool
}

// errNoEntry means the journal has no entry of that number (yet).
var errNoEntry = errors.New("no such journal entry")

// errGap means entries this instance has not read were compacted away:
// only a full listing can bring it up to date.
var errGap = errors.New("journal entries were compacted before this instance read them")

// readEntry reads entry seq; errNoEntry if it does not exist. An entry
// that cannot be decoded is returned as errDamagedEntry.
func (s *Store) readEntry(ctx context.Context, seq uint64) (*entry, error) {
	b, err := s.Storage().Load(ctx, entryKey(seq))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoEntry
	}
	if err != nil {
		return nil, storageFailed("reading journal entry "+strconv.FormatUint(seq, 10), err)
	}
	e, err := decodeEntry(b)
	if err != nil || e.Seq != seq {
		if err == nil {
			err = fmt.Errorf("it holds entry %d", e.Seq)
		}
		return nil, &damagedEntryError{seq: seq, err: err}
	}
	return e, nil
}

// damagedEntryError is a journal entry that exists but cannot be decoded.
type damagedEntryError struct {
	seq uint64
	err error
}

func (e *damagedEntryError) Error() string {
	return fmt.Sprintf("journal entry %d is damaged: %v", e.seq, e.err)
}

// decodeEntry parses an entry and checks its shape: known operations,
// valid IDs, the record each operation needs.
func decodeEntry(b []byte) (*entry, error) {
	var e entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	if e.Format != entryFormat {
		return nil, fmt.Errorf("unknown entry format %d", e.Format)
	}
	for i, op := range e.Ops {
		if err := op.check(); err != nil {
			return nil, fmt.Errorf("operation %d: %w", i, err)
		}
	}
	return &e, nil
}

func (op *entryOp) check() error {
	switch op.Op {
	case opPutDomain:
		if op.Domain == nil || op.Domain.ID != op.ID || !validID(DomainPrefix, op.ID) {
			return errors.New("put_domain needs a domain record with its id")
		}
		if _, err := lexicalName(op.Domain.Domain, op.Domain.Domain); err != nil {
			return fmt.Errorf("put_domain: %w", err)
		}
		if c := op.Domain.CertificateID; c != "" && !validID(CertificatePrefix, c) {
			return errors.New("put_domain: invalid certificate id")
		}
	case opDelDomain:
		if !validID(DomainPrefix, op.ID) {
			return errors.New("delete_domain needs a domain id")
		}
	case opPutCert:
		if op.Certificate == nil || op.Certificate.ID != op.ID || !validID(CertificatePrefix, op.ID) {
			return errors.New("put_certificate needs a certificate record with its id")
		}
	case opDelCert:
		if !validID(CertificatePrefix, op.ID) {
			return errors.New("delete_certificate needs a certificate id")
		}
	default:
		return fmt.Errorf("unknown operation %q", op.Op)
	}
	return nil
}

// readHead reads the head; errNoEntry if the journal was never started.
func (s *Store) readHead(ctx context.Context) (head, error) {
	b, err := s.Storage().Load(ctx, headKey)
	if errors.Is(err, fs.ErrNotExist) {
		return head{}, errNoEntry
	}
	if err != nil {
		return head{}, storageFailed("reading the journal head", err)
	}
	var h head
	if err := json.Unmarshal(b, &h); err != nil || h.Format != headFormat || h.Base == 0 || h.Base > h.Seq+1 {
		return s.repairHead(ctx, b)
	}
	s.headDamaged.Store(false) // sound, or written back by another instance
	return h, nil
}

// repairHead rebuilds a damaged head from the entries: the journal starts
// at the oldest entry, and every entry is taken as not yet applied to the
// records (applying again is harmless). The next holder of the journal
// lock writes it back.
func (s *Store) repairHead(ctx context.Context, damaged []byte) (head, error) {
	keys, err := listKeys(ctx, s.Storage(), journalDir)
	if err != nil {
		return head{}, err
	}
	var oldest uint64
	for _, k := range keys {
		name, ok := strings.CutSuffix(path.Base(k), ".json")
		if !ok || len(name) != 16 {
			continue
		}
		if seq, err := strconv.ParseUint(name, 16, 64); err == nil && seq > 0 && (oldest == 0 || seq < oldest) {
			oldest = seq
		}
	}
	if oldest == 0 {
		// no entry at all: nothing was written since the journal started
		// (compaction always keeps entries), so the journal ends at the
		// highest record version or snapshot, the same for every instance
		var last uint64
		domains, err := listKeys(ctx, s.Storage(), domainsDir)
		if err != nil {
			return head{}, err
		}
		for _, k := range domains {
			if _, v, ok := parseDomainKey(k); ok {
				last = max(last, v)
			}
		}
		snaps, err := s.listSnapshots(ctx)
		if err != nil {
			return head{}, err
		}
		if len(snaps) > 0 {
			last = max(last, snaps[0])
		}
		oldest = last + 1
	}
	if s.headDamaged.CompareAndSwap(false, true) {
		s.log.Error("the journal head is damaged; rebuilt from the entries",
			zap.ByteString("head", truncateBytes(damaged, 200)), zap.Uint64("base", oldest))
	}
	return head{Format: headFormat, Seq: oldest - 1, Base: oldest, repaired: true}, nil
}

func (s *Store) writeHead(ctx context.Context, h head) error {
	h.Format = headFormat
	b, _ := json.Marshal(h)
	if err := s.Storage().Store(ctx, headKey, b); err != nil {
		return storageFailed("writing the journal head", err)
	}
	s.headDamaged.Store(false)
	return nil
}

func truncateBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
