package sealedstorage

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

// DevKeyPath returns where the development key lives when neither key nor
// key_file is configured: <caddy.AppConfigDir()>/domaincerts/seal.key. It
// lies outside Caddy's data directory, which is where the default storage
// is: a storage must never hold the key that opens it.
func DevKeyPath() string {
	return filepath.Join(caddy.AppConfigDir(), "domaincerts", "seal.key")
}

// legacyDevKeyPath is where earlier versions kept the development key:
// inside the default storage, where it looked like a private key to seal.
func legacyDevKeyPath() string {
	return filepath.Join(caddy.AppDataDir(), "domaincerts", "seal.key")
}

// loadDevKey returns the development key, moving it out of the storage
// from where earlier versions kept it, or creating it on first use.
func loadDevKey(logger *zap.Logger) ([]byte, string, error) {
	path := DevKeyPath()
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := moveLegacyDevKey(path, logger); err != nil {
			return nil, path, err
		}
	}
	k, err := loadOrCreateDevKey(path, logger)
	return k, path, err
}

// moveLegacyDevKey moves a development key kept inside the storage by an
// earlier version to path. One that was sealed (with itself, by
// seal-reseal) cannot be recovered, and is reported as such.
func moveLegacyDevKey(path string, logger *zap.Logger) error {
	old := legacyDevKeyPath()
	b, err := os.ReadFile(old)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the development key kept by an earlier version at %s: %w", old, err)
	}
	defer clear(b)
	if seal.IsSealed(b) {
		return fmt.Errorf("the development key at %s was sealed with itself (by `caddy seal-reseal` of an earlier version), so the values it sealed cannot be opened; restore that file from a backup, or move it away to start over with a new key (values sealed with the lost key must then be deleted and obtained again)", old)
	}
	k, err := seal.ParseKey(string(b))
	if err != nil {
		return fmt.Errorf("the development key kept by an earlier version at %s: %w", old, err)
	}
	defer clear(k)
	// another process starting at the same time may have moved it first
	if err := writeKeyFile(path, k); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("moving the development key to %s: %w", path, err)
	}
	if err := os.Remove(old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		// the key is safe at path; the copy in the storage is only untidy
		// (and never sealed: it is a configured key)
		logger.Warn("could not remove the development key from the storage after copying it out; remove it by hand",
			zap.String("from", old), zap.String("to", path), zap.Error(err))
		return nil
	}
	logger.Info("moved the development seal key out of the storage",
		zap.String("from", old), zap.String("to", path), zap.Stringer("key_id", seal.KeyIDOf(k)))
	return nil
}

// loggerFor is ctx.Logger without stack traces; tests replace it to read
// the logs. Caddy's commands that load the storage outside a running
// config (`caddy storage export`, `caddy seal-reseal`) give a development
// logger, which would print a stack trace under every warning.
var loggerFor = func(ctx caddy.Context) *zap.Logger {
	return ctx.Logger().WithOptions(zap.AddStacktrace(zapcore.FatalLevel))
}

// placeholderRE matches a value that has a placeholder in it, such as
// {env.X} or {file./path}. A base64 key has no braces.
var placeholderRE = regexp.MustCompile(`\{[^{}]+\}`)

// maxKeyFileSize bounds what is read from a key file; a key in base64 is 44
// bytes.
const maxKeyFileSize = 4096

// resolveKeys returns the configured keys, the sealing key first. When
// neither key nor key_file is set, it loads or creates the development key
// and returns its path. Errors never contain key material; they name a
// placeholder only when the field is nothing but placeholders.
func (s *SealedStorage) resolveKeys(logger *zap.Logger) (keys [][]byte, devKeyPath string, err error) {
	repl := caddy.NewReplacer()
	var first []byte
	switch {
	case s.Key != "":
		if first, err = parseField(repl, "key", s.Key); err != nil {
			return nil, "", err
		}
	case s.KeyFile != "":
		path := repl.ReplaceKnown(s.KeyFile, "")
		if first, err = readKeyFile(path, logger); err != nil {
			return nil, "", fmt.Errorf("sealed storage: key_file: %w", err)
		}
	default:
		if first, devKeyPath, err = loadDevKey(logger); err != nil {
			return nil, "", fmt.Errorf("sealed storage: development key: %w", err)
		}
	}
	keys = append(keys, first)
	ids := map[seal.KeyID]string{seal.KeyIDOf(first): "key"}
	for i, raw := range s.OldKeys {
		field := fmt.Sprintf("old_keys[%d]", i)
		if onlyPlaceholders(raw) && strings.TrimSpace(repl.ReplaceKnown(raw, "")) == "" {
			// old keys are for rotation only: a placeholder for one that
			// is not set (yet, or any more) leaves nothing to open with
			logger.Warn("sealed storage: an old key is empty after resolving placeholders; ignored (if a rotation is under way, values sealed with it will not open)", zap.String("field", field), zap.String("placeholder", raw))
			continue
		}
		k, err := parseField(repl, field, raw)
		if err != nil {
			return nil, "", err
		}
		if other, dup := ids[seal.KeyIDOf(k)]; dup {
			return nil, "", fmt.Errorf("sealed storage: %s is the same key as %s; remove it", field, other)
		}
		ids[seal.KeyIDOf(k)] = field
		keys = append(keys, k)
	}
	return keys, devKeyPath, nil
}

// parseField resolves the placeholders in a key field and decodes it.
func parseField(repl *caddy.Replacer, field, raw string) ([]byte, error) {
	v := strings.TrimSpace(repl.ReplaceKnown(raw, ""))
	src := ""
	if onlyPlaceholders(raw) {
		src = " (from " + raw + ")"
	}
	if v == "" {
		return nil, fmt.Errorf("sealed storage: %s is empty after resolving placeholders%s; check that the environment variable or file is set", field, src)
	}
	k, err := seal.ParseKey(v)
	if err != nil {
		return nil, fmt.Errorf("sealed storage: %s%s: %w; generate one with `caddy seal-keygen`", field, src, err)
	}
	return k, nil
}

// onlyPlaceholders reports whether raw consists of placeholders only, so
// that naming it in an error reveals no key.
func onlyPlaceholders(raw string) bool {
	return raw != "" && placeholderRE.ReplaceAllString(raw, "") == ""
}

// readKeyFile reads a base64 key from path.
func readKeyFile(path string, logger *zap.Logger) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil {
		warnIfShared(path, fi, logger)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	defer clear(b)
	if len(b) > maxKeyFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes; it should hold one base64 key", path, maxKeyFileSize)
	}
	k, err := seal.ParseKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// warnIfShared logs when a key file is readable by group or others.
func warnIfShared(path string, fi fs.FileInfo, logger *zap.Logger) {
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		logger.Warn("seal key file is accessible to group or others; chmod 600 it",
			zap.String("key_file", path), zap.Stringer("mode", fi.Mode().Perm()))
	}
}

// loadOrCreateDevKey returns the development key at path, creating it (32
// random bytes, mode 0600, directory 0700) on first use. Two processes that
// start together end up with the same key: the file is linked into place
// atomically, and the loser reads the winner's key.
func loadOrCreateDevKey(path string, logger *zap.Logger) ([]byte, error) {
	k, err := readKeyFile(path, logger)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	key, err := seal.GenerateKey()
	if err != nil {
		return nil, err
	}
	err = writeKeyFile(path, key)
	if errors.Is(err, fs.ErrExist) {
		clear(key)
		return readKeyFile(path, logger)
	}
	return key, err
}

// writeKeyFile writes key in base64 to path, which must not exist (mode
// 0600, directory 0700): a temporary file linked into place, or, without
// hard links, an exclusive create. It returns fs.ErrExist if path exists.
func writeKeyFile(path string, key []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	content := []byte(seal.EncodeKey(key) + "\n")
	defer clear(content)

	tmp, err := os.CreateTemp(dir, ".seal.key-*") // mode 0600
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	_, err = tmp.Write(content)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", tmpName, err)
	}
	err = os.Link(tmpName, path)
	if err == nil || errors.Is(err, fs.ErrExist) {
		return err
	}
	// No hard links on this file system: create the file exclusively.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
