package caddymod

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/certsource"
	"github.com/domaincerts/caddy-domaincerts/domainstore"
)

// instances holds the process-wide state of each storage location: the
// loaded store and the certificate source with its cache. Caddy provisions
// a new app before it stops the old one on a config reload; both share the
// same instance, so a reload neither re-reads the records nor empties the
// cache.
var instances = caddy.NewUsagePool()

// instance is the process-wide state for one storage location.
type instance struct {
	store  *domainstore.Store
	source *certsource.Source
}

// Destruct is called when the last app using the instance is cleaned up
// (Caddy stops, or a reload moves to another storage): it takes its hot
// certificates out of Caddy's cache and writes the index snapshot that
// makes the next start-up fast.
func (i *instance) Destruct() error {
	if h := i.source.Hot(); h != nil {
		h.Close()
	}
	return i.store.Close()
}

// storageIdentity names a storage location. Storages that print themselves
// (certmagic.FileStorage, caddy.storage.sealed) are named by what they
// print, which never includes secrets; others by type and address.
func storageIdentity(st certmagic.Storage) string {
	if s, ok := st.(fmt.Stringer); ok {
		return fmt.Sprintf("%T|%s", st, s.String())
	}
	return fmt.Sprintf("%T|%p", st, st)
}

// acquireInstance returns the instance for the storage, loading it on
// first use. The caller must release it with instances.Delete(key).
func acquireInstance(ctx caddy.Context, st certmagic.Storage, opts domainstore.Options, capacity int, log *zap.Logger) (string, *instance, error) {
	key := storageIdentity(st)
	// (a loaded instance takes this config's storage value in Start)
	val, _, err := instances.LoadOrNew(key, func() (caddy.Destructor, error) {
		store, err := domainstore.Open(ctx, st, opts)
		if err != nil {
			return nil, err
		}
		return &instance{store: store, source: certsource.New(store, capacity, log)}, nil
	})
	if err != nil {
		return "", nil, err
	}
	return key, val.(*instance), nil
}
