package domainstore

import (
	"context"
	"errors"
	"io/fs"
	"path"
	"strings"
	"time"
)

// Certificates that end soon are announced once a day per certificate for
// all the instances on a storage, not once per instance: an instance
// claims the certificates it is about to announce, under a storage lock,
// in the record of the day's claims:
//
//	announced/<YYYY-MM-DD, UTC>   one certificate ID a line
//
// The first claim of a day deletes the records of earlier days; an
// instance whose clock is behind a later day's record claims nothing.
const (
	announcedDir = prefix + "/announced"
	announceLock = "domaincerts_announce"
)

// ClaimAnnouncements records that ids are announced on the UTC day of now,
// and returns those that no instance on the storage had claimed for that
// day yet: the ones the caller should announce. On error nothing is
// claimed.
func (s *Store) ClaimAnnouncements(ctx context.Context, now time.Time, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	if err := s.lock(ctx, announceLock); err != nil {
		return nil, storageFailed("waiting for the announcement lock", err)
	}
	defer s.unlock(announceLock)
	st := s.Storage()
	key := announcedDir + "/" + now.UTC().Format(time.DateOnly)
	b, err := st.Load(ctx, key)
	first := errors.Is(err, fs.ErrNotExist)
	if err != nil && !first {
		s.stats.storageErrors.Add(1)
		return nil, storageFailed("reading the day's announcements", err)
	}
	if first {
		// a new day: drop the records of earlier days; if a later day has
		// one, this instance's clock is behind the others', and what it
		// would announce was announced already
		keys, err := st.List(ctx, announcedDir, false)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.stats.storageErrors.Add(1)
			return nil, storageFailed("listing the announcements", err)
		}
		for _, k := range keys {
			switch day := path.Base(k); {
			case day > path.Base(key):
				return nil, nil
			case day < path.Base(key):
				_ = st.Delete(ctx, k)
			}
		}
	}
	claimed := make(map[string]bool)
	for line := range strings.Lines(string(b)) {
		claimed[strings.TrimSpace(line)] = true
	}
	var fresh []string
	for _, id := range ids {
		if !claimed[id] {
			claimed[id] = true
			fresh = append(fresh, id)
		}
	}
	if len(fresh) == 0 {
		return nil, nil
	}
	var sb strings.Builder
	sb.Write(b)
	for _, id := range fresh {
		sb.WriteString(id)
		sb.WriteByte('\n')
	}
	if err := st.Store(ctx, key, []byte(sb.String())); err != nil {
		s.stats.storageErrors.Add(1)
		return nil, storageFailed("recording the day's announcements", err)
	}
	return fresh, nil
}
