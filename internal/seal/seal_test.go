package seal

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func mustSealer(t testing.TB, keys ...[]byte) *Sealer {
	t.Helper()
	s, err := NewSealer(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRoundTrip(t *testing.T) {
	s := mustSealer(t, testKey(1))
	for _, n := range []int{0, 1, 31, 256, 4096, 1 << 16} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			pt := bytes.Repeat([]byte{'x'}, n)
			sealed, err := s.Seal("certificates/a/a.key", pt)
			if err != nil {
				t.Fatal(err)
			}
			if len(sealed) != n+Overhead {
				t.Fatalf("sealed size = %d, want %d", len(sealed), n+Overhead)
			}
			if PlaintextSize(int64(len(sealed))) != int64(n) {
				t.Fatalf("PlaintextSize = %d, want %d", PlaintextSize(int64(len(sealed))), n)
			}
			if !IsSealed(sealed) {
				t.Fatal("IsSealed = false for a sealed value")
			}
			if id, err := EnvelopeKeyID(sealed); err != nil || id != s.KeyID() {
				t.Fatalf("EnvelopeKeyID = %s, %v; want %s", id, err, s.KeyID())
			}
			got, err := s.Open("certificates/a/a.key", sealed)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatal("plaintext differs after round trip")
			}
		})
	}
}

func TestNoncesDiffer(t *testing.T) {
	s := mustSealer(t, testKey(1))
	a, _ := s.Seal("p", []byte("same"))
	b, _ := s.Seal("p", []byte("same"))
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same value are identical; nonce is not random")
	}
}

// TestKnownAnswer pins the envelope format: with a fixed nonce the output must
// not change between releases, or values already at rest would not open.
func TestKnownAnswer(t *testing.T) {
	s := mustSealer(t, testKey(7))
	s.rand = bytes.NewReader(bytes.Repeat([]byte{0xAB}, NonceSize))
	sealed, err := s.Seal("stek/stek.bin", []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	// The subkey and key id were computed independently (Python hashlib/hmac).
	sub, err := s.keys[0].subkey("stek/stek.bin")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(sub[:]); got != "72f3ed383eadff005af76db5785d0e90106f17aa0624821d1b3dc74dfdda29fd" {
		t.Fatalf("subkey = %s", got)
	}
	const want = "89444353" + "01" + "95d080d70a26bfc5" + "abababababababababababababababababababababababab"
	if got := hex.EncodeToString(sealed[:HeaderSize]); got != want {
		t.Fatalf("header = %s\nwant      %s", got, want)
	}
	const wantBody = "0f6e3706e2a9480276521892801f23bee1c22b51a5"
	if got := hex.EncodeToString(sealed[HeaderSize:]); got != wantBody {
		t.Fatalf("body = %s\nwant    %s", got, wantBody)
	}
}

func TestOpenFailures(t *testing.T) {
	const path = "acme/ca/users/me/me.key"
	key := testKey(1)
	s := mustSealer(t, key)
	pt := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret\n-----END EC PRIVATE KEY-----\n")
	sealed, err := s.Seal(path, pt)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		b[i] ^= 0x01
		return b
	}
	tests := []struct {
		name   string
		sealer *Sealer
		path   string
		value  []byte
		kind   error
		text   string
	}{
		{"magic", s, path, flip(1), ErrNotSealed, "not sealed"},
		{"version", s, path, flip(magicSize), ErrMalformed, "unsupported envelope version 0"},
		{"key id", s, path, flip(magicSize + 1), ErrUnknownKey, "no configured key has id"},
		{"key id last byte", s, path, flip(magicSize + KeyIDSize), ErrUnknownKey, "no configured key has id"},
		{"nonce first byte", s, path, flip(HeaderSize - NonceSize), ErrAuth, "authentication failed"},
		{"nonce last byte", s, path, flip(HeaderSize - 1), ErrAuth, "authentication failed"},
		{"ciphertext", s, path, flip(HeaderSize + secretbox16 + 3), ErrAuth, "authentication failed"},
		{"tag", s, path, flip(HeaderSize), ErrAuth, "authentication failed"},
		{"last byte", s, path, flip(len(sealed) - 1), ErrAuth, "authentication failed"},
		{"appended byte", s, path, append(bytes.Clone(sealed), 0), ErrAuth, "authentication failed"},
		{"transplanted", s, "acme/ca/users/other/other.key", sealed, ErrAuth, "sealed for another path"},
		{"path prefix", s, "acme/ca/users/me/me.ke", sealed, ErrAuth, "authentication failed"},
		{"wrong key", mustSealer(t, testKey(2)), path, sealed, ErrUnknownKey, "no configured key has id " + KeyIDOf(key).String()},
		{"plaintext", s, path, pt, ErrNotSealed, "not sealed"},
		{"empty", s, path, nil, ErrNotSealed, "not sealed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.sealer.Open(tt.path, tt.value)
			if err == nil {
				t.Fatalf("Open succeeded with %q", got)
			}
			if got != nil {
				t.Fatal("Open returned bytes with an error")
			}
			checkErr(t, err, tt.kind, tt.path)
			if !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("error %q does not contain %q", err, tt.text)
			}
		})
	}
}

// secretbox16 is the size of the Poly1305 tag that precedes the ciphertext.
const secretbox16 = 16

func checkErr(t *testing.T, err, kind error, path string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %q is not %v", err, kind)
	}
	var se *Error
	if !errors.As(err, &se) || se.Path != path {
		t.Fatalf("error %q does not name path %q", err, path)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("%q", path)) {
		t.Fatalf("error text %q does not name path %q", err, path)
	}
	for _, k := range []byte{1, 2} {
		if strings.Contains(err.Error(), string(testKey(k))) || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(testKey(k))) {
			t.Fatal("error contains key material")
		}
	}
}

func TestTruncateEveryLength(t *testing.T) {
	s := mustSealer(t, testKey(1))
	sealed, err := s.Seal("p.key", []byte("some private key bytes"))
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(sealed); n++ {
		got, err := s.Open("p.key", sealed[:n])
		if err == nil || got != nil {
			t.Fatalf("Open of %d of %d bytes: got %q, %v; want an error", n, len(sealed), got, err)
		}
		want := ErrMalformed
		switch {
		case n == 0:
			want = ErrNotSealed
		case n >= Overhead:
			want = ErrAuth
		}
		checkErr(t, err, want, "p.key")
	}
}

func TestRotation(t *testing.T) {
	oldKey, newKey := testKey(1), testKey(2)
	old := mustSealer(t, oldKey)
	sealedOld, _ := old.Seal("a.key", []byte("v1"))

	rotated := mustSealer(t, newKey, oldKey)
	if rotated.KeyID() != KeyIDOf(newKey) {
		t.Fatal("the first key does not seal")
	}
	got, err := rotated.Open("a.key", sealedOld)
	if err != nil || string(got) != "v1" {
		t.Fatalf("old value under rotated sealer: %q, %v", got, err)
	}
	sealedNew, _ := rotated.Seal("a.key", got)
	if id, _ := EnvelopeKeyID(sealedNew); id != KeyIDOf(newKey) {
		t.Fatalf("resealed under %s, want %s", id, KeyIDOf(newKey))
	}
	if _, err := old.Open("a.key", sealedNew); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old key alone opened a value sealed under the new key: %v", err)
	}
	if ids := rotated.KeyIDs(); len(ids) != 2 || ids[0] != KeyIDOf(newKey) || ids[1] != KeyIDOf(oldKey) {
		t.Fatalf("KeyIDs = %v", ids)
	}
}

func TestNewSealerErrors(t *testing.T) {
	tests := []struct {
		name string
		keys [][]byte
		want string
	}{
		{"none", nil, "no keys"},
		{"short", [][]byte{testKey(1)[:31]}, "key 0 is 31 bytes; a key must be exactly 32 bytes"},
		{"long", [][]byte{testKey(1), append(testKey(2), 0)}, "key 1 is 33 bytes"},
		{"duplicate", [][]byte{testKey(1), testKey(1)}, "key 1 (id " + KeyIDOf(testKey(1)).String() + ") is given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewSealer(tt.keys...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestIsSealed(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"", false},
		{"\x89", true},
		{"\x89D", true},
		{"\x89DC", true},
		{"\x89DCS", true},
		{"\x89DCS\x01rest", true},
		{"\x89X", false},
		{"-----BEGIN PRIVATE KEY-----", false},
		{"{}", false},
		{"\x30\x82", false},
	}
	for _, tt := range tests {
		if got := IsSealed([]byte(tt.in)); got != tt.want {
			t.Errorf("IsSealed(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParseKey(t *testing.T) {
	raw := make([]byte, KeySize)
	for i := range raw {
		raw[i] = byte(0xF0 + i%16) // gives '+' and '/' in standard base64
	}
	tests := []struct {
		name, in, err string
	}{
		{"standard", base64.StdEncoding.EncodeToString(raw), ""},
		{"standard raw", base64.RawStdEncoding.EncodeToString(raw), ""},
		{"url", base64.URLEncoding.EncodeToString(raw), ""},
		{"url raw", base64.RawURLEncoding.EncodeToString(raw), ""},
		{"white space", "  " + base64.StdEncoding.EncodeToString(raw) + "\n", ""},
		{"empty", " ", "key is empty"},
		{"not base64", "not a key!", "not valid base64"},
		{"short", base64.StdEncoding.EncodeToString(raw[:16]), "decodes to 16 bytes, want exactly 32"},
		{"long", base64.StdEncoding.EncodeToString(append(raw, 1)), "decodes to 33 bytes, want exactly 32"},
		{"hex", hex.EncodeToString(raw), "looks like hex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKey(tt.in)
			if tt.err == "" {
				if err != nil || !bytes.Equal(got, raw) {
					t.Fatalf("ParseKey = %x, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want %q", err, tt.err)
			}
			if in := strings.TrimSpace(tt.in); in != "" && strings.Contains(err.Error(), in) {
				t.Fatal("error repeats the key")
			}
		})
	}
}

func TestGenerateKey(t *testing.T) {
	a, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := GenerateKey()
	if len(a) != KeySize || bytes.Equal(a, b) {
		t.Fatal("GenerateKey is not 32 random bytes")
	}
	back, err := ParseKey(EncodeKey(a))
	if err != nil || !bytes.Equal(back, a) {
		t.Fatal("EncodeKey does not round-trip through ParseKey")
	}
}

func TestSealerPrintsNoKey(t *testing.T) {
	key := testKey(0x41) // "AAAA..." in ASCII, easy to spot
	s := mustSealer(t, key)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q"} {
		for _, v := range []any{s, *s} {
			out := fmt.Sprintf(verb, v)
			if !strings.Contains(out, s.KeyID().String()) {
				t.Errorf("%s: %q does not name the key id", verb, out)
			}
			for _, secret := range []string{string(key), hex.EncodeToString(key), fmt.Sprint(key), base64.StdEncoding.EncodeToString(key)} {
				if strings.Contains(out, secret) {
					t.Errorf("%s prints key material: %q", verb, out)
				}
			}
		}
	}
}
