// Package storagewrap gives a wrapper of a certmagic.Storage exactly the
// optional interfaces of the storage it wraps.
//
// CertMagic type-asserts its storage for certmagic.TryLocker (renewal
// information locks) and certmagic.LockLeaseRenewer (long issuances). A
// wrapper that always has them breaks storages that lack them, and one
// that never has them silently loses what the storage offers; Match builds
// the value with the same shape as the wrapped storage.
package storagewrap

import (
	"context"
	"fmt"
	"time"

	"github.com/caddyserver/certmagic"
)

// Match returns outer as a certmagic.Storage that implements
// certmagic.TryLocker and certmagic.LockLeaseRenewer exactly when inner
// does, delegating them to inner. It prints as outer does.
func Match(outer, inner certmagic.Storage) certmagic.Storage {
	_, canTry := inner.(certmagic.TryLocker)
	_, canRenew := inner.(certmagic.LockLeaseRenewer)
	w := wrapped{outer: outer, inner: inner}
	switch {
	case canTry && canRenew:
		return both{w}
	case canTry:
		return tryLock{w}
	case canRenew:
		return renew{w}
	}
	return plain{w}
}

// Outer returns the storage that Match wrapped, or st itself.
func Outer(st certmagic.Storage) certmagic.Storage {
	if w, ok := st.(interface{ Outer() certmagic.Storage }); ok {
		return w.Outer()
	}
	return st
}

type wrapped struct {
	outer, inner certmagic.Storage
}

func (w wrapped) Outer() certmagic.Storage { return w.outer }

func (w wrapped) Store(ctx context.Context, key string, value []byte) error {
	return w.outer.Store(ctx, key, value)
}

func (w wrapped) Load(ctx context.Context, key string) ([]byte, error) {
	return w.outer.Load(ctx, key)
}

func (w wrapped) Delete(ctx context.Context, key string) error { return w.outer.Delete(ctx, key) }

func (w wrapped) Exists(ctx context.Context, key string) bool { return w.outer.Exists(ctx, key) }

func (w wrapped) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	return w.outer.List(ctx, path, recursive)
}

func (w wrapped) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	return w.outer.Stat(ctx, key)
}

func (w wrapped) Lock(ctx context.Context, name string) error { return w.outer.Lock(ctx, name) }

func (w wrapped) Unlock(ctx context.Context, name string) error { return w.outer.Unlock(ctx, name) }

// String prints the outer storage, which certmagic logs.
func (w wrapped) String() string { return fmt.Sprint(w.outer) }

// GoString is String, so that %#v prints no more than the outer storage
// allows.
func (w wrapped) GoString() string { return w.String() }

// The four shapes, one per combination of the optional interfaces.
type (
	plain   struct{ wrapped }
	tryLock struct{ wrapped }
	renew   struct{ wrapped }
	both    struct{ wrapped }
)

func (p tryLock) TryLock(ctx context.Context, name string) (bool, error) {
	return p.inner.(certmagic.TryLocker).TryLock(ctx, name)
}

func (p both) TryLock(ctx context.Context, name string) (bool, error) {
	return p.inner.(certmagic.TryLocker).TryLock(ctx, name)
}

func (p renew) RenewLockLease(ctx context.Context, lockKey string, leaseDuration time.Duration) error {
	return p.inner.(certmagic.LockLeaseRenewer).RenewLockLease(ctx, lockKey, leaseDuration)
}

func (p both) RenewLockLease(ctx context.Context, lockKey string, leaseDuration time.Duration) error {
	return p.inner.(certmagic.LockLeaseRenewer).RenewLockLease(ctx, lockKey, leaseDuration)
}

// Interface guards
var (
	_ certmagic.Storage          = plain{}
	_ certmagic.TryLocker        = tryLock{}
	_ certmagic.LockLeaseRenewer = renew{}
	_ certmagic.TryLocker        = both{}
	_ certmagic.LockLeaseRenewer = both{}
	_ fmt.Stringer               = plain{}
)
