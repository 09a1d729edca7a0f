package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzOpen feeds arbitrary values and paths to Open. It must never panic,
// must fail with one of the four kinds and name the path, and must never
// accept a value that Seal did not produce for that path.
func FuzzOpen(f *testing.F) {
	s := mustSealer(f, testKey(1), testKey(2))
	old := mustSealer(f, testKey(2))
	for _, pt := range []string{"", "x", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n", strings.Repeat("k", 300)} {
		for _, p := range []string{"certificates/a/a.key", "stek/stek.bin", ""} {
			v, _ := s.Seal(p, []byte(pt))
			f.Add(p, v)
			f.Add(p, v[:len(v)/2])
			w, _ := old.Seal(p, []byte(pt))
			f.Add(p, w)
		}
		f.Add("p", []byte(pt))
	}
	f.Add("p", []byte{0x89})
	f.Add("p", []byte("\x89DCS\x02"))
	f.Add("p", append([]byte("\x89DCS\x01"), make([]byte, Overhead)...))

	f.Fuzz(func(t *testing.T, path string, value []byte) {
		got, err := s.Open(path, value)
		if err != nil {
			if got != nil {
				t.Fatal("bytes returned with an error")
			}
			var se *Error
			if !errors.As(err, &se) || se.Path != path {
				t.Fatalf("error %q is not an *Error for the path", err)
			}
			kinds := 0
			for _, k := range []error{ErrNotSealed, ErrUnknownKey, ErrAuth, ErrMalformed} {
				if errors.Is(err, k) {
					kinds++
				}
			}
			if kinds != 1 {
				t.Fatalf("error %q matches %d kinds", err, kinds)
			}
			if !IsSealed(value) && !errors.Is(err, ErrNotSealed) {
				t.Fatalf("unsealed value gave %v", err)
			}
			return
		}
		// Success is only possible for an authentic envelope: reseal the
		// plaintext and check it opens to the same, and that the value has
		// exactly the expected size.
		if int64(len(got)) != PlaintextSize(int64(len(value))) {
			t.Fatalf("plaintext %d bytes from a %d-byte value", len(got), len(value))
		}
		again, err := s.Seal(path, got)
		if err != nil {
			t.Fatal(err)
		}
		back, err := s.Open(path, again)
		if err != nil || !bytes.Equal(back, got) {
			t.Fatal("reseal round trip failed")
		}
	})
}
