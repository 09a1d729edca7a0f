// Package sealedstorage provides caddy.storage.sealed, a Caddy storage module
// that wraps any other storage module and seals private keys at rest with
// NaCl secretbox, so that a stolen disk or storage backup yields no usable
// key. The envelope is in internal/seal; docs/sealed-storage.md is the
// operator's guide.
package sealedstorage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

func init() {
	caddy.RegisterModule(SealedStorage{})
}

// SealedStorage is a storage module that wraps another storage module and
// seals private-key material with NaCl secretbox (XSalsa20-Poly1305) before
// it reaches the inner storage. Used as Caddy's global `storage`, it seals
// the keys of CertMagic (certificate and ACME account keys), of Caddy's
// internal CA, ECH and session tickets, and the keys uploaded to domaincerts.
// Which paths are sealed is given by IsPrivateKeyPath, or every path with
// seal_all. Each sealed value names its key and is bound to its path.
//
// Keys are 32 random bytes in base64, as printed by `caddy seal-keygen`.
// Give them through placeholders ({env.*}, {file.*}) or key_file so that they
// do not sit in the config. To rotate, put the new key in key, the old one in
// old_keys, and run `caddy seal-reseal`.
//
// Note that `caddy storage export` reads through Load, so its tarball holds
// the plaintext of every sealed value.
type SealedStorage struct {
	// Key is the key that seals new values: 32 random bytes in base64
	// (standard or URL-safe alphabet, padded or not). Placeholders such as
	// {env.DOMAINCERTS_SEAL_KEY} or {file./etc/caddy/seal.key} are resolved
	// when the module is provisioned, so the key need not appear in the
	// config. Required, unless key_file is set; when neither is set, a
	// development key is generated once into
	// <caddy config dir>/domaincerts/seal.key (outside the storage it
	// opens) and a warning is logged.
	Key string `json:"key,omitempty"`

	// OldKeys are keys that still open values but no longer seal, in the
	// same form as key (placeholders work). Run `caddy seal-reseal` to move
	// all values to key, then drop them. Default: none.
	OldKeys []string `json:"old_keys,omitempty"`

	// KeyFile is the path of a file that holds the key in base64, instead
	// of key. Surrounding white space is ignored. Placeholders work in the
	// path. The file should be readable by Caddy only. Default: none.
	KeyFile string `json:"key_file,omitempty"`

	// SealAll seals every value, not only private-key material. Values
	// that are already sealed keep opening if it is turned off again.
	// Default: false.
	SealAll bool `json:"seal_all,omitempty"`

	// AllowUnsealed makes loads accept a value found unsealed at a path
	// that is sealed, for migrating a storage written before sealing was
	// turned on; the value is sealed when it is next stored, or by
	// `caddy seal-reseal`. While it is on, anyone who can write to the
	// storage can plant an unsealed key. Default: false (such a value is
	// an error).
	AllowUnsealed bool `json:"allow_unsealed,omitempty"`

	// InnerRaw is the storage module that holds the sealed values, e.g.
	// {"module": "file_system", "root": "/var/lib/caddy"}. Any caddy.storage
	// module works. Default: file_system at Caddy's data directory, the
	// same place as Caddy's default storage.
	InnerRaw json.RawMessage `json:"inner,omitempty" caddy:"namespace=caddy.storage inline_key=module"`

	storage *Storage
}

// CaddyModule returns the Caddy module information.
func (SealedStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.sealed",
		New: func() caddy.Module { return new(SealedStorage) },
	}
}

// Provision resolves the keys and loads the inner storage module. It does no
// storage I/O (a wrong key shows at the first load of a sealed value) and
// uses nothing of the Caddy config but ctx.LoadModule and ctx.Logger, since
// `caddy storage export` provisions storage with a bare context.
func (s *SealedStorage) Provision(ctx caddy.Context) error {
	logger := loggerFor(ctx)
	if err := s.checkFields(); err != nil {
		return err
	}
	keys, devKeyPath, err := s.resolveKeys(logger)
	if err != nil {
		return err
	}
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()

	var inner certmagic.Storage
	if s.InnerRaw != nil {
		mod, err := ctx.LoadModule(s, "InnerRaw")
		if err != nil {
			return fmt.Errorf("loading inner storage module: %w", err)
		}
		conv, ok := mod.(caddy.StorageConverter)
		if !ok {
			return fmt.Errorf("inner storage module %T is not a caddy.StorageConverter", mod)
		}
		if inner, err = conv.CertMagicStorage(); err != nil {
			return fmt.Errorf("creating inner storage: %w", err)
		}
	} else {
		inner = &certmagic.FileStorage{Path: caddy.AppDataDir()}
	}

	st, err := New(inner, Config{Keys: keys, SealAll: s.SealAll, AllowUnsealed: s.AllowUnsealed})
	if err != nil {
		return err
	}
	s.storage = st

	if devKeyPath != "" {
		logger.Warn("sealed storage uses a development key generated on this machine; for production, set key or key_file (generate a key with `caddy seal-keygen`)",
			zap.String("key_file", devKeyPath), zap.Stringer("key_id", st.KeyID()))
		if fs, ok := inner.(*certmagic.FileStorage); ok && pathWithin(devKeyPath, fs.Path) {
			logger.Warn("the development key lies inside the storage it opens (Caddy's config directory is under the file_system root); a backup of the storage then holds its key: set key or key_file, or give the storage a root of its own",
				zap.String("key_file", devKeyPath), zap.String("storage_root", fs.Path))
		}
	}
	if s.AllowUnsealed {
		logger.Warn("allow_unsealed is on: values found unsealed at sealed paths are accepted; turn it off once `caddy seal-reseal` has sealed them")
	}
	logger.Info("sealed storage ready",
		zap.Stringer("storage", st),
		zap.Stringer("key_id", st.KeyID()),
		zap.Int("old_keys", len(keys)-1),
		zap.Bool("seal_all", s.SealAll))
	return nil
}

// pathWithin reports whether path lies in dir or below it.
func pathWithin(path, dir string) bool {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// Validate checks the configuration and that Provision built the storage.
func (s *SealedStorage) Validate() error {
	if err := s.checkFields(); err != nil {
		return err
	}
	if s.storage == nil {
		return errors.New("sealed storage is not provisioned")
	}
	return nil
}

// checkFields checks what can be checked without resolving placeholders.
func (s *SealedStorage) checkFields() error {
	if s.Key != "" && s.KeyFile != "" {
		return errors.New("sealed storage: key and key_file are both set; set one of them")
	}
	if len(s.OldKeys) > 0 && s.Key == "" && s.KeyFile == "" {
		return errors.New("sealed storage: old_keys is set but key is not; set key (or key_file) to the key that seals, old_keys only open")
	}
	for i, k := range s.OldKeys {
		if k == "" {
			return fmt.Errorf("sealed storage: old_keys[%d] is empty", i)
		}
	}
	return nil
}

// CertMagicStorage returns the sealed storage built by Provision. It has
// TryLock and RenewLockLease exactly when the inner storage has them, and
// is the same value on every call.
func (s *SealedStorage) CertMagicStorage() (certmagic.Storage, error) {
	if s.storage == nil {
		return nil, errors.New("sealed storage is not provisioned")
	}
	return s.storage.CertMagic(), nil
}

// Storage returns the *Storage built by Provision, e.g. to call Reseal; nil
// before Provision.
func (s *SealedStorage) Storage() *Storage { return s.storage }

// String describes the module without any key: "sealed(<inner storage>)".
// It has a value receiver so that logging the module by value is safe too.
func (s SealedStorage) String() string {
	if s.storage == nil {
		return "sealed(not provisioned)"
	}
	return s.storage.String()
}

// GoString is String, so that %#v does not print the fields either.
func (s SealedStorage) GoString() string { return s.String() }

// Format prints String for every verb: Key and OldKeys may hold literal keys
// as the user wrote them, and no verb (%d, %+v, ...) may reach them.
func (s SealedStorage) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

// UnmarshalCaddyfile sets up the module from Caddyfile tokens, usually as
// the global storage option.
//
// Syntax:
//
//	storage sealed {
//	    key            <base64 key or placeholder>
//	    old_key        <base64 key or placeholder>   # repeatable
//	    key_file       <path>
//	    seal_all
//	    allow_unsealed
//	    inner <module> [<args...>] {                 # e.g. inner file_system /var/lib/caddy
//	        <inner module's own Caddyfile>
//	    }
//	}
//
// A literal key (not a placeholder) is checked here already.
func (s *SealedStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume module name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] && name != "old_key" {
			return d.Errf("duplicate subdirective %q", name)
		}
		seen[name] = true
		switch name {
		case "key", "old_key":
			// Not d.ArgErr: it quotes the last token, which may be a key.
			var v string
			if !d.AllArgs(&v) {
				return d.Errf("%s takes exactly one argument: a base64 key or a placeholder", name)
			}
			if !placeholderRE.MatchString(v) {
				if _, err := seal.ParseKey(v); err != nil {
					return d.Errf("%s: %v; generate one with `caddy seal-keygen`", name, err)
				}
			}
			if name == "key" {
				s.Key = v
			} else {
				s.OldKeys = append(s.OldKeys, v)
			}
		case "key_file":
			if !d.AllArgs(&s.KeyFile) {
				return d.ArgErr()
			}
		case "seal_all":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.SealAll = true
		case "allow_unsealed":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.AllowUnsealed = true
		case "inner":
			if !d.NextArg() {
				return d.ArgErr()
			}
			modName := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "caddy.storage."+modName)
			if err != nil {
				return err
			}
			if _, ok := unm.(caddy.StorageConverter); !ok {
				return d.Errf("module caddy.storage.%s is not a storage module", modName)
			}
			s.InnerRaw = caddyconfig.JSONModuleObject(unm, "module", modName, nil)
		default:
			return d.Errf("unrecognized subdirective %q (want key, old_key, key_file, seal_all, allow_unsealed or inner)", name)
		}
	}
	if s.Key != "" && s.KeyFile != "" {
		return d.Err("key and key_file are both set; set one of them")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Module           = (*SealedStorage)(nil)
	_ caddy.Provisioner      = (*SealedStorage)(nil)
	_ caddy.Validator        = (*SealedStorage)(nil)
	_ caddy.StorageConverter = (*SealedStorage)(nil)
	_ caddyfile.Unmarshaler  = (*SealedStorage)(nil)
	_ fmt.Stringer           = SealedStorage{}
)
