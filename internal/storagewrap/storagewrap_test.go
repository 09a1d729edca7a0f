package storagewrap

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/internal/memstorage"
)

type withTry struct{ *memstorage.Storage }

func (withTry) TryLock(context.Context, string) (bool, error) { return true, nil }

type withRenew struct{ *memstorage.Storage }

func (withRenew) RenewLockLease(context.Context, string, time.Duration) error { return nil }

type withBoth struct{ *memstorage.Storage }

func (withBoth) TryLock(context.Context, string) (bool, error)               { return true, nil }
func (withBoth) RenewLockLease(context.Context, string, time.Duration) error { return nil }

// outer stands for a wrapper: it prints as itself.
type outer struct{ certmagic.Storage }

func (outer) String() string { return "outer" }

func TestMatch(t *testing.T) {
	mem := new(memstorage.Storage)
	tests := []struct {
		name            string
		inner           certmagic.Storage
		canTry, canRenw bool
	}{
		{"plain", mem, false, false},
		{"try lock", withTry{mem}, true, false},
		{"lease renewal", withRenew{mem}, false, true},
		{"both", withBoth{mem}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := outer{tt.inner}
			st := Match(o, tt.inner)
			_, canTry := st.(certmagic.TryLocker)
			_, canRenew := st.(certmagic.LockLeaseRenewer)
			if canTry != tt.canTry || canRenew != tt.canRenw {
				t.Fatalf("TryLocker %v, LockLeaseRenewer %v; want %v, %v", canTry, canRenew, tt.canTry, tt.canRenw)
			}
			if got := fmt.Sprint(st); got != "outer" {
				t.Fatalf("prints %q; want the outer storage's name", got)
			}
			if got := fmt.Sprintf("%#v", st); got != "outer" {
				t.Fatalf("%%#v prints %q", got)
			}
			if Outer(st) != certmagic.Storage(o) {
				t.Fatal("Outer does not return the wrapper")
			}
			ctx := context.Background()
			if err := st.Store(ctx, "k", []byte("v")); err != nil {
				t.Fatal(err)
			}
			if b, err := mem.Load(ctx, "k"); err != nil || string(b) != "v" {
				t.Fatalf("Store did not reach the storage: %q, %v", b, err)
			}
		})
	}
}
