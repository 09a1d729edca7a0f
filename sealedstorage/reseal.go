package sealedstorage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

// Report says what Reseal did, by storage path. It never holds values.
type Report struct {
	// Resealed are the values written anew under the current key: values
	// sealed under an old key, and values found unsealed at a sealed path.
	// In a dry run, the values that would be.
	Resealed []string

	// Current are the values already sealed under the current key.
	Current []string

	// Skipped are the values left as they are: values that are not sealed
	// at paths that are not sealed, and lock files.
	Skipped []string

	// Failed are the values that could not be read, opened or written.
	Failed []Failure
}

// Failure is a value that Reseal could not handle.
type Failure struct {
	Path string
	Err  error
}

// ResealOptions tune Reseal.
type ResealOptions struct {
	// DryRun classifies the values but writes nothing.
	DryRun bool
}

// resealLock is the lock that keeps two Reseal runs on one storage apart.
const resealLock = "domaincerts_seal_reseal"

// locksPrefix is where certmagic.FileStorage keeps its lock files. They are
// written by the lock methods, never through Store, so Reseal leaves them.
const locksPrefix = "locks/"

// Reseal walks every key of the inner storage and brings each value to the
// current configuration: a value sealed under an old key is resealed under
// the current key (also at a path that is no longer sealed: it is never
// turned into plaintext), and a value found unsealed at a sealed path is
// sealed. Values that cannot be opened are reported as failures and left
// untouched; the walk goes on.
//
// Reseal holds the storage lock "domaincerts_seal_reseal" while it runs, so
// two runs do not interleave. Storage has no compare-and-swap, so a Caddy
// instance writing the same key at the same moment could still race with
// it: each value is read again right before it is replaced and classified
// afresh when it changed, which leaves only the instant between that read
// and the write. Run it when the storage is quiet (or Caddy is stopped).
//
// The error is non-nil when the walk could not be done, or when some values
// failed; the report is filled in either way.
func (s *Storage) Reseal(ctx context.Context, opts ResealOptions) (Report, error) {
	var r Report
	if err := s.inner.Lock(ctx, resealLock); err != nil {
		return r, fmt.Errorf("resealing: acquiring lock %s: %w", resealLock, err)
	}
	defer s.inner.Unlock(context.WithoutCancel(ctx), resealLock)

	keys, err := s.inner.List(ctx, "", true)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return r, fmt.Errorf("resealing: listing storage: %w", err)
	}
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return r, fmt.Errorf("resealing: %w", err)
		}
		if strings.HasPrefix(cleanKey(key), locksPrefix) {
			r.Skipped = append(r.Skipped, key)
			continue
		}
		info, err := s.inner.Stat(ctx, key)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since the listing
		}
		if err != nil {
			r.Failed = append(r.Failed, Failure{key, err})
			continue
		}
		if !info.IsTerminal {
			continue
		}
		s.resealOne(ctx, key, opts, &r)
	}
	if n := len(r.Failed); n > 0 {
		return r, fmt.Errorf("resealing: %d values failed (first: %w)", n, r.Failed[0].Err)
	}
	return r, nil
}

// resealOne handles one value and records the outcome in r.
func (s *Storage) resealOne(ctx context.Context, key string, opts ResealOptions, r *Report) {
	const attempts = 3
	for range attempts {
		raw, err := s.inner.Load(ctx, key)
		if errors.Is(err, fs.ErrNotExist) {
			return
		}
		if err != nil {
			r.Failed = append(r.Failed, Failure{key, err})
			return
		}
		var plaintext []byte
		switch {
		case seal.IsSealed(raw):
			id, _ := seal.EnvelopeKeyID(raw)
			plaintext, err = s.sealer.Open(cleanKey(key), raw)
			if err != nil {
				r.Failed = append(r.Failed, Failure{key, explain(err)})
				return
			}
			if id == s.sealer.KeyID() {
				r.Current = append(r.Current, key)
				return
			}
		case s.Seals(key):
			plaintext = raw
		default:
			r.Skipped = append(r.Skipped, key)
			return
		}
		if err := s.refuseSealKey(key, plaintext); err != nil {
			r.Failed = append(r.Failed, Failure{key, err})
			return
		}
		if opts.DryRun {
			r.Resealed = append(r.Resealed, key)
			return
		}
		sealed, err := s.sealer.Seal(cleanKey(key), plaintext)
		if err != nil {
			r.Failed = append(r.Failed, Failure{key, err})
			return
		}
		// Read again right before writing: a value that changed meanwhile
		// was written by someone else and is classified afresh.
		now, err := s.inner.Load(ctx, key)
		if err == nil && !bytes.Equal(now, raw) {
			continue
		}
		if errors.Is(err, fs.ErrNotExist) {
			return
		}
		if err != nil {
			r.Failed = append(r.Failed, Failure{key, err})
			return
		}
		if err := s.inner.Store(ctx, key, sealed); err != nil {
			r.Failed = append(r.Failed, Failure{key, fmt.Errorf("storing resealed value at %q: %w", key, err)})
			return
		}
		r.Resealed = append(r.Resealed, key)
		return
	}
	r.Failed = append(r.Failed, Failure{key, fmt.Errorf("value at %q kept changing while resealing; run seal-reseal again", key)})
}
