package sealedstorage

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

// provision loads a storage config the way Caddy and `caddy storage export`
// do: ctx.LoadModule with a bare context (Provision, then Validate).
func provision(t *testing.T, storageJSON string) (*SealedStorage, error) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	var cfg struct {
		StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
	}
	cfg.StorageRaw = json.RawMessage(storageJSON)
	mod, err := ctx.LoadModule(&cfg, "StorageRaw")
	if err != nil {
		return nil, err
	}
	return mod.(*SealedStorage), nil
}

// observeLogs sends the module's logs to an observer for the test.
func observeLogs(t *testing.T) *observer.ObservedLogs {
	core, logs := observer.New(zap.DebugLevel)
	old := loggerFor
	loggerFor = func(caddy.Context) *zap.Logger { return zap.New(core) }
	t.Cleanup(func() { loggerFor = old })
	return logs
}

// allLogs renders every observed entry with its fields as JSON.
func allLogs(logs *observer.ObservedLogs) string {
	var b strings.Builder
	for _, e := range logs.All() {
		b.WriteString(e.Message)
		m, _ := json.Marshal(e.ContextMap())
		b.Write(m)
		b.WriteByte('\n')
	}
	return b.String()
}

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

func innerJSON(dir string) string {
	return fmt.Sprintf(`{"module":"file_system","root":%q}`, dir)
}

func TestProvisionKeySources(t *testing.T) {
	k, old := key(0x11), key(0x22)
	keyFile := filepath.Join(t.TempDir(), "seal.key")
	if err := os.WriteFile(keyFile, []byte(b64(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SEALTEST_KEY", b64(k))
	t.Setenv("SEALTEST_OLD", base64.RawURLEncoding.EncodeToString(old))
	t.Setenv("SEALTEST_DIR", filepath.Dir(keyFile))

	tests := []struct {
		name   string
		fields string
		old    bool
	}{
		{"literal", fmt.Sprintf(`"key":%q`, b64(k)), false},
		{"literal raw url", fmt.Sprintf(`"key":%q`, base64.RawURLEncoding.EncodeToString(k)), false},
		{"env placeholder", `"key":"{env.SEALTEST_KEY}"`, false},
		{"file placeholder", fmt.Sprintf(`"key":"{file.%s}"`, keyFile), false},
		{"key_file", fmt.Sprintf(`"key_file":%q`, keyFile), false},
		{"key_file placeholder", `"key_file":"{env.SEALTEST_DIR}/seal.key"`, false},
		{"old_keys", `"key":"{env.SEALTEST_KEY}","old_keys":["{env.SEALTEST_OLD}"]`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			m, err := provision(t, fmt.Sprintf(`{"module":"sealed",%s,"inner":%s}`, tt.fields, innerJSON(dir)))
			if err != nil {
				t.Fatal(err)
			}
			st := m.Storage()
			if st.KeyID() != seal.KeyIDOf(k) {
				t.Fatalf("sealing key id %s, want %s", st.KeyID(), seal.KeyIDOf(k))
			}
			cm, err := m.CertMagicStorage()
			if err != nil {
				t.Fatal(err)
			}
			if again, _ := m.CertMagicStorage(); again != cm {
				t.Fatal("CertMagicStorage returns a different value on the second call")
			}
			if _, ok := cm.(certmagic.TryLocker); !ok {
				t.Fatal("file_system inner has TryLock, the sealed storage does not")
			}
			if got, want := m.String(), "sealed(FileStorage:"+dir+")"; got != want {
				t.Fatalf("String = %q, want %q", got, want)
			}
			ctx := context.Background()
			if err := cm.Store(ctx, "x/x.key", []byte("v")); err != nil {
				t.Fatal(err)
			}
			if got, err := cm.Load(ctx, "x/x.key"); err != nil || string(got) != "v" {
				t.Fatalf("Load = %q, %v", got, err)
			}
			if tt.old {
				inner := &certmagic.FileStorage{Path: dir}
				if err := mustNew(t, inner, Config{Keys: [][]byte{old}}).Store(ctx, "y.key", []byte("old")); err != nil {
					t.Fatal(err)
				}
				if got, err := cm.Load(ctx, "y.key"); err != nil || string(got) != "old" {
					t.Fatalf("old key does not open: %q, %v", got, err)
				}
			}
		})
	}
}

func TestProvisionErrors(t *testing.T) {
	good := b64(key(0x33))
	short := b64(key(0x44)[:16])
	long := b64(append(key(0x55), 1))
	missingFile := filepath.Join(t.TempDir(), "nope.key")
	shortFile := filepath.Join(t.TempDir(), "short.key")
	if err := os.WriteFile(shortFile, []byte(short), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SEALTEST_EMPTY", "")
	dir := t.TempDir()
	tests := []struct {
		name, fields, want string
		secrets            []string
	}{
		{"short literal", fmt.Sprintf(`"key":%q`, short), "key: key decodes to 16 bytes, want exactly 32", []string{short}},
		{"long literal", fmt.Sprintf(`"key":%q`, long), "key: key decodes to 33 bytes, want exactly 32", []string{long}},
		{"not base64", `"key":"this is not base64!"`, "key: key is not valid base64", []string{"this is not base64!"}},
		{"unset env", `"key":"{env.SEALTEST_UNSET_VAR}"`, "key is empty after resolving placeholders (from {env.SEALTEST_UNSET_VAR})", nil},
		{"empty env", `"key":"{env.SEALTEST_EMPTY}"`, "key is empty after resolving placeholders", nil},
		{"both", fmt.Sprintf(`"key":%q,"key_file":%q`, good, shortFile), "key and key_file are both set", []string{good}},
		{"old without key", fmt.Sprintf(`"old_keys":[%q]`, good), "old_keys is set but key is not", []string{good}},
		{"duplicate old", fmt.Sprintf(`"key":%q,"old_keys":[%q,%q]`, good, b64(key(1)), good), "old_keys[1] is the same key as key", []string{good}},
		{"short old", fmt.Sprintf(`"key":%q,"old_keys":[%q]`, good, short), "old_keys[0]: key decodes to 16 bytes", []string{good, short}},
		{"empty old", fmt.Sprintf(`"key":%q,"old_keys":[""]`, good), "old_keys[0] is empty", []string{good}},
		{"missing key_file", fmt.Sprintf(`"key_file":%q`, missingFile), "key_file: open " + missingFile, nil},
		{"short key_file", fmt.Sprintf(`"key_file":%q`, shortFile), "decodes to 16 bytes", []string{short}},
		{"unknown inner", fmt.Sprintf(`"key":%q,"inner":{"module":"nonexistent"}`, good), "loading inner storage module", []string{good}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := observeLogs(t)
			fields := tt.fields
			if !strings.Contains(fields, `"inner"`) {
				fields += `,"inner":` + innerJSON(dir)
			}
			_, err := provision(t, `{"module":"sealed",`+fields+`}`)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tt.want)
			}
			for _, s := range tt.secrets {
				if strings.Contains(err.Error(), s) || strings.Contains(allLogs(logs), s) {
					t.Fatalf("error or log reveals a key: %v", err)
				}
			}
		})
	}
}

func TestDevKey(t *testing.T) {
	data, config := t.TempDir(), t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	t.Setenv("XDG_CONFIG_HOME", config)
	logs := observeLogs(t)
	inner := t.TempDir()

	m1, err := provision(t, `{"module":"sealed","inner":`+innerJSON(inner)+`}`)
	if err != nil {
		t.Fatal(err)
	}
	// the key lives in Caddy's config directory, outside the data
	// directory where the default storage is
	path := filepath.Join(config, "caddy", "domaincerts", "seal.key")
	if DevKeyPath() != path {
		t.Fatalf("DevKeyPath = %s, want %s", DevKeyPath(), path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	di, _ := os.Stat(filepath.Dir(path))
	if di.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %v, want 0700", di.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	k, err := seal.ParseKey(string(b))
	if err != nil || seal.KeyIDOf(k) != m1.Storage().KeyID() {
		t.Fatalf("key file does not hold the sealing key: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("key dir holds %d entries, want only seal.key", len(entries))
	}

	m2, err := provision(t, `{"module":"sealed","inner":`+innerJSON(inner)+`}`)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Storage().KeyID() != m1.Storage().KeyID() {
		t.Fatal("second start generated another key")
	}

	warns := logs.FilterMessageSnippet("development key").All()
	if len(warns) != 2 || warns[0].Level != zap.WarnLevel || warns[0].ContextMap()["key_file"] != path {
		t.Fatalf("development key warnings = %+v", warns)
	}
	out := allLogs(logs)
	if strings.Contains(out, strings.TrimSpace(string(b))) || strings.Contains(out, string(k)) {
		t.Fatal("logs reveal the development key")
	}

	// Without inner, the storage is file_system at Caddy's data directory.
	m3, err := provision(t, `{"module":"sealed"}`)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m3.String(), "sealed(FileStorage:"+filepath.Join(data, "caddy")+")"; got != want {
		t.Fatalf("default inner = %q, want %q", got, want)
	}
}

func TestModuleRevealsNoKey(t *testing.T) {
	logs := observeLogs(t)
	k, old := key(0x41), key(0x42)
	m, err := provision(t, fmt.Sprintf(`{"module":"sealed","key":%q,"old_keys":[%q],"allow_unsealed":true,"inner":%s}`, b64(k), b64(old), innerJSON(t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	if m.Key != b64(k) {
		t.Fatal("Provision changed the Key field")
	}
	cm, _ := m.CertMagicStorage()
	out := []string{allLogs(logs), logged(zap.Any("storage", m)), logged(zap.Any("storage", *m)), logged(zap.Any("storage", cm))}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%q", "%x"} {
		out = append(out, fmt.Sprintf(verb, m), fmt.Sprintf(verb, *m))
	}
	for _, o := range out {
		for _, secret := range []string{b64(k), b64(old), string(k), string(old)} {
			if strings.Contains(o, secret) {
				t.Errorf("output reveals a key: %s", o)
			}
		}
	}
	if !strings.Contains(allLogs(logs), seal.KeyIDOf(k).String()) {
		t.Error("the ready log does not name the key id")
	}
	if len(logs.FilterMessageSnippet("allow_unsealed").All()) != 1 {
		t.Error("no warning for allow_unsealed")
	}
}

func TestNotProvisioned(t *testing.T) {
	var m SealedStorage
	if _, err := m.CertMagicStorage(); err == nil {
		t.Fatal("CertMagicStorage before Provision succeeded")
	}
	if err := m.Validate(); err == nil {
		t.Fatal("Validate before Provision succeeded")
	}
	if m.String() != "sealed(not provisioned)" {
		t.Fatalf("String = %q", m.String())
	}
}

func TestResealCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	inner := &certmagic.FileStorage{Path: dir}
	oldSt := mustNew(t, inner, Config{Keys: [][]byte{key(1)}})
	if err := oldSt.Store(ctx, "certificates/ca/a/a.key", []byte("SECRET-VALUE")); err != nil {
		t.Fatal(err)
	}
	if err := inner.Store(ctx, "certificates/ca/a/a.crt", []byte("CERT-VALUE")); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`{"storage":{"module":"sealed","key":%q,"old_keys":[%q],"inner":%s},"apps":{}}`, b64(key(2)), b64(key(1)), innerJSON(dir))

	var out bytes.Buffer
	if err := reseal(ctx, []byte(cfg), ResealOptions{DryRun: true}, true, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "would reseal: certificates/ca/a/a.key\n") || !strings.Contains(out.String(), "would reseal 1, already current 0,") {
		t.Fatalf("dry run output:\n%s", out.String())
	}
	out.Reset()
	if err := reseal(ctx, []byte(cfg), ResealOptions{}, true, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"storage: sealed(FileStorage:" + dir + "), sealing key id " + seal.KeyIDOf(key(2)).String(),
		"resealed: certificates/ca/a/a.key\n",
		"skipped: certificates/ca/a/a.crt\n",
		"resealed 1, already current 0, skipped ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "SECRET") || strings.Contains(out.String(), "CERT-VALUE") {
		t.Fatal("output reveals a value")
	}
	if got, err := mustNew(t, inner, Config{Keys: [][]byte{key(2)}}).Load(ctx, "certificates/ca/a/a.key"); err != nil || string(got) != "SECRET-VALUE" {
		t.Fatalf("after reseal: %q, %v", got, err)
	}

	for _, tc := range []struct{ cfg, want string }{
		{`{"apps":{}}`, "the config has no storage"},
		{`{"storage":{"module":"file_system","root":"` + dir + `"}}`, "is caddy.storage.file_system, not caddy.storage.sealed"},
		{`{"storage":`, "decoding config"},
	} {
		if err := reseal(ctx, []byte(tc.cfg), ResealOptions{}, false, &out); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("reseal(%s) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

func TestKeygen(t *testing.T) {
	var a, b bytes.Buffer
	if err := keygen(&a); err != nil {
		t.Fatal(err)
	}
	_ = keygen(&b)
	if !strings.HasSuffix(a.String(), "\n") || a.String() == b.String() {
		t.Fatalf("keygen output %q, %q", a.String(), b.String())
	}
	if k, err := seal.ParseKey(a.String()); err != nil || len(k) != 32 {
		t.Fatalf("keygen output does not parse: %v", err)
	}
}

// TestDevKeyMovedOutOfStorage starts on a development key that an earlier
// version kept inside the default storage (Caddy's data directory): it is
// moved to the config directory, the same key, and is gone from the
// storage. One that seal-reseal sealed with itself is reported as lost.
func TestDevKeyMovedOutOfStorage(t *testing.T) {
	data, config := t.TempDir(), t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	t.Setenv("XDG_CONFIG_HOME", config)
	legacy := filepath.Join(data, "caddy", "domaincerts", "seal.key")
	if err := os.MkdirAll(filepath.Dir(legacy), 0o700); err != nil {
		t.Fatal(err)
	}
	k := key(7)
	if err := os.WriteFile(legacy, []byte(b64(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := provision(t, `{"module":"sealed"}`)
	if err != nil {
		t.Fatal(err)
	}
	if m.Storage().KeyID() != seal.KeyIDOf(k) {
		t.Fatal("the moved key is not the one in use")
	}
	if _, err := os.Stat(legacy); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the key is still in the storage: %v", err)
	}
	if b, err := os.ReadFile(DevKeyPath()); err != nil || strings.TrimSpace(string(b)) != b64(k) {
		t.Fatalf("the key was not moved to %s: %v", DevKeyPath(), err)
	}

	// the key sealed with itself by an earlier seal-reseal: lost, said so
	if err := os.Remove(DevKeyPath()); err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.NewSealer(k)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := sealer.Seal("domaincerts/seal.key", []byte(b64(k)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(legacy, sealed, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := provision(t, `{"module":"sealed"}`); err == nil || !strings.Contains(err.Error(), "sealed with itself") {
		t.Fatalf("provision with a self-sealed development key = %v", err)
	}
}

// TestEmptyOldKeyIgnored: an old key whose placeholder is not set (there is
// no rotation going on) is left out, not an error.
func TestEmptyOldKeyIgnored(t *testing.T) {
	t.Setenv("SEALTEST_KEY", b64(key(1)))
	t.Setenv("SEALTEST_OLD_UNSET", "")
	m, err := provision(t, `{"module":"sealed","key":"{env.SEALTEST_KEY}","old_keys":["{env.SEALTEST_OLD_UNSET}"],"inner":`+innerJSON(t.TempDir())+`}`)
	if err != nil {
		t.Fatalf("an unset old key placeholder: %v", err)
	}
	if ids := m.Storage().sealer.KeyIDs(); len(ids) != 1 {
		t.Fatalf("%d keys; want only the current one", len(ids))
	}
	// a literal that is not a key is still an error
	if _, err := provision(t, `{"module":"sealed","key":"{env.SEALTEST_KEY}","old_keys":["nope"],"inner":`+innerJSON(t.TempDir())+`}`); err == nil {
		t.Fatal("a malformed old key was accepted")
	}
}

// TestDevKeyMoveRace: when another process moved the development key out
// of the storage between this one's checks (the key is already at its new
// path), provisioning uses it and tidies the storage copy.
func TestDevKeyMoveRace(t *testing.T) {
	data, config := t.TempDir(), t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	t.Setenv("XDG_CONFIG_HOME", config)
	legacy := filepath.Join(data, "caddy", "domaincerts", "seal.key")
	k := key(9)
	for _, p := range []string{legacy, DevKeyPath()} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(b64(k)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// what the other process had not done yet when this one looked
	if err := moveLegacyDevKey(DevKeyPath(), zap.NewNop()); err != nil {
		t.Fatalf("moving a key that is already at its new path: %v", err)
	}
	if _, err := os.Stat(legacy); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the storage copy is still there: %v", err)
	}
	m, err := provision(t, `{"module":"sealed"}`)
	if err != nil {
		t.Fatal(err)
	}
	if m.Storage().KeyID() != seal.KeyIDOf(k) {
		t.Fatal("the moved key is not the one in use")
	}
}

// TestDevKeyInsideFileStorage: a file_system root that contains Caddy's
// config directory (a service user whose home is the storage root) puts
// the development key inside the storage; Provision says so.
func TestDevKeyInsideFileStorage(t *testing.T) {
	home := t.TempDir()
	t.Setenv("XDG_DATA_HOME", filepath.Join(home, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "config"))
	logs := observeLogs(t)
	if _, err := provision(t, `{"module":"sealed","inner":{"module":"file_system","root":`+strconv.Quote(home)+`}}`); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(allLogs(logs), "the development key lies inside the storage it opens") {
		t.Errorf("no warning for a development key inside the storage root; logs:\n%s", allLogs(logs))
	}
	// a root of its own: no such warning
	logs = observeLogs(t)
	if _, err := provision(t, `{"module":"sealed","inner":{"module":"file_system","root":`+strconv.Quote(filepath.Join(home, "storage"))+`}}`); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(allLogs(logs), "inside the storage it opens") {
		t.Errorf("warned for a storage root that does not hold the key:\n%s", allLogs(logs))
	}
}
