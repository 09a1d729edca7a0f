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
	"sync"
	"time"
	"unsafe"

	"go.uber.org/zap"
)

// An index snapshot is a copy of memory at a journal position, so that
// start-up reads one key and the journal entries written since, instead
// of every record. Any instance may write one; it is only a cache of what
// the journal and the records say.
//
//	snapshots/<seq, 16 hex digits>.snapshot
//
// The format is text, one record a line, fields separated by one space,
// sorted by ID within each kind:
//
//	domaincerts-index 2 <seq, hex>
//	d <domain id> <version, hex> <name> <certificate id or -> <m|u>
//	c <certificate id> <version, hex>
//	x <record id> <version, hex> <name or -> <reason...>
//
// (m: managed, u: not; x: a damaged record, listed so that it can be
// deleted). It is decoded several times faster than JSON, which matters
// at a million domains.
//
// What memory knows beyond that format (certificates' validity dates, for
// the expiry figures; managed domains whose job reports an error, for the
// domain states) lies beside it, in a file that earlier releases do not
// look for, so that they keep starting from the snapshot during an upgrade
// or a rollback:
//
//	snapshots/<seq, 16 hex digits>.extra
//
//	domaincerts-extra 1 <seq, hex>
//	c <certificate id> <not before> <not after> <m|u>
//	f <domain id>
//
// (Unix seconds; m: managed, u: uploaded). A snapshot without its extra
// file, or with one that does not decode, is used without it: the store
// reads the dates from the records in the background, and a failing job
// shows again when it next reports.
const (
	snapshotsDir      = prefix + "/snapshots"
	snapshotHeader    = "domaincerts-index 2"
	extraHeader       = "domaincerts-extra 1"
	snapshotLock      = "domaincerts_snapshot"
	legacySnapshotKey = prefix + "/index.snapshot"
)

func snapshotKey(seq uint64) string { return fmt.Sprintf("%s/%016x.snapshot", snapshotsDir, seq) }
func extraKey(seq uint64) string    { return fmt.Sprintf("%s/%016x.extra", snapshotsDir, seq) }

// When to write a snapshot: after snapshotEvery journal entries, at most
// once per snapshotCheck, and when the store closes. snapshotsKept are
// kept (a damaged newest one leaves an older to start from).
var (
	snapshotEvery uint64 = 1000
	snapshotCheck        = time.Minute
	snapshotsKept        = 2
)

// snapshot is a decoded index snapshot.
type snapshot struct {
	seq     uint64
	domains []*Entry // sorted by ID
	certs   []certVersion
	damaged []*Damaged
}

type certVersion struct {
	id string
	certMeta
}

// listSnapshots returns the sequence numbers of the stored snapshots,
// newest first.
func (s *Store) listSnapshots(ctx context.Context) ([]uint64, error) {
	keys, err := listKeys(ctx, s.Storage(), snapshotsDir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, k := range keys {
		name, ok := strings.CutSuffix(path.Base(k), ".snapshot")
		if !ok || len(name) != 16 {
			continue
		}
		if seq, err := strconv.ParseUint(name, 16, 64); err == nil {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	slices.Reverse(seqs)
	return seqs, nil
}

// loadSnapshot reads the newest snapshot that decodes; nil if there is
// none, or none can be read.
func (s *Store) loadSnapshot(ctx context.Context) *snapshot {
	seqs, err := s.listSnapshots(ctx)
	if err != nil {
		s.log.Warn("listing index snapshots; reading every record instead", zap.Error(err))
		return nil
	}
	if len(seqs) > 0 {
		s.snapSeq.Store(seqs[0])
	}
	for _, seq := range seqs {
		b, err := s.Storage().Load(ctx, snapshotKey(seq))
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				s.log.Warn("reading index snapshot", zap.Uint64("seq", seq), zap.Error(err))
			}
			continue
		}
		// the extra file is read and decoded while the snapshot is
		extra := make(chan func(*snapshot), 1)
		go func() { extra <- s.loadExtra(ctx, seq) }()
		snap, err := decodeSnapshot(b)
		apply := <-extra
		if err == nil && snap.seq != seq {
			err = fmt.Errorf("it says it is at %d", snap.seq)
		}
		if err != nil {
			s.log.Warn("decoding index snapshot; trying an older one", zap.Uint64("seq", seq), zap.Error(err))
			continue
		}
		apply(snap)
		return snap
	}
	return nil
}

// loadExtra reads the extra file of the snapshot at seq, and returns what
// fills in what it adds (nothing, if there is none that decodes).
func (s *Store) loadExtra(ctx context.Context, seq uint64) func(*snapshot) {
	none := func(*snapshot) {}
	b, err := s.Storage().Load(ctx, extraKey(seq))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("reading the index snapshot's certificate dates; reading them from the records instead",
				zap.Uint64("seq", seq), zap.Error(err))
		}
		return none
	}
	dates, failing, err := decodeExtra(b, seq)
	if err != nil {
		s.log.Warn("decoding the index snapshot's certificate dates; reading them from the records instead",
			zap.Uint64("seq", seq), zap.Error(err))
		return none
	}
	return func(snap *snapshot) {
		// both sorted by certificate ID
		for i, j := 0, 0; i < len(snap.certs) && j < len(dates); {
			switch c := strings.Compare(snap.certs[i].id, dates[j].id); {
			case c < 0:
				i++
			case c > 0:
				j++
			default:
				d := dates[j].certMeta
				d.version = snap.certs[i].version
				snap.certs[i].certMeta = d
				i++
				j++
			}
		}
		for _, e := range snap.domains {
			e.Failing = e.Managed && failing[e.DomainID] // not published yet
		}
	}
}

// publishSnapshot makes memory what snap says.
func (s *Store) publishSnapshot(snap *snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetStateLocked(len(snap.domains), len(snap.certs))
	// what putDomainLocked and putCertLocked do, less their checks: the
	// state is empty, and a decoded snapshot has its records sorted, with
	// no duplicate ID or name. The index, the domain maps and the
	// certificates are independent: they are built at once (a million
	// domains take seconds on one core).
	var wg sync.WaitGroup
	wg.Go(func() {
		for _, e := range snap.domains {
			s.index.Set(e.Name, e)
		}
	})
	wg.Go(func() {
		var dated [numSources][]expiryItem
		for _, c := range snap.certs {
			s.certIDs = append(s.certIDs, c.id)
			s.certs[c.id] = c.certMeta
			if c.datesKnown() {
				dated[sourceOf(c.certMeta)] = append(dated[sourceOf(c.certMeta)], expiryItem{c.notAfter, c.id})
			}
		}
		for src := range dated {
			s.expiry[src].build(dated[src])
		}
	})
	for _, e := range snap.domains {
		s.domainIDs = append(s.domainIDs, e.DomainID)
		s.domains[e.DomainID] = e
		s.states[e.State()]++
		if e.CertificateID != "" {
			s.certUse[e.CertificateID]++
		}
	}
	wg.Wait()
	for _, d := range snap.damaged {
		if strings.HasPrefix(d.ID, DomainPrefix) {
			s.domainIDs = insertSorted(s.domainIDs, d.ID)
		} else {
			s.putCertLocked(d.ID, certMeta{version: d.version})
		}
		s.damaged[d.ID] = d
	}
	s.pos = snap.seq
}

// applySnapshot makes memory what snap says, for an instance that fell
// behind the compacted journal: it adopts the snapshot's state, reading
// the records that changed, and moves to the snapshot's position (the
// entries after it are kept).
func (s *Store) applySnapshot(ctx context.Context, snap *snapshot) (int, error) {
	state := adoptState{
		versions: make(map[string]uint64, len(snap.domains)+len(snap.damaged)),
		entries:  make(map[string]*Entry, len(snap.domains)),
		certs:    make(map[string]certMeta, len(snap.certs)),
		damaged:  make(map[string]*Damaged),
	}
	for _, e := range snap.domains {
		state.versions[e.DomainID], state.entries[e.DomainID] = e.Version, e
	}
	for _, c := range snap.certs {
		state.certs[c.id] = c.certMeta
	}
	for _, d := range snap.damaged {
		state.damaged[d.ID] = d
		if strings.HasPrefix(d.ID, DomainPrefix) {
			state.versions[d.ID] = d.version
		} else {
			state.certs[d.ID] = certMeta{version: d.version}
		}
	}
	return s.adopt(ctx, state, snap.seq)
}

// decodeSnapshot parses a snapshot. A line it cannot parse, or two lines
// for one record, make the whole snapshot invalid, so that a damaged one
// is never half trusted.
func decodeSnapshot(b []byte) (*snapshot, error) {
	// the IDs and names of the entries are substrings of the text, which
	// they keep alive: b is the storage's answer, owned here, so it is
	// used in place rather than copied (a million domains: 130 MB)
	text := unsafe.String(unsafe.SliceData(b), len(b))
	header, rest, _ := strings.Cut(text, "\n")
	seqText, ok := strings.CutPrefix(header, snapshotHeader+" ")
	if !ok {
		return nil, fmt.Errorf("unknown snapshot format %q", header)
	}
	seq, err := strconv.ParseUint(seqText, 16, 64)
	if err != nil {
		return nil, fmt.Errorf("snapshot header %q: bad journal position", header)
	}
	nd, nc := strings.Count(rest, "\nd ")+1, strings.Count(rest, "\nc ")+1
	snap := &snapshot{seq: seq, domains: make([]*Entry, 0, nd), certs: make([]certVersion, 0, nc)}
	for line := range strings.Lines(rest) {
		line = strings.TrimSuffix(line, "\n")
		kind, fields, _ := strings.Cut(line, " ")
		switch kind {
		case "d":
			e, ok := parseSnapshotDomain(fields)
			if !ok {
				return nil, fmt.Errorf("malformed snapshot line %q", line)
			}
			snap.domains = append(snap.domains, e)
		case "c":
			c, ok := parseSnapshotCert(fields)
			if !ok {
				return nil, fmt.Errorf("malformed snapshot line %q", line)
			}
			snap.certs = append(snap.certs, c)
		case "x":
			d, ok := parseSnapshotDamaged(fields)
			if !ok {
				return nil, fmt.Errorf("malformed snapshot line %q", line)
			}
			snap.damaged = append(snap.damaged, d)
		default:
			return nil, fmt.Errorf("malformed snapshot line %q", line)
		}
	}
	// a record listed twice: sorted by ID (as written), duplicates are
	// neighbours; damaged records are few, and checked against a map
	if id, dup := sortByID(snap.domains, func(e *Entry) string { return e.DomainID }); dup {
		return nil, fmt.Errorf("record %s appears twice in the snapshot", id)
	}
	if id, dup := sortByID(snap.certs, func(c certVersion) string { return c.id }); dup {
		return nil, fmt.Errorf("record %s appears twice in the snapshot", id)
	}
	damaged := make(map[string]bool, len(snap.damaged))
	for _, d := range snap.damaged {
		if damaged[d.ID] {
			return nil, fmt.Errorf("record %s appears twice in the snapshot", d.ID)
		}
		damaged[d.ID] = true
	}
	for _, e := range snap.domains {
		if damaged[e.DomainID] {
			return nil, fmt.Errorf("record %s appears twice in the snapshot", e.DomainID)
		}
	}
	for _, c := range snap.certs {
		if damaged[c.id] {
			return nil, fmt.Errorf("record %s appears twice in the snapshot", c.id)
		}
	}
	for i, j := 0, 0; i < len(snap.domains) && j < len(snap.certs); {
		switch c := strings.Compare(snap.domains[i].DomainID, snap.certs[j].id); {
		case c < 0:
			i++
		case c > 0:
			j++
		default:
			return nil, fmt.Errorf("record %s appears twice in the snapshot", snap.certs[j].id)
		}
	}
	names := make(map[string]bool, len(snap.domains))
	for _, e := range snap.domains {
		if names[e.Name] {
			return nil, fmt.Errorf("name %s appears twice in the snapshot", e.Name)
		}
		names[e.Name] = true
	}
	return snap, nil
}

// parseSnapshotDomain parses "<domain id> <version, hex> <name>
// <certificate id or -> <m|u>".
func parseSnapshotDomain(fields string) (*Entry, bool) {
	var f [5]string
	rest := fields
	for i := range 4 {
		var ok bool
		if f[i], rest, ok = strings.Cut(rest, " "); !ok {
			return nil, false
		}
	}
	f[4] = rest
	if !validID(DomainPrefix, f[0]) || (f[4] != "m" && f[4] != "f" && f[4] != "u") {
		return nil, false
	}
	v, err := strconv.ParseUint(f[1], 16, 64)
	if err != nil {
		return nil, false
	}
	if !storedName(f[2]) {
		return nil, false
	}
	e := &Entry{DomainID: f[0], Version: v, Name: f[2], Managed: f[4] != "u", Failing: f[4] == "f"}
	if f[3] != "-" {
		if !validID(CertificatePrefix, f[3]) {
			return nil, false
		}
		e.CertificateID = f[3]
	}
	return e, true
}

// parseSnapshotCert parses "<certificate id> <version, hex>".
func parseSnapshotCert(fields string) (certVersion, bool) {
	cid, ver, ok := strings.Cut(fields, " ")
	v, err := strconv.ParseUint(ver, 16, 64)
	if !ok || err != nil || !validID(CertificatePrefix, cid) {
		return certVersion{}, false
	}
	return certVersion{id: cid, certMeta: certMeta{version: v}}, true
}

// encodeExtra writes what memory knows beyond the snapshot format: the
// dates of snap's certificates that are known, and its failing domains.
func (snap *snapshot) encodeExtra() []byte {
	var sb strings.Builder
	sb.Grow(32 + len(snap.certs)*58)
	sb.WriteString(extraHeader)
	sb.WriteByte(' ')
	sb.WriteString(strconv.FormatUint(snap.seq, 16))
	sb.WriteByte('\n')
	for _, c := range snap.certs {
		if !c.datesKnown() {
			continue
		}
		src := " u\n"
		if c.managed {
			src = " m\n"
		}
		sb.WriteString("c ")
		sb.WriteString(c.id)
		sb.WriteByte(' ')
		sb.WriteString(strconv.FormatInt(c.notBefore, 10))
		sb.WriteByte(' ')
		sb.WriteString(strconv.FormatInt(c.notAfter, 10))
		sb.WriteString(src)
	}
	for _, e := range snap.domains {
		if e.Failing {
			sb.WriteString("f ")
			sb.WriteString(e.DomainID)
			sb.WriteByte('\n')
		}
	}
	return []byte(sb.String())
}

// decodeExtra parses the extra file of the snapshot at seq: certificate
// dates (version 0), sorted by certificate ID, and failing domains. Like a
// snapshot, it is trusted whole or not at all.
func decodeExtra(b []byte, seq uint64) ([]certVersion, map[string]bool, error) {
	header, rest, _ := strings.Cut(string(b), "\n")
	if want := extraHeader + " " + strconv.FormatUint(seq, 16); header != want {
		return nil, nil, fmt.Errorf("header %q, want %q", clipText(header), want)
	}
	dates := make([]certVersion, 0, strings.Count(rest, "\n"))
	failing := make(map[string]bool)
	for line := range strings.Lines(rest) {
		kind, f, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
		switch kind {
		case "f":
			if !validID(DomainPrefix, f) || failing[f] {
				return nil, nil, fmt.Errorf("malformed line %q", clipText(line))
			}
			failing[f] = true
		case "c":
			id, f, ok1 := strings.Cut(f, " ")
			nbText, f, ok2 := strings.Cut(f, " ")
			naText, src, ok3 := strings.Cut(f, " ")
			nb, err1 := strconv.ParseInt(nbText, 10, 64)
			na, err2 := strconv.ParseInt(naText, 10, 64)
			if !ok1 || !ok2 || !ok3 || err1 != nil || err2 != nil || na == 0 || (src != "m" && src != "u") || !validID(CertificatePrefix, id) {
				return nil, nil, fmt.Errorf("malformed line %q", clipText(line))
			}
			dates = append(dates, certVersion{id: id, certMeta: certMeta{notBefore: nb, notAfter: na, managed: src == "m"}})
		default:
			return nil, nil, fmt.Errorf("malformed line %q", clipText(line))
		}
	}
	if id, dup := sortByID(dates, func(c certVersion) string { return c.id }); dup {
		return nil, nil, fmt.Errorf("certificate %s appears twice", id)
	}
	return dates, failing, nil
}

// sortByID sorts items by the ID that id returns (a check only, when they
// are in order as written) and returns an ID that two of them have.
func sortByID[T any](items []T, id func(T) string) (string, bool) {
	cmp := func(a, b T) int { return strings.Compare(id(a), id(b)) }
	if !slices.IsSortedFunc(items, cmp) {
		slices.SortFunc(items, cmp)
	}
	for i := 1; i < len(items); i++ {
		if id(items[i]) == id(items[i-1]) {
			return id(items[i]), true
		}
	}
	return "", false
}

// clipText cuts s for an error message.
func clipText(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// parseSnapshotDamaged parses "<record id> <version, hex> <name or ->
// <reason...>".
func parseSnapshotDamaged(fields string) (*Damaged, bool) {
	id, rest, ok1 := strings.Cut(fields, " ")
	ver, rest, ok2 := strings.Cut(rest, " ")
	name, reason, ok3 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !ok3 || (!validID(DomainPrefix, id) && !validID(CertificatePrefix, id)) {
		return nil, false
	}
	v, err := strconv.ParseUint(ver, 16, 64)
	if err != nil {
		return nil, false
	}
	if name == "-" {
		name = ""
	} else if !storedName(name) {
		return nil, false
	}
	return &Damaged{ID: id, Name: name, Reason: reason, version: v}, true
}

// copySnapshot copies what a snapshot holds out of memory; the entries
// are immutable, so it costs a slice of pointers. s.mu must be held
// (read).
func (s *Store) copySnapshotLocked() *snapshot {
	snap := &snapshot{seq: s.pos, domains: make([]*Entry, 0, len(s.domains)), certs: make([]certVersion, 0, len(s.certs))}
	for _, id := range s.domainIDs {
		if e := s.domains[id]; e != nil {
			snap.domains = append(snap.domains, e)
		}
	}
	for _, id := range s.certIDs {
		if _, bad := s.damaged[id]; !bad {
			snap.certs = append(snap.certs, certVersion{id, s.certs[id]})
		}
	}
	for _, d := range s.damaged {
		dd := *d
		snap.damaged = append(snap.damaged, &dd)
	}
	slices.SortFunc(snap.damaged, func(a, b *Damaged) int { return strings.Compare(a.ID, b.ID) })
	return snap
}

// encode writes snap in the snapshot format.
func (snap *snapshot) encode() []byte {
	var sb strings.Builder
	sb.Grow(64 + len(snap.domains)*96 + len(snap.certs)*48)
	sb.WriteString(snapshotHeader)
	sb.WriteByte(' ')
	sb.WriteString(strconv.FormatUint(snap.seq, 16))
	sb.WriteByte('\n')
	for _, e := range snap.domains {
		cert, managed := e.CertificateID, "u"
		if cert == "" {
			cert = "-"
		}
		if e.Managed {
			managed = "m" // failing goes to the extra file
		}
		sb.WriteString("d ")
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
	for _, c := range snap.certs {
		sb.WriteString("c ")
		sb.WriteString(c.id)
		sb.WriteByte(' ')
		sb.WriteString(strconv.FormatUint(c.version, 16))
		sb.WriteByte('\n')
	}
	for _, d := range snap.damaged {
		name := d.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(&sb, "x %s %x %s %s\n", d.ID, d.version, name, strings.ReplaceAll(d.Reason, "\n", " "))
	}
	return []byte(sb.String())
}

// writeSnapshot writes memory as a snapshot at its journal position and
// deletes the snapshots past the newest snapshotsKept. One instance
// writes at a time; if another holds the snapshot lock, it does nothing.
// A snapshot at the same position is written again only when force is
// set (memory knows what it lacks: certificate dates).
func (s *Store) writeSnapshot(ctx context.Context, force bool) error {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	ok, err := s.tryLock(ctx, snapshotLock, lockAttempt)
	if err != nil || !ok {
		return err
	}
	defer s.unlock(snapshotLock)
	seqs, err := s.listSnapshots(ctx)
	if err != nil {
		return fmt.Errorf("writing index snapshot: %w", err)
	}
	s.mu.RLock()
	pos := s.pos
	newer := len(seqs) > 0 && seqs[0] > pos
	same := len(seqs) > 0 && seqs[0] == pos
	if newer || (same && !force) {
		s.mu.RUnlock()
		s.snapSeq.Store(seqs[0])
		s.snapWanted.Store(false)
		return nil // another instance wrote one at least as new
	}
	snap := s.copySnapshotLocked()
	s.mu.RUnlock()
	// the extra file first: a snapshot is never newer than it; at the
	// position of the newest snapshot, only the extra file is new
	if err := s.Storage().Store(ctx, extraKey(pos), snap.encodeExtra()); err != nil {
		s.stats.storageErrors.Add(1)
		return fmt.Errorf("writing index snapshot extras: %w", err)
	}
	if same {
		s.snapWanted.Store(false)
		return nil
	}
	b := snap.encode()
	if err := s.Storage().Store(ctx, snapshotKey(pos), b); err != nil {
		s.stats.storageErrors.Add(1)
		return fmt.Errorf("writing index snapshot: %w", err)
	}
	s.snapSeq.Store(pos)
	s.snapWanted.Store(false)
	seqs = append([]uint64{pos}, seqs...)
	for _, old := range seqs[min(len(seqs), snapshotsKept):] {
		_ = s.Storage().Delete(ctx, snapshotKey(old))
		_ = s.Storage().Delete(ctx, extraKey(old))
	}
	s.log.Debug("index snapshot written", zap.Uint64("seq", pos), zap.Int("bytes", len(b)))
	return nil
}

// snapshotLoop writes a snapshot when the journal has moved snapshotEvery
// entries past the newest one, until the store closes.
func (s *Store) snapshotLoop() {
	defer close(s.snapDone)
	t := time.NewTicker(snapshotCheck)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		force := s.snapWanted.Load()
		if s.position() < s.snapSeq.Load()+snapshotEvery && !force {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*s.timeout())
		if err := s.writeSnapshot(ctx, force); err != nil {
			s.log.Warn("writing index snapshot", zap.Error(err))
		}
		cancel()
	}
}
