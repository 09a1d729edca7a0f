// Package redisstorage is a CertMagic storage over Redis, for the
// integration tests only (it is built into the test Caddy, never into the
// plugin): several Caddy instances on a networked store show that nothing
// in domaincerts relies on file-system semantics.
//
// Each value is a Redis hash {v: value, m: modified unix nanoseconds} at
// "<prefix><key>"; a lock is a key "<prefix>locks/<name>" set with NX and
// a TTL that the holder keeps extending.
package redisstorage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
)

func init() {
	caddy.RegisterModule(Module{})
}

// Module is the test-only caddy.storage.testredis module.
type Module struct {
	// Address of the Redis server, host:port.
	Address string `json:"address,omitempty"`
	// Prefix of every key. Default: "caddy/".
	Prefix string `json:"prefix,omitempty"`

	st *Storage
}

// CaddyModule returns the Caddy module information.
func (Module) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.storage.testredis", New: func() caddy.Module { return new(Module) }}
}

// Provision connects the client (lazily, as go-redis does).
func (m *Module) Provision(caddy.Context) error {
	if m.Address == "" {
		return errors.New("testredis: address is required")
	}
	if m.Prefix == "" {
		m.Prefix = "caddy/"
	}
	m.st = New(m.Address, m.Prefix)
	return nil
}

// CertMagicStorage returns the storage.
func (m *Module) CertMagicStorage() (certmagic.Storage, error) { return m.st, nil }

// Storage is a certmagic.Storage over Redis.
type Storage struct {
	client  *redis.Client
	prefix  string
	lockTTL time.Duration

	mu    sync.Mutex
	locks map[string]*heldLock
}

type heldLock struct {
	token string
	stop  chan struct{}
}

// New returns a storage on the Redis server at addr.
func New(addr, prefix string) *Storage {
	return &Storage{
		client:  redis.NewClient(&redis.Options{Addr: addr}),
		prefix:  prefix,
		lockTTL: 10 * time.Second,
		locks:   make(map[string]*heldLock),
	}
}

func (s *Storage) k(key string) string { return s.prefix + key }

// Store implements certmagic.Storage.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	return s.client.HSet(ctx, s.k(key), "v", value, "m", strconv.FormatInt(time.Now().UnixNano(), 10)).Err()
}

// Load implements certmagic.Storage.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	b, err := s.client.HGet(ctx, s.k(key), "v").Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	return b, err
}

// Delete implements certmagic.Storage: the key and every key below it.
func (s *Storage) Delete(ctx context.Context, key string) error {
	keys, err := s.scan(ctx, key+"/")
	if err != nil {
		return err
	}
	keys = append(keys, s.k(key))
	return s.client.Del(ctx, keys...).Err()
}

// Exists implements certmagic.Storage.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	if n, err := s.client.Exists(ctx, s.k(key)).Result(); err == nil && n > 0 {
		return true
	}
	keys, err := s.scan(ctx, key+"/")
	return err == nil && len(keys) > 0
}

// List implements certmagic.Storage.
func (s *Storage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	dir := strings.TrimSuffix(path, "/") + "/"
	if path == "" {
		dir = ""
	}
	keys, err := s.scan(ctx, dir)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool)
	var out []string
	for _, full := range keys {
		rest := strings.TrimPrefix(strings.TrimPrefix(full, s.prefix), dir)
		if strings.HasPrefix(rest, "locks/") && dir == "" {
			continue
		}
		if !recursive {
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				rest = rest[:i]
			}
		}
		if name := dir + rest; !seen[name] {
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
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	vals, err := s.client.HMGet(ctx, s.k(key), "v", "m").Result()
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if v, ok := vals[0].(string); ok {
		ns, _ := strconv.ParseInt(fmt.Sprint(vals[1]), 10, 64)
		return certmagic.KeyInfo{Key: key, Modified: time.Unix(0, ns), Size: int64(len(v)), IsTerminal: true}, nil
	}
	keys, err := s.scan(ctx, key+"/")
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if len(keys) > 0 {
		return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
	}
	return certmagic.KeyInfo{}, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
}

// scan returns every full key that starts with the prefix and dir.
func (s *Storage) scan(ctx context.Context, dir string) ([]string, error) {
	var out []string
	iter := s.client.Scan(ctx, 0, globEscape(s.k(dir))+"*", 1000).Iterator()
	for iter.Next(ctx) {
		if k := iter.Val(); !strings.HasPrefix(k, s.prefix+"locks/") || strings.HasPrefix(dir, "locks/") {
			out = append(out, k)
		}
	}
	return out, iter.Err()
}

func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`).Replace(s)
}

// Lock implements certmagic.Locker: it sets the lock key if absent, and
// keeps extending its TTL while it is held.
func (s *Storage) Lock(ctx context.Context, name string) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	key := s.k("locks/" + name)
	for {
		ok, err := s.client.SetNX(ctx, key, token, s.lockTTL).Result()
		if err != nil {
			return err
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	held := &heldLock{token: token, stop: make(chan struct{})}
	s.mu.Lock()
	s.locks[name] = held
	s.mu.Unlock()
	go func() {
		t := time.NewTicker(s.lockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-held.stop:
				return
			case <-t.C:
				_ = refresh.Run(context.Background(), s.client, []string{key}, token, s.lockTTL.Milliseconds()).Err()
			}
		}
	}()
	return nil
}

// Unlock implements certmagic.Locker: it deletes the lock key if this
// storage still holds it.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	held := s.locks[name]
	delete(s.locks, name)
	s.mu.Unlock()
	if held == nil {
		return fmt.Errorf("unlocking %s: not held", name)
	}
	close(held.stop)
	return release.Run(ctx, s.client, []string{s.k("locks/" + name)}, held.token).Err()
}

var (
	refresh = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
	release = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
)

// String names the storage for logs.
func (s *Storage) String() string { return "testredis:" + s.client.Options().Addr + "/" + s.prefix }

// Interface guards
var (
	_ certmagic.Storage      = (*Storage)(nil)
	_ caddy.StorageConverter = (*Module)(nil)
	_ caddy.Provisioner      = (*Module)(nil)
)
