package seal

import (
	"fmt"
	"testing"
)

var benchSizes = []int{256, 4096}

func BenchmarkSeal(b *testing.B) {
	s := mustSealer(b, testKey(1))
	for _, n := range benchSizes {
		pt := make([]byte, n)
		b.Run(fmt.Sprintf("%dB", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Seal("certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.key", pt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	const path = "certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.key"
	s := mustSealer(b, testKey(1))
	for _, n := range benchSizes {
		sealed, err := s.Seal(path, make([]byte, n))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%dB", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Open(path, sealed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
