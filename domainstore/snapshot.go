package domainstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// snapshotKey holds a copy of the index so that start-up need not read
// every domain record. It is only a cache: each entry names the record
// version it reflects, and start-up reads every record whose stored
// version differs (written since, or by another instance).
//
// The format is text, one domain a line, fields separated by one space:
//
//	domaincerts-index 1
//	<domain id> <record version, hex> <name> <certificate id or -> <m|u>
//
// (m: managed, u: not). It is decoded several times faster than JSON,
// which matters at a million domains.
const snapshotKey = prefix + "/index.snapshot"

const snapshotHeader = "domaincerts-index 1"

// snapshotInterval is how long after a change the snapshot is rewritten.
const snapshotInterval = 10 * time.Second

// domainRecordKey is the storage key of version v of domain id. Every
// write makes a new version and deletes the previous one, so that listing
// the directory tells each record's version without reading it.
func domainRecordKey(id string, v uint64) string {
	return fmt.Sprintf("%s/%s.%016x.json", domainsDir, id, v)
}

// parseDomainKey returns the ID and version of a domain record key.
func parseDomainKey(key string) (string, uint64, bool) {
	base, ok := strings.CutSuffix(path.Base(key), ".json")
	if !ok {
		return "", 0, false
	}
	id, ver, ok := strings.Cut(base, ".")
	if !ok || !validID(DomainPrefix, id) || len(ver) != 16 {
		return "", 0, false
	}
	v, err := strconv.ParseUint(ver, 16, 64)
	if err != nil {
		return "", 0, false
	}
	return id, v, true
}

// loadSnapshot reads the snapshot; a missing or unreadable one is empty.
func (s *Store) loadSnapshot(ctx context.Context) []*Entry {
	b, err := s.Storage().Load(ctx, snapshotKey)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("reading index snapshot; reading every record instead", zap.Error(err))
		}
		return nil
	}
	out, err := decodeSnapshot(b)
	if err != nil {
		s.log.Warn("decoding index snapshot; reading every record instead", zap.Error(err))
		return nil
	}
	return out
}

// decodeSnapshot parses a snapshot into entries sorted by domain ID, as
// start-up publishes them. Lines it cannot parse, or two lines for one
// domain, make the whole snapshot invalid, so that a damaged one is never
// half trusted. writeSnapshot writes the lines sorted already; sorting a
// million entries again would take seconds of a start-up, so it is only
// done when they are not.
func decodeSnapshot(b []byte) ([]*Entry, error) {
	text := string(b)
	header, rest, _ := strings.Cut(text, "\n")
	if header != snapshotHeader {
		return nil, fmt.Errorf("unknown snapshot format %q", header)
	}
	out := make([]*Entry, 0, strings.Count(rest, "\n"))
	sorted := true
	for line := range strings.Lines(rest) {
		line = strings.TrimSuffix(line, "\n")
		e, ok := parseSnapshotLine(line)
		if !ok {
			return nil, fmt.Errorf("malformed snapshot line %q", line)
		}
		if n := len(out); n > 0 && out[n-1].DomainID >= e.DomainID {
			sorted = false
		}
		out = append(out, e)
	}
	if !sorted {
		slices.SortStableFunc(out, func(a, b *Entry) int { return strings.Compare(a.DomainID, b.DomainID) })
		for i := 1; i < len(out); i++ {
			if out[i-1].DomainID == out[i].DomainID {
				return nil, fmt.Errorf("domain %s appears twice in the snapshot", out[i].DomainID)
			}
		}
	}
	return out, nil
}

// parseSnapshotLine parses one line of a snapshot: "<domain id> <record
// version, hex> <name> <certificate id or -> <m|u>".
func parseSnapshotLine(line string) (*Entry, bool) {
	var f [5]string
	rest := line
	for i := range 4 {
		var ok bool
		if f[i], rest, ok = strings.Cut(rest, " "); !ok {
			return nil, false
		}
	}
	f[4] = rest
	if !validID(DomainPrefix, f[0]) || (f[4] != "m" && f[4] != "u") {
		return nil, false
	}
	v, err := strconv.ParseUint(f[1], 16, 64)
	if err != nil {
		return nil, false
	}
	e := &Entry{DomainID: f[0], Version: v, Name: f[2], Managed: f[4] == "m"}
	if f[3] != "-" {
		if !validID(CertificatePrefix, f[3]) {
			return nil, false
		}
		e.CertificateID = f[3]
	}
	return e, true
}

// encodeSnapshot writes entries in the snapshot format.
func encodeSnapshot(entries []*Entry) []byte {
	var sb strings.Builder
	sb.Grow(len(snapshotHeader) + 1 + len(entries)*96)
	sb.WriteString(snapshotHeader)
	sb.WriteByte('\n')
	for _, e := range entries {
		cert, managed := e.CertificateID, "u"
		if cert == "" {
			cert = "-"
		}
		if e.Managed {
			managed = "m"
		}
		sb.WriteString(e.DomainID)
		sb.WriteByte(' ')
		sb.WriteString(strconv.FormatUint(e.Version, 16))
		sb.WriteByte(' ')
		sb.WriteString(e.Name)
		sb.WriteByte(' ')
		sb.WriteString(cert)
		sb.WriteByte(' ')
		sb.WriteString(managed)
		sb.WriteByte('\n')
	}
	return []byte(sb.String())
}

// markDirty schedules a snapshot write.
func (s *Store) markDirty() {
	s.unsaved.Store(true)
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// snapshotLoop writes the snapshot some time after changes, until the
// store is closed.
func (s *Store) snapshotLoop() {
	defer close(s.loopDone)
	for {
		select {
		case <-s.closing:
			return
		case <-s.dirty:
		}
		select {
		case <-s.closing:
			return
		case <-time.After(snapshotInterval):
		}
		if err := s.writeSnapshot(context.Background()); err != nil {
			s.log.Warn("writing index snapshot", zap.Error(err))
		}
	}
}

// writeSnapshot writes the current index to storage.
func (s *Store) writeSnapshot(ctx context.Context) error {
	// cleared before reading, so a change made meanwhile marks it again
	s.unsaved.Store(false)
	s.mu.RLock()
	entries := make([]*Entry, 0, len(s.domainIDs))
	for _, id := range s.domainIDs {
		entries = append(entries, s.domains[id])
	}
	s.mu.RUnlock()
	if err := s.Storage().Store(ctx, snapshotKey, encodeSnapshot(entries)); err != nil {
		s.unsaved.Store(true)
		return fmt.Errorf("writing index snapshot: %w", err)
	}
	return nil
}

// Close stops the background writer and writes a final snapshot if the
// index changed since the last one. The store must not be used
// afterwards.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		<-s.loopDone
	})
	if !s.unsaved.Load() {
		return nil
	}
	return s.writeSnapshot(context.Background())
}
