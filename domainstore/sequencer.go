package domainstore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// The sequencer is the one goroutine that changes the store's state. It
// runs writes in batches under the journal lock, and between them reads
// the journal for other instances' changes. Because it alone writes
// memory, listeners hear of changes in journal order, and a write never
// races with the reading of another instance's change.

// The states of an op.
const (
	opQueued int32 = iota
	opRunning
	opAbandoned
)

// op is a write waiting for the sequencer.
type op struct {
	ctx      context.Context
	deadline time.Time // past it, the write fails unless it is being committed
	fn       func(*txn) error
	done     chan error
	// state is opQueued until the sequencer runs the write (opRunning) or
	// its caller stops waiting first (opAbandoned): then it never runs
	state atomic.Int32
}

// Batching: how many writes share a journal entry, how long the sequencer
// keeps the journal lock while writes keep coming, and how long it waits
// for the next write before it lets the lock go.
var (
	maxBatchOps = 64
	maxHold     = 250 * time.Millisecond
	linger      = 10 * time.Millisecond
)

// submit runs fn in the sequencer under the journal lock and returns its
// error, or the error of committing what it staged. A write that cannot
// get the lock or write the journal within the store's timeout fails with
// STORAGE_UNAVAILABLE and changes nothing; a journal write that the
// storage did not confirm in time, or that failed while another writer's
// entry took its number, fails with errOutcomeUnknown.
func (s *Store) submit(ctx context.Context, fn func(*txn) error) error {
	o := &op{ctx: ctx, deadline: time.Now().Add(s.timeout()), fn: fn, done: make(chan error, 1)}
	// the sequencer may be stuck on a storage that ignores contexts
	// (file_system on a hung mount), or on a write it must settle: the
	// caller gets an answer within twice the timeout anyway
	hard := time.NewTimer(2 * s.timeout())
	defer hard.Stop()
	select {
	case s.ops <- o:
	case <-s.closing:
		return errClosed
	case <-ctx.Done():
		return storageFailed("waiting for the store", ctx.Err())
	case <-hard.C:
		return errWaitedTooLong
	}
	select {
	case err := <-o.done:
		return err
	case <-hard.C:
		if o.state.CompareAndSwap(opQueued, opAbandoned) {
			return errWaitedTooLong
		}
		return errOutcomeUnknown // it ran: its entry may be written
	case <-s.done:
		select {
		case err := <-o.done:
			return err
		default:
			return errClosed
		}
	}
}

// Sync reads the journal now, so that memory reflects every change
// committed before the call, by any instance.
func (s *Store) Sync(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case s.syncReqs <- reply:
	case <-s.closing:
		return errClosed
	case <-ctx.Done():
		return storageFailed("waiting for the store", ctx.Err())
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return storageFailed("reading the journal", ctx.Err())
	}
}

func (s *Store) sequencer() {
	defer close(s.done)
	tick := time.NewTimer(0) // catch up at once after start-up
	defer tick.Stop()
	for {
		if len(s.pending) > 0 {
			s.writeSession(nil)
			continue
		}
		select {
		case <-s.closing:
			s.failQueued()
			return
		case o := <-s.ops:
			s.writeSession(o)
		case reply := <-s.syncReqs:
			reply <- s.follow()
		case <-tick.C:
			_ = s.follow()
			tick.Reset(time.Duration(s.interval.Load()))
		}
	}
}

// failQueued answers the writes still queued when the store closes.
func (s *Store) failQueued() {
	for _, o := range s.pending {
		o.done <- errClosed
	}
	s.pending = nil
	for {
		select {
		case o := <-s.ops:
			o.done <- errClosed
		default:
			return
		}
	}
}

// collect returns the writes put back by the last batch, first (if not
// nil), and the writes queued behind them, up to a batch.
func (s *Store) collect(first *op) []*op {
	n := min(len(s.pending), maxBatchOps)
	batch := append([]*op(nil), s.pending[:n]...)
	s.pending = s.pending[n:]
	if first != nil {
		if len(batch) < maxBatchOps {
			batch = append(batch, first)
		} else {
			s.pending = append(s.pending, first)
		}
	}
	for len(batch) < maxBatchOps {
		select {
		case o := <-s.ops:
			batch = append(batch, o)
		default:
			return batch
		}
	}
	return batch
}

// session is the state of one holding of the journal lock.
type session struct {
	head    head   // the head as read when the lock was taken
	applied uint64 // every entry up to this one is applied to the records
	broken  bool   // a journal write went wrong: write no more in this session
	lapsed  bool   // another writer wrote this session's entry: leave the head alone
}

// writeSession takes the journal lock, brings memory up to date with the
// journal, and commits batches of writes while they keep coming (up to
// maxHold), then moves the head and releases the lock.
func (s *Store) writeSession(first *op) {
	var batch []*op
	for _, o := range s.collect(first) {
		if time.Now().After(o.deadline) || o.ctx.Err() != nil {
			o.done <- errWaitedTooLong
			continue
		}
		batch = append(batch, o)
	}
	if len(batch) == 0 {
		return
	}
	deadline := batch[0].deadline
	for _, o := range batch {
		if o.deadline.Before(deadline) {
			deadline = o.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	sess, err := s.startSession(ctx)
	if err != nil {
		s.failBatch(batch, err)
		return
	}
	locked := time.Now()
	for len(batch) > 0 && !sess.broken {
		s.commit(sess, batch)
		batch = nil
		if time.Since(locked) > maxHold {
			break
		}
		if len(s.pending) > 0 {
			batch = s.collect(nil)
			continue
		}
		select {
		case o := <-s.ops:
			batch = s.collect(o)
		case <-time.After(linger):
			// a client that writes one request at a time sends its next
			// within this: keeping the lock spares a lock and a head write
			// per request
		case <-s.closing:
		}
	}
	if len(batch) > 0 {
		// held long enough: give other instances a turn
		s.pending = append(batch, s.pending...)
	}
	s.endSession(sess)
}

// startSession takes the journal lock and reads the journal up to its
// end, applying to the records any entry whose writer did not (it crashed,
// or the storage failed). If entries this instance never read were
// compacted away, it lets the lock go, recovers (recoverGap), and tries
// once more. On success the lock is held.
func (s *Store) startSession(ctx context.Context) (*session, error) {
	for attempt := 0; ; attempt++ {
		if err := s.lockJournal(ctx); err != nil {
			return nil, storageFailed("waiting for the journal lock", err)
		}
		sess, err := s.lockedCatchUp(ctx)
		if err == nil {
			s.stats.lastSync.Store(time.Now().UnixNano())
			s.markReconciled()
			return sess, nil
		}
		s.unlockJournal()
		if !errors.Is(err, errGap) || attempt > 0 {
			return nil, err
		}
		if err := s.recoverGap(); err != nil {
			return nil, err
		}
	}
}

func (s *Store) lockedCatchUp(ctx context.Context) (*session, error) {
	h, err := s.readHead(ctx)
	if errors.Is(err, errNoEntry) {
		return nil, storageFailed("reading the journal head", errors.New("the journal head is missing"))
	}
	if err != nil {
		return nil, err
	}
	sess := &session{head: h, applied: h.Seq}
	if h.repaired || s.position() > h.Seq+headCheckpoint {
		// a long way to go (a head rebuilt from the entries): not bound by
		// one write's deadline, and the head is written as it goes
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), recoveryTimeout)
		defer cancel()
	}
	// memory may be past the head: entries this instance read while
	// following, whose writer may not have applied them to the records
	for seq := h.Seq + 1; seq <= s.position(); seq++ {
		e, err := s.readEntry(ctx, seq)
		if errors.Is(err, errNoEntry) {
			break
		}
		var de *damagedEntryError
		if errors.As(err, &de) {
			e, err = &entry{Format: entryFormat, Seq: seq}, nil
		}
		if err != nil {
			return nil, err
		}
		if aerr := s.applyToStorage(ctx, e); aerr != nil {
			s.log.Error("applying a journal entry to the records", zap.Uint64("seq", seq), zap.Error(aerr))
		} else {
			s.noteApplied(ctx, sess, seq)
		}
	}
	if err := s.catchUp(ctx, sess); err != nil {
		return nil, err
	}
	return sess, nil
}

// catchUp reads the journal entries past memory's position and applies
// them to memory. With a session (the journal lock held), entries past the
// head are applied to the records as well. It returns errGap when entries
// it needs were compacted away.
func (s *Store) catchUp(ctx context.Context, sess *session) error {
	var h *head
	if sess != nil {
		h = &sess.head
	}
	for first := true; ; first = false {
		seq := s.position() + 1
		e, err := s.readEntry(ctx, seq)
		if errors.Is(err, errNoEntry) {
			if h == nil && first {
				hh, err := s.readHead(ctx)
				if errors.Is(err, errNoEntry) {
					return nil // not started yet by anyone; nothing to read
				}
				if err != nil {
					return err
				}
				h = &hh
			}
			if h != nil && (seq <= h.Seq || seq < h.Base) {
				return errGap
			}
			return nil
		}
		var de *damagedEntryError
		if errors.As(err, &de) {
			// every instance skips it alike; what it changed is lost
			// unless its writer applied it to the records, so an instance
			// that skips it also reads the records once (recoverGap)
			s.stats.damagedEntries.Add(1)
			if !s.skipped[seq] {
				s.skipped[seq] = true
				s.needRecovery = true
				s.log.Error("skipping a damaged journal entry; the records will be listed", zap.Uint64("seq", seq), zap.Error(err))
			}
			e, err = &entry{Format: entryFormat, Seq: seq}, nil
		}
		if err != nil {
			return err
		}
		if sess != nil && seq > sess.applied {
			if aerr := s.applyToStorage(ctx, e); aerr != nil {
				s.log.Error("applying a journal entry to the records", zap.Uint64("seq", seq), zap.Error(aerr))
			} else {
				s.noteApplied(ctx, sess, seq)
			}
		}
		s.notify(s.applyToMemory(e))
	}
}

// commit runs a batch of writes against the current state and commits
// what they staged as one journal entry.
func (s *Store) commit(sess *session, batch []*op) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	seq := s.position() + 1
	tx := newTxn(s, ctx, seq, nil)
	var included []*op
	size := 0
	for i, o := range batch {
		if time.Now().After(o.deadline) || o.ctx.Err() != nil {
			o.done <- errWaitedTooLong
			continue
		}
		if size > maxEntryBytes/2 {
			// the rest go into the next entry
			s.pending = append(append([]*op(nil), batch[i:]...), s.pending...)
			break
		}
		if !o.state.CompareAndSwap(opQueued, opRunning) {
			continue // its caller gave up: it must not run
		}
		child := newTxn(s, ctx, seq, tx)
		if err := o.fn(child); err != nil {
			o.done <- err
			continue
		}
		tx.merge(child)
		size += opsSize(child.ops)
		included = append(included, o)
	}
	if len(tx.ops) == 0 {
		for _, o := range included {
			o.done <- nil
		}
		return
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	e := &entry{Format: entryFormat, Seq: seq, Time: time.Now().UTC(), Writer: hex.EncodeToString(nonce[:]), Ops: tx.ops}
	b, err := json.Marshal(e)
	if err != nil {
		for _, o := range included {
			o.done <- err
		}
		return
	}
	err = s.checkHold(ctx)
	if err == nil {
		err = s.writeEntry(ctx, seq, b)
	} else {
		err = fmt.Errorf("%w: %w", errNotCommitted, err)
	}
	switch {
	case err == nil:
		if errors.Is(s.checkHold(ctx), errLockTaken) {
			// the hold lapsed while the entry was written (this instance
			// was paused or held up after reading that the entry was
			// free): it may have replaced a new holder's entry
			why, _ := s.holdWhy()
			s.log.Error("journal entry written over another writer's; instances may disagree",
				zap.Uint64("seq", seq), zap.String("reason", why))
			sess.lapsed, sess.broken = true, true
		}
	case errors.Is(err, errNotCommitted):
		sess.broken = true
		sess.lapsed = errors.Is(err, errEntryTaken) || errors.Is(err, errLockTaken) // logged already
		if !sess.lapsed {
			s.log.Error("writes failed: storage unavailable", zap.Uint64("seq", seq), zap.Int("writes", len(included)), zap.Error(err))
		}
		for _, o := range included {
			o.done <- storageFailed("writing the journal", err)
		}
		return
	default:
		// whether the entry landed is unknown (the storage did not
		// confirm the write, or another writer's entry came after a write
		// of ours failed): the callers hear so, and the lock is kept until
		// it is settled, so that, while the lock's lease holds, no other
		// writer can take the entry's number meanwhile
		sess.broken = true
		for _, o := range included {
			o.done <- errOutcomeUnknown
		}
		landed, taken := s.settle(seq, b)
		switch {
		case taken && !errors.Is(err, errEntryTaken):
			s.log.Error("journal lock lapsed: entry already written", zap.Uint64("seq", seq), zap.Bool("write_sent", true))
		case landed && errors.Is(err, errEntryTaken):
			// our late write replaced the entry of a writer that held the
			// lock after ours lapsed: the instances that read that entry
			// now disagree with the rest
			s.log.Error("journal entry written over another writer's; instances may disagree", zap.Uint64("seq", seq))
		}
		sess.lapsed = taken || errors.Is(err, errEntryTaken)
		if !landed {
			return
		}
		included = nil
	}
	// committed: memory and listeners first, so that the answer's reader
	// (a handshake, a GET) sees the change; the writers are answered
	// then, as the entry is durable; the records follow (a GET reads a
	// record not written yet from the entry)
	s.notify(s.applyToMemory(e))
	for _, o := range included {
		o.done <- nil
	}
	actx, acancel := context.WithTimeout(context.Background(), s.timeout())
	defer acancel()
	if err := s.applyToStorage(actx, e); err != nil {
		// the entry holds the change; the next holder of the lock writes
		// the records again
		s.stats.storageErrors.Add(1)
		s.log.Error("applying a journal entry to the records", zap.Uint64("seq", seq), zap.Error(err))
	} else {
		s.noteApplied(actx, sess, seq)
	}
}

// headCheckpoint is how many entries a session applies to the records
// before it writes the head, so that a long catch-up (a head rebuilt from
// the entries) that runs out of time keeps its progress.
const headCheckpoint = 256

// noteApplied records that entry seq is applied to the records.
func (s *Store) noteApplied(ctx context.Context, sess *session, seq uint64) {
	if sess.applied != seq-1 {
		return
	}
	sess.applied = seq
	if seq-sess.head.Seq < headCheckpoint || errors.Is(s.checkHold(ctx), errLockTaken) {
		return
	}
	h := sess.head
	h.Seq, h.repaired = seq, false
	if err := s.writeHead(ctx, h); err == nil {
		sess.head = h
	}
}

// errNotCommitted means a journal write certainly did not land.
var errNotCommitted = errors.New("the journal entry was not written")

// errEntryTaken means that another writer's entry is at the number this
// instance writes: a journal lock lapsed (this instance's, or the other
// writer's) while its holder was held up.
var errEntryTaken = errors.New("journal entry already written by another writer (a journal lock lapsed)")

// writeEntry writes journal entry seq (bytes b) and makes sure of the
// outcome, trying until ctx ends. It returns nil once the entry holds b;
// an error that is errNotCommitted when no write was sent (another
// writer's entry is there, or the entry could not be read); and another
// error when the outcome is unknown: a write was sent and failed, and the
// entry is still absent or unreadable, or another writer's entry is there
// (errEntryTaken; the failed write may still land).
//
// Before every write it reads the entry, and writes only while it is
// absent. The journal lock that reserves the entry's number is a lease: an
// instance held up longer than the lease (a paused process or VM, a
// storage that hung) can go on as if it held the lock after another
// instance took it and wrote the entry. A Store over that entry would
// replace a write another instance acknowledged, and set the instances
// apart. CertMagic's storages have no create-if-absent, so the read only
// narrows that window: a stall between the read and the write still does
// harm.
func (s *Store) writeEntry(ctx context.Context, seq uint64, b []byte) error {
	key := entryKey(seq)
	pause := 50 * time.Millisecond
	var storeErr, loadErr error // the last write's error (nil while none was sent), the last read's
	for {
		got, err := s.Storage().Load(ctx, key)
		switch {
		case err == nil && bytes.Equal(got, b):
			return nil // an earlier write landed after all
		case err == nil:
			s.log.Error("journal lock lapsed: entry already written", zap.Uint64("seq", seq),
				zap.Bool("write_sent", storeErr != nil))
			if storeErr == nil {
				return fmt.Errorf("%w: %w", errNotCommitted, errEntryTaken)
			}
			return errEntryTaken
		case errors.Is(err, fs.ErrNotExist):
			if storeErr = s.Storage().Store(ctx, key, b); storeErr == nil {
				return nil
			}
			s.stats.storageErrors.Add(1)
			s.log.Error("writing a journal entry", zap.Uint64("seq", seq), zap.Error(storeErr))
		default:
			// read again: never write without knowing the entry is free
			s.stats.storageErrors.Add(1)
			loadErr = err
		}
		select {
		case <-ctx.Done():
			if storeErr == nil {
				return fmt.Errorf("%w: reading the entry before writing it: %w", errNotCommitted, cmp.Or(loadErr, ctx.Err()))
			}
			return storeErr
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Second)
	}
}

// settle finds out, still holding the journal lock, whether entry seq
// (bytes b) landed, and reports whether it did, and whether another
// writer's entry is there instead (taken). It reads the entry back until
// it finds it, or finds it absent long enough after the last try (twice
// the store's timeout: a request that has not landed by then will not),
// or finds another writer's entry there. It gives up when the store
// closes.
func (s *Store) settle(seq uint64, b []byte) (landed, taken bool) {
	key := entryKey(seq)
	since := time.Now()
	s.log.Warn("a journal write was not confirmed; waiting to learn whether it landed", zap.Uint64("seq", seq))
	for {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
		got, err := s.Storage().Load(ctx, key)
		cancel()
		switch {
		case err == nil:
			landed = bytes.Equal(got, b)
			s.log.Warn("journal write settled", zap.Uint64("seq", seq), zap.Bool("landed", landed))
			return landed, !landed
		case errors.Is(err, fs.ErrNotExist) && time.Since(since) > 2*s.timeout():
			s.log.Warn("journal write settled", zap.Uint64("seq", seq), zap.Bool("landed", false))
			return false, false
		}
		select {
		case <-s.closing:
			return false, false
		case <-time.After(min(time.Second, s.timeout()/4)):
		}
	}
}

func opsSize(ops []entryOp) int {
	n := 0
	for _, op := range ops {
		n += 512
		if op.Domain != nil {
			n += len(op.Domain.Metadata) + len(op.Domain.Description)
		}
		if op.Certificate != nil {
			n += len(op.Certificate.CertificatePEM) + len(op.Certificate.Metadata) + len(op.Certificate.Description)
		}
	}
	return n
}

// endSession moves the head to the last entry applied to the records (and
// repairs a damaged one), compacts a little, and releases the journal
// lock.
func (s *Store) endSession(sess *session) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	if !sess.lapsed && errors.Is(s.checkHold(ctx), errLockTaken) {
		sess.lapsed = true
	}
	if sess.lapsed {
		// another instance has held the lock since this one took it (or
		// may have): the head read then may be behind, and writing it
		// would move the journal's head back
		s.unlockJournal()
		return
	}
	h := sess.head
	h.repaired = false
	if sess.applied > h.Seq {
		h.Seq = sess.applied
	}
	h = s.compact(ctx, h)
	if h != sess.head {
		if err := s.writeHead(ctx, h); err != nil {
			s.stats.storageErrors.Add(1)
			s.log.Error("moving the journal head", zap.Error(err))
		}
	}
	s.unlockJournal()
}

// Compaction keeps the journal short: entries older than both the newest
// index snapshot and the last journalRetain entries are deleted, at most
// compactStep per holding of the lock.
var (
	journalRetain uint64 = 10000
	compactStep   uint64 = 256
)

// compact deletes old entries and returns the head with its new base.
func (s *Store) compact(ctx context.Context, h head) head {
	if h.Seq < journalRetain {
		return h
	}
	cutoff := min(h.Seq+1-journalRetain, s.snapSeq.Load()+1)
	end := min(cutoff, h.Base+compactStep)
	if end <= h.Base {
		return h
	}
	for seq := h.Base; seq < end; seq++ {
		if err := s.Storage().Delete(ctx, entryKey(seq)); err != nil {
			s.stats.storageErrors.Add(1)
			s.log.Error("compacting the journal", zap.Uint64("seq", seq), zap.Error(err))
			end = seq
			break
		}
	}
	h.Base = end
	return h
}

// errWaitedTooLong answers a write that could not be started in time.
var errWaitedTooLong = storageFailed("waiting for the storage", errors.New("the write waited too long"))

// errOutcomeUnknown answers a write whose journal entry the storage did
// not confirm: it may or may not have been applied.
var errOutcomeUnknown = &dcerr.Error{
	Code: dcerr.StorageUnavailable,
	Msg:  "the storage did not confirm the write in time; it may or may not have been applied; read the resource back before retrying",
}

// failBatch answers every write of a batch with err.
func (s *Store) failBatch(batch []*op, err error) {
	if dcerr.CodeOf(err) == dcerr.StorageUnavailable {
		s.stats.storageErrors.Add(1)
		s.log.Error("writes failed: storage unavailable", zap.Int("writes", len(batch)), zap.Error(err))
	}
	for _, o := range batch {
		o.done <- err
	}
}

// follow reads the journal for changes other instances made, between
// write sessions. Failures are logged once until it works again.
func (s *Store) follow() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	err := s.catchUp(ctx, nil)
	if errors.Is(err, errGap) {
		if err = s.recoverGap(); err == nil {
			err = s.catchUp(ctx, nil)
		}
	}
	if err == nil && s.needRecovery {
		err = s.recoverSkipped()
	}
	if err == nil && s.headDamaged.Load() {
		// write the rebuilt head back rather than wait for a write, unless
		// another instance did already
		var h head
		if h, err = s.readHead(ctx); err == nil && h.repaired {
			var sess *session
			if sess, err = s.startSession(ctx); err == nil {
				s.endSession(sess)
			}
		}
	}
	if err != nil {
		if !s.syncFailing {
			s.syncFailing = true
			s.log.Error("reading the journal failed; serving what is known, retrying", zap.Error(err))
		}
		return err
	}
	if s.syncFailing {
		s.syncFailing = false
		s.log.Info("reading the journal works again")
	}
	s.stats.lastSync.Store(time.Now().UnixNano())
	s.markReconciled()
	return nil
}

// recoveryTimeout bounds a recovery (reading a snapshot or listing the
// records); it may take a while at a million domains.
var recoveryTimeout = 10 * time.Minute

// recoverGap brings memory up to date when the journal cannot: entries this
// instance has not read were compacted, or it skipped a damaged one. It
// reads the newest snapshot when that is past memory's position (the
// entries after it are kept), else it lists the records. It needs no lock.
func (s *Store) recoverGap() error {
	ctx, cancel := context.WithTimeout(context.Background(), recoveryTimeout)
	defer cancel()
	start := time.Now()
	if snap := s.loadSnapshot(ctx); snap != nil && snap.seq > s.position() {
		n, err := s.applySnapshot(ctx, snap)
		if err == nil {
			s.log.Warn("caught up from an index snapshot", zap.Uint64("seq", snap.seq),
				zap.Int("records_read", n), zap.Duration("took", time.Since(start)))
			return nil
		}
		s.log.Warn("catching up from an index snapshot failed; listing the records", zap.Error(err))
	}
	s.log.Warn("listing the records to catch up")
	return s.recoverFromListing(ctx, false)
}

// recoverSkipped reads the records once after this instance skipped a
// damaged journal entry, so that it ends with what the entry's writer
// applied. It lists them under the journal lock, once every entry is
// applied to the records (the session's catch-up does that), so that no
// writer is half way through.
func (s *Store) recoverSkipped() error {
	ctx, cancel := context.WithTimeout(context.Background(), recoveryTimeout)
	defer cancel()
	sess, err := s.startSession(ctx)
	if err != nil {
		return err
	}
	defer s.endSession(sess)
	if sess.applied < s.position() {
		return errors.New("an entry could not be applied to the records; retrying")
	}
	if _, err := s.readListing(ctx, sess.applied); err != nil {
		return err
	}
	s.needRecovery = false
	return nil
}
