package sealedstorage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
	"github.com/domaincerts/caddy-domaincerts/internal/storagewrap"
)

// IsPrivateKeyPath reports whether the storage key names private-key
// material, which the sealed storage seals by default:
//
//   - any key ending in ".key": certificate keys
//     (certificates/<issuer>/<name>/<name>.key), ACME account keys
//     (acme/<issuer>/users/<email>/<name>.key), Caddy's internal CA keys
//     (pki/authorities/<id>/root.key, intermediate.key) and keys uploaded to
//     domaincerts (domaincerts/certificates/<id>.key);
//   - any key ending in ".key.compromised" (keys CertMagic moves aside after
//     a revocation);
//   - ech/configs/<id>/key.bin (Caddy's ECH private keys);
//   - stek/stek.bin (Caddy's distributed TLS session ticket keys).
//
// The key is cleaned first (path.Clean, no leading slash), and matching is
// case-sensitive, as CertMagic writes lowercase keys.
func IsPrivateKeyPath(key string) bool {
	key = cleanKey(key)
	switch {
	case strings.HasSuffix(key, ".key"), strings.HasSuffix(key, ".key.compromised"):
		return true
	case key == "stek/stek.bin":
		return true
	}
	ok, _ := path.Match("ech/configs/*/key.bin", key)
	return ok
}

// cleanKey is the form of a storage key that a value is bound to: forward
// slashes, cleaned, no leading slash. "a//b.key", "/a/b.key" and "a/./b.key"
// name one file in a file system storage and so are bound alike.
func cleanKey(key string) string {
	return strings.TrimPrefix(path.Clean("/"+key), "/")
}

// Config is what New needs besides the inner storage.
type Config struct {
	// Keys are 32-byte master keys. The first seals; all of them open.
	Keys [][]byte

	// SealAll seals every value, not only private-key material.
	SealAll bool

	// AllowUnsealed makes Load return a value found unsealed at a path that
	// is sealed, instead of refusing it. It is meant for migrating a storage
	// that was written without sealing.
	AllowUnsealed bool
}

// Storage is a certmagic.Storage that seals values on their way to an inner
// storage and opens them on the way back. Which values are sealed is decided
// by path: IsPrivateKeyPath, or every path with Config.SealAll. A value that
// is sealed opens at any path, whatever the predicate says.
//
// Storage keeps the inner storage's contract: errors from the inner storage
// are returned as they are (so errors.Is(err, fs.ErrNotExist) works), Delete,
// Exists, List and locks are passed through. Use CertMagic to get a value
// that also has the inner storage's optional TryLock and RenewLockLease.
//
// Storage is safe for concurrent use when the inner storage is. Create it
// with New; the zero value is not usable.
type Storage struct {
	inner         certmagic.Storage
	sealer        *seal.Sealer
	sealAll       bool
	allowUnsealed bool
	public        certmagic.Storage
}

// New returns a Storage that seals values stored in inner with cfg.Keys.
func New(inner certmagic.Storage, cfg Config) (*Storage, error) {
	if inner == nil {
		return nil, errors.New("creating sealed storage: no inner storage")
	}
	sealer, err := seal.NewSealer(cfg.Keys...)
	if err != nil {
		return nil, err
	}
	s := &Storage{inner: inner, sealer: sealer, sealAll: cfg.SealAll, allowUnsealed: cfg.AllowUnsealed}
	s.public = storagewrap.Match(s, inner)
	return s, nil
}

// CertMagic returns s as a certmagic.Storage that implements
// certmagic.TryLocker and certmagic.LockLeaseRenewer exactly when the inner
// storage does. CertMagic type-asserts for them, so this is the value to
// hand to Caddy and CertMagic. It always returns the same value.
func (s *Storage) CertMagic() certmagic.Storage { return s.public }

// From returns the *Storage behind a value that CertMagic returned, such as
// the ctx.Storage() of a Caddy config whose storage is sealed.
func From(st certmagic.Storage) (*Storage, bool) {
	s, ok := storagewrap.Outer(st).(*Storage)
	return s, ok
}

// Inner returns the wrapped storage.
func (s *Storage) Inner() certmagic.Storage { return s.inner }

// KeyID returns the id of the key that seals.
func (s *Storage) KeyID() seal.KeyID { return s.sealer.KeyID() }

// Seals reports whether a value stored at key is sealed.
func (s *Storage) Seals(key string) bool { return s.sealAll || IsPrivateKeyPath(key) }

// Store seals value if key is a sealed path, then stores it in the inner
// storage. A value at another path is stored as it is, unless it begins like
// an envelope (see seal.IsSealed): then it is sealed too, so that Load gives
// it back unchanged. One of the seal keys is refused at any path.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	if err := s.refuseSealKey(key, value); err != nil {
		return err
	}
	if s.Seals(key) || seal.IsSealed(value) {
		sealed, err := s.sealer.Seal(cleanKey(key), value)
		if err != nil {
			return err
		}
		value = sealed
	}
	return s.inner.Store(ctx, key, value)
}

// ErrSealKeyInStorage is returned for a value that is one of the keys that
// seal this storage: a storage must never hold the key that opens it (and
// a key sealed with itself is lost).
var ErrSealKeyInStorage = errors.New("the value is a key of this sealed storage")

// refuseSealKey returns ErrSealKeyInStorage if value is one of the
// storage's keys in base64, as a key file holds it.
func (s *Storage) refuseSealKey(key string, value []byte) error {
	v := bytes.TrimSpace(value)
	if len(v) > 64 { // a key in base64 is 44 characters
		return nil
	}
	k, err := seal.ParseKey(string(v))
	if err != nil {
		return nil
	}
	defer clear(k)
	id := seal.KeyIDOf(k)
	if slices.Contains(s.sealer.KeyIDs(), id) {
		return fmt.Errorf("%w (key id %s) at %q: a storage must never hold the key that opens it; keep the key in a file outside the storage (key_file) and delete this value", ErrSealKeyInStorage, id, key)
	}
	return nil
}

// Load loads the value at key from the inner storage and opens it if it is
// sealed. A value that is not sealed at a sealed path is refused unless
// allow_unsealed is on. Errors of the inner storage are returned as they are.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	raw, err := s.inner.Load(ctx, key)
	if err != nil {
		return nil, err
	}
	return s.open(key, raw)
}

func (s *Storage) open(key string, raw []byte) ([]byte, error) {
	if seal.IsSealed(raw) {
		pt, err := s.sealer.Open(cleanKey(key), raw)
		if err != nil {
			return nil, explain(err)
		}
		return pt, nil
	}
	if s.Seals(key) && !s.allowUnsealed {
		return nil, fmt.Errorf("loading %q: %w at a path that sealed storage seals; "+
			"if it was written before sealing was turned on, set \"allow_unsealed\": true until `caddy seal-reseal` has sealed it",
			key, ErrUnsealed)
	}
	return raw, nil
}

// ErrUnsealed is wrapped by the error that Load returns for a value found
// unsealed at a sealed path while allow_unsealed is off.
var ErrUnsealed = errors.New("value is not sealed")

// explain adds what the operator can do to an error of seal.Sealer.Open.
func explain(err error) error {
	switch {
	case errors.Is(err, seal.ErrUnknownKey):
		return fmt.Errorf("%w; configure the key that sealed it (key or old_keys)", err)
	case errors.Is(err, seal.ErrAuth):
		return fmt.Errorf("%w; restore it from a backup or delete it so that it is obtained again", err)
	}
	return err
}

// Delete passes through: it deletes key, or everything below it.
func (s *Storage) Delete(ctx context.Context, key string) error { return s.inner.Delete(ctx, key) }

// Exists passes through.
func (s *Storage) Exists(ctx context.Context, key string) bool { return s.inner.Exists(ctx, key) }

// List passes through.
func (s *Storage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	return s.inner.List(ctx, prefix, recursive)
}

// Stat returns the inner storage's KeyInfo for key, with Size set to the
// size of the plaintext: for a sealed value, the stored size minus
// seal.Overhead (53 bytes). To tell, Stat reads the value of a terminal key.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	info, err := s.inner.Stat(ctx, key)
	if err != nil || !info.IsTerminal {
		return info, err
	}
	raw, err := s.inner.Load(ctx, key)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	info.Size = int64(len(raw))
	if seal.IsSealed(raw) {
		info.Size = seal.PlaintextSize(info.Size)
	}
	return info, nil
}

// Lock passes through.
func (s *Storage) Lock(ctx context.Context, name string) error { return s.inner.Lock(ctx, name) }

// Unlock passes through.
func (s *Storage) Unlock(ctx context.Context, name string) error { return s.inner.Unlock(ctx, name) }

// String names the inner storage, e.g. "sealed(FileStorage:/var/lib/caddy)".
// It names no key.
func (s *Storage) String() string {
	if st, ok := s.inner.(fmt.Stringer); ok {
		return "sealed(" + st.String() + ")"
	}
	return fmt.Sprintf("sealed(%T)", s.inner)
}

// GoString is String, so that %#v reveals nothing either.
func (s *Storage) GoString() string { return s.String() }

// Interface guards
var (
	_ certmagic.Storage = (*Storage)(nil)
	_ fmt.Stringer      = (*Storage)(nil)
)
