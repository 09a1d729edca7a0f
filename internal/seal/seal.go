// Package seal implements the envelope that the sealed storage puts around a
// value at rest: NaCl secretbox (XSalsa20-Poly1305) under a per-path subkey,
// with a versioned header that names the key that sealed it.
//
// The package is pure Go with no Caddy imports so that it can be tested,
// fuzzed and benchmarked alone.
//
// # Envelope, version 1
//
//	offset  size  field
//	0       4     magic: 0x89 'D' 'C' 'S'
//	4       1     version: 0x01
//	5       8     key id: SHA-256("domaincerts/sealed/key-id/v1\x00" || key)[:8]
//	13      24    nonce: random
//	37      16    Poly1305 tag  } secretbox.Seal(plaintext, nonce, path subkey)
//	53      n     ciphertext    } (XSalsa20-Poly1305), n = len(plaintext)
//
// The overhead is fixed: Overhead = 53 bytes, so a sealed value of size m
// holds exactly m-53 bytes of plaintext.
//
// The path subkey is HKDF-SHA256(key, salt = none, info =
// "domaincerts/sealed/v1\x00" || path, 32 bytes). Because the subkey depends on
// the path, a value copied to another path does not open there. The header
// is not encrypted, but it is bound all the same: a changed version is
// refused, and a changed key id selects another key (or none), so the tag
// does not verify.
//
// The first byte of the magic, 0x89, cannot begin UTF-8 text, PEM, JSON or
// DER, so a plaintext value is never mistaken for a sealed one in practice.
package seal

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/crypto/nacl/secretbox"
)

// Sizes of the envelope, in bytes.
const (
	// KeySize is the size of a master key.
	KeySize = 32

	// NonceSize is the size of the random nonce in each envelope.
	NonceSize = 24

	// KeyIDSize is the size of a key id.
	KeyIDSize = 8

	// HeaderSize is the size of magic, version, key id and nonce.
	HeaderSize = magicSize + 1 + KeyIDSize + NonceSize

	// Overhead is how much larger a sealed value is than its plaintext:
	// the header plus the 16-byte Poly1305 tag.
	Overhead = HeaderSize + secretbox.Overhead
)

// Version is the envelope version that Seal writes and Open reads.
const Version byte = 1

// magic starts every sealed value.
var magic = [magicSize]byte{0x89, 'D', 'C', 'S'}

const magicSize = 4

const (
	subkeyLabel = "domaincerts/sealed/v1\x00"
	keyIDLabel  = "domaincerts/sealed/key-id/v1\x00"
)

// The kinds of failure, for errors.Is. Every error that Open returns is an
// *Error that wraps one of them.
var (
	// ErrNotSealed means the value has no envelope header.
	ErrNotSealed = errors.New("value is not sealed")

	// ErrUnknownKey means the value was sealed under a key that is not
	// configured.
	ErrUnknownKey = errors.New("unknown key id")

	// ErrAuth means the tag did not verify: the value was modified, or
	// copied from another path.
	ErrAuth = errors.New("authentication failed")

	// ErrMalformed means the value has the envelope magic but is truncated
	// or of an unsupported version.
	ErrMalformed = errors.New("malformed sealed value")
)

// Error describes a failure to seal or open the value at a path. It never
// holds key material or plaintext.
type Error struct {
	// Op is "sealing" or "opening".
	Op string

	// Path is the storage path of the value.
	Path string

	// Kind is ErrNotSealed, ErrUnknownKey, ErrAuth or ErrMalformed.
	Kind error

	// KeyID is the key id named by the envelope, when it was read.
	KeyID KeyID

	msg string
}

func (e *Error) Error() string {
	return e.Op + " sealed value at " + strconv.Quote(e.Path) + ": " + e.msg
}

// Unwrap returns e.Kind.
func (e *Error) Unwrap() error { return e.Kind }

// KeyID names a key without revealing it: the first 8 bytes of
// SHA-256("domaincerts/sealed/key-id/v1\x00" || key).
type KeyID [KeyIDSize]byte

// KeyIDOf returns the id of key.
func KeyIDOf(key []byte) KeyID {
	h := sha256.New()
	h.Write([]byte(keyIDLabel))
	h.Write(key)
	var id KeyID
	copy(id[:], h.Sum(nil))
	return id
}

// String returns id as 16 lowercase hex digits.
func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// sealKey is one configured key. The master key itself is not kept, only
// the HKDF pseudorandom key extracted from it.
type sealKey struct {
	id  KeyID
	prk []byte
}

// Sealer seals values under its first key and opens values sealed under any
// of its keys. It is safe for concurrent use. Its String, GoString and Format
// methods print key ids only, never key material. Create it with NewSealer;
// the zero value is not usable.
type Sealer struct {
	keys []*sealKey
	byID map[KeyID]*sealKey
	rand io.Reader
}

// NewSealer returns a Sealer for keys: the first one seals, all of them open.
// Each key must be exactly KeySize bytes; a key is never truncated or padded.
// The Sealer keeps no reference to the slices passed in.
func NewSealer(keys ...[]byte) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("creating sealer: no keys")
	}
	s := &Sealer{byID: make(map[KeyID]*sealKey, len(keys)), rand: rand.Reader}
	for i, k := range keys {
		if len(k) != KeySize {
			return nil, fmt.Errorf("creating sealer: key %d is %d bytes; a key must be exactly %d bytes", i, len(k), KeySize)
		}
		id := KeyIDOf(k)
		if _, dup := s.byID[id]; dup {
			return nil, fmt.Errorf("creating sealer: key %d (id %s) is given twice", i, id)
		}
		prk, err := hkdf.Extract(sha256.New, k, nil)
		if err != nil {
			return nil, fmt.Errorf("creating sealer: deriving key %d: %w", i, err)
		}
		sk := &sealKey{id: id, prk: prk}
		s.keys = append(s.keys, sk)
		s.byID[id] = sk
	}
	return s, nil
}

// KeyID returns the id of the key that seals.
func (s *Sealer) KeyID() KeyID { return s.keys[0].id }

// KeyIDs returns the ids of all keys, the sealing key first.
func (s *Sealer) KeyIDs() []KeyID {
	ids := make([]KeyID, len(s.keys))
	for i, k := range s.keys {
		ids[i] = k.id
	}
	return ids
}

// Seal returns plaintext sealed for path under the first key. The result is
// exactly Overhead bytes longer than plaintext.
func (s *Sealer) Seal(path string, plaintext []byte) ([]byte, error) {
	k := s.keys[0]
	out := make([]byte, HeaderSize, HeaderSize+len(plaintext)+secretbox.Overhead)
	copy(out, magic[:])
	out[magicSize] = Version
	copy(out[magicSize+1:], k.id[:])
	nonceBytes := out[HeaderSize-NonceSize : HeaderSize]
	if _, err := io.ReadFull(s.rand, nonceBytes); err != nil {
		return nil, fmt.Errorf("sealing value at %q: reading random nonce: %w", path, err)
	}
	var nonce [NonceSize]byte
	copy(nonce[:], nonceBytes)
	sub, err := k.subkey(path)
	if err != nil {
		return nil, fmt.Errorf("sealing value at %q: %w", path, err)
	}
	out = secretbox.Seal(out, plaintext, &nonce, sub)
	clear(sub[:])
	return out, nil
}

// Open returns the plaintext of a value that Seal sealed for path under any
// of the keys of s. A value that is not sealed, truncated, modified, sealed
// for another path or under a key that s does not have gives an *Error, never
// garbage.
func (s *Sealer) Open(path string, sealed []byte) ([]byte, error) {
	fail := func(kind error, id KeyID, format string, args ...any) ([]byte, error) {
		return nil, &Error{Op: "opening", Path: path, Kind: kind, KeyID: id, msg: fmt.Sprintf(format, args...)}
	}
	if !IsSealed(sealed) {
		return fail(ErrNotSealed, KeyID{}, "value is not sealed (it does not start with the envelope magic)")
	}
	if len(sealed) <= magicSize {
		return fail(ErrMalformed, KeyID{}, "truncated: %d bytes, a sealed value has at least %d", len(sealed), Overhead)
	}
	if v := sealed[magicSize]; v != Version {
		return fail(ErrMalformed, KeyID{}, "unsupported envelope version %d (this build reads version %d)", v, Version)
	}
	if len(sealed) < Overhead {
		return fail(ErrMalformed, KeyID{}, "truncated: %d bytes, a sealed value has at least %d", len(sealed), Overhead)
	}
	var id KeyID
	copy(id[:], sealed[magicSize+1:])
	k := s.byID[id]
	if k == nil {
		return fail(ErrUnknownKey, id, "no configured key has id %s", id)
	}
	var nonce [NonceSize]byte
	copy(nonce[:], sealed[HeaderSize-NonceSize:HeaderSize])
	sub, err := k.subkey(path)
	if err != nil {
		return fail(ErrMalformed, id, "%v", err)
	}
	plaintext, ok := secretbox.Open(make([]byte, 0, len(sealed)-Overhead), sealed[HeaderSize:], &nonce, sub)
	clear(sub[:])
	if !ok {
		return fail(ErrAuth, id, "authentication failed under key %s: the value was modified, or sealed for another path", id)
	}
	return plaintext, nil
}

// String describes s by its key ids.
func (s Sealer) String() string {
	ids := make([]string, len(s.keys))
	for i, k := range s.keys {
		ids[i] = k.id.String()
	}
	return "seal.Sealer{keys: [" + strings.Join(ids, " ") + "]}"
}

// GoString is String, so that %#v prints no key material either.
func (s Sealer) GoString() string { return s.String() }

// Format prints String for every verb, so that no verb (%d, %x, %+v, ...)
// reaches the key material in unexported fields.
func (s Sealer) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

func (k *sealKey) subkey(path string) (*[KeySize]byte, error) {
	b, err := hkdf.Expand(sha256.New, k.prk, subkeyLabel+path, KeySize)
	if err != nil {
		return nil, fmt.Errorf("deriving path subkey: %w", err)
	}
	var sub [KeySize]byte
	copy(sub[:], b)
	clear(b)
	return &sub, nil
}

// IsSealed reports whether b starts with the envelope magic. A value shorter
// than the magic that is a prefix of it counts as sealed (and truncated), so
// that a cut-off envelope is reported as malformed, not taken for plaintext.
// The empty value is not sealed.
func IsSealed(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	n := min(len(b), magicSize)
	return string(b[:n]) == string(magic[:n])
}

// EnvelopeKeyID returns the key id named in the header of a sealed value,
// without opening it.
func EnvelopeKeyID(sealed []byte) (KeyID, error) {
	var id KeyID
	if !IsSealed(sealed) {
		return id, ErrNotSealed
	}
	if len(sealed) < Overhead || sealed[magicSize] != Version {
		return id, ErrMalformed
	}
	copy(id[:], sealed[magicSize+1:])
	return id, nil
}

// PlaintextSize returns the size of the plaintext in a sealed value of
// sealedSize bytes, or 0 if sealedSize is too small to be one.
func PlaintextSize(sealedSize int64) int64 {
	return max(sealedSize-Overhead, 0)
}

// GenerateKey returns KeySize random bytes from crypto/rand.
func GenerateKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	return k, nil
}

// EncodeKey returns key in standard base64, the form ParseKey reads first.
func EncodeKey(key []byte) string { return base64.StdEncoding.EncodeToString(key) }

// ParseKey decodes a key given in base64: standard or URL-safe alphabet,
// padded or not. Surrounding white space is ignored. The decoded key must be
// exactly KeySize bytes. Errors never contain s.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("key is empty")
	}
	var (
		key []byte
		err error
	)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("key is not valid base64 (%d characters); a key is %d random bytes in base64", len(s), KeySize)
	}
	if len(key) != KeySize {
		hint := ""
		if _, herr := hex.DecodeString(s); herr == nil && len(s) == 2*KeySize {
			hint = " (it looks like hex; give the key in base64)"
		}
		clear(key)
		return nil, fmt.Errorf("key decodes to %d bytes, want exactly %d%s", len(key), KeySize, hint)
	}
	return key, nil
}
