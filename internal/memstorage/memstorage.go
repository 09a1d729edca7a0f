// Package memstorage is an in-memory certmagic.Storage for tests and
// benchmarks that need many records without disk I/O. It follows the
// Storage contract: fs.ErrNotExist for missing keys, Delete of a missing
// key is nil, Delete and List treat keys as paths.
package memstorage

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// Storage keeps values in a map. The zero value is ready to use.
type Storage struct {
	mu     sync.RWMutex
	values map[string]item
	locks  sync.Map // name -> chan struct{} (capacity 1: holding is a value in it)
}

type item struct {
	value    []byte
	modified time.Time
}

// Store implements certmagic.Storage.
func (s *Storage) Store(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.values == nil {
		s.values = make(map[string]item)
	}
	s.values[key] = item{value: append([]byte(nil), value...), modified: time.Now()}
	return nil
}

// Load implements certmagic.Storage.
func (s *Storage) Load(_ context.Context, key string) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	it, ok := s.values[key]
	if !ok {
		return nil, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	return append([]byte(nil), it.value...), nil
}

// Delete implements certmagic.Storage: it deletes key and every key below it.
func (s *Storage) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.values {
		if k == key || strings.HasPrefix(k, key+"/") {
			delete(s.values, k)
		}
	}
	return nil
}

// Exists implements certmagic.Storage.
func (s *Storage) Exists(_ context.Context, key string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.values[key]; ok {
		return true
	}
	for k := range s.values {
		if strings.HasPrefix(k, key+"/") {
			return true
		}
	}
	return false
}

// List implements certmagic.Storage.
func (s *Storage) List(_ context.Context, path string, recursive bool) ([]string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	prefix := "" // the root lists everything
	if path != "" {
		prefix = strings.TrimSuffix(path, "/") + "/"
	}
	seen := make(map[string]bool)
	var out []string
	for k := range s.values {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if !recursive {
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				rest = rest[:i]
			}
		}
		if name := prefix + rest; !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w", path, fs.ErrNotExist)
	}
	return out, nil
}

// Stat implements certmagic.Storage.
func (s *Storage) Stat(_ context.Context, key string) (certmagic.KeyInfo, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if it, ok := s.values[key]; ok {
		return certmagic.KeyInfo{Key: key, Modified: it.modified, Size: int64(len(it.value)), IsTerminal: true}, nil
	}
	for k := range s.values {
		if strings.HasPrefix(k, key+"/") {
			return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
		}
	}
	return certmagic.KeyInfo{}, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
}

// Lock implements certmagic.Locker within this process.
func (s *Storage) Lock(ctx context.Context, name string) error {
	l, _ := s.locks.LoadOrStore(name, make(chan struct{}, 1))
	select {
	case l.(chan struct{}) <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unlock implements certmagic.Locker. Unlocking a lock that is not held
// is an error and changes nothing.
func (s *Storage) Unlock(_ context.Context, name string) error {
	if l, ok := s.locks.Load(name); ok {
		select {
		case <-l.(chan struct{}):
			return nil
		default:
		}
	}
	return fmt.Errorf("unlocking %s: not locked", name)
}

// String names the storage for logs.
func (s *Storage) String() string { return "memstorage" }

// Interface guards
var _ certmagic.Storage = (*Storage)(nil)
