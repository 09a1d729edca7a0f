package domainstore

import (
	"context"
	"errors"
	"io/fs"
	"path"
	"strings"
	"sync"
	"time"
)

// Certificates that end soon are announced once a day per certificate for
// all the instances on a storage, not once per instance: an instance
// claims the certificates it is about to announce, under a storage lock,
// in the records of the day's claims, flat in one directory (every storage
// lists one level alike):
//
//	announcements/<YYYY-MM-DD, UTC>_<part>   one certificate ID a line
//
// Each claim writes one part with the IDs it claimed; an instance keeps the
// day's claims in memory and reads only the parts it has not read yet, so
// a claim costs what it claims, not what the day holds. Past maxDayParts
// parts, a claim merges them into one. A claim deletes the records of
// earlier days (and those of earlier releases, announced/<day>, of earlier
// days); an instance whose clock is behind a later day's records claims
// nothing.
const (
	announcementsDir = prefix + "/announcements"
	legacyAnnounced  = prefix + "/announced"
	announceLock     = "domaincerts_announce"
	maxDayParts      = 256
)

// dayClaims is an instance's memory of one day's claims.
type dayClaims struct {
	mu    sync.Mutex // held with the storage lock
	day   string
	parts map[string]bool // part keys read
	ids   map[string]bool
}

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
	c := &s.claims
	c.mu.Lock()
	defer c.mu.Unlock()
	st := s.Storage()
	day := now.UTC().Format(time.DateOnly)
	keys, err := st.List(ctx, announcementsDir, false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.stats.storageErrors.Add(1)
		return nil, storageFailed("listing the announcements", err)
	}
	var today []string
	for _, k := range keys {
		switch d, ok := partDay(k); {
		case !ok:
		case d > day:
			return nil, nil // this instance's clock is behind the others'
		case d < day:
			_ = st.Delete(ctx, k)
		default:
			today = append(today, k)
		}
	}
	if c.day != day {
		c.day, c.parts, c.ids = day, make(map[string]bool), make(map[string]bool)
		s.deleteLegacyClaims(ctx, day)
	}
	for _, k := range today {
		if c.parts[k] {
			continue
		}
		b, err := st.Load(ctx, k)
		if errors.Is(err, fs.ErrNotExist) {
			continue // merged meanwhile; the merged part holds its IDs
		}
		if err != nil {
			s.stats.storageErrors.Add(1)
			return nil, storageFailed("reading the day's announcements", err)
		}
		for line := range strings.Lines(string(b)) {
			if id := strings.TrimSpace(line); id != "" {
				c.ids[id] = true
			}
		}
		c.parts[k] = true
	}
	var fresh []string
	for _, id := range ids {
		if !c.ids[id] {
			c.ids[id] = true
			fresh = append(fresh, id)
		}
	}
	if len(fresh) == 0 {
		return nil, nil
	}
	if err := s.writeClaims(ctx, day, fresh, today); err != nil {
		for _, id := range fresh {
			delete(c.ids, id)
		}
		return nil, err
	}
	return fresh, nil
}

// partDay returns the day of a claims part's key.
func partDay(key string) (string, bool) {
	base := path.Base(key)
	if len(base) < len(time.DateOnly)+2 || base[len(time.DateOnly)] != '_' {
		return "", false
	}
	day := base[:len(time.DateOnly)]
	if _, err := time.Parse(time.DateOnly, day); err != nil {
		return "", false
	}
	return day, true
}

// writeClaims records fresh as a new part of day, or, when the day has
// many parts already (today), merges the day's claims into one part.
func (s *Store) writeClaims(ctx context.Context, day string, fresh, today []string) error {
	c := &s.claims
	st := s.Storage()
	var sb strings.Builder
	merge := len(today) >= maxDayParts
	if merge {
		for id := range c.ids {
			sb.WriteString(id)
			sb.WriteByte('\n')
		}
	} else {
		for _, id := range fresh {
			sb.WriteString(id)
			sb.WriteByte('\n')
		}
	}
	part := announcementsDir + "/" + day + "_" + newID("") // unique, time-ordered
	if err := st.Store(ctx, part, []byte(sb.String())); err != nil {
		s.stats.storageErrors.Add(1)
		return storageFailed("recording the day's announcements", err)
	}
	c.parts[part] = true
	if merge {
		// the merged part holds every ID: the others can go (one that
		// cannot be deleted costs the other instances one more read)
		for _, k := range today {
			if err := st.Delete(ctx, k); err == nil {
				delete(c.parts, k)
			}
		}
	}
	return nil
}

// deleteLegacyClaims deletes the claims records that earlier releases
// wrote for days before day (one file a day); today's stays, so that
// instances of an earlier release still running keep reading it.
func (s *Store) deleteLegacyClaims(ctx context.Context, day string) {
	st := s.Storage()
	keys, err := st.List(ctx, legacyAnnounced, false)
	if err != nil {
		return
	}
	for _, k := range keys {
		if path.Base(k) < day {
			_ = st.Delete(ctx, k)
		}
	}
}
