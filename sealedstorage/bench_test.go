package sealedstorage

import (
	"context"
	"fmt"
	"testing"

	"github.com/caddyserver/certmagic"
)

// BenchmarkStoreLoad stores and loads one private key through the sealed
// storage and through the raw FileStorage it wraps, both on t.TempDir().
func BenchmarkStoreLoad(b *testing.B) {
	ctx := context.Background()
	const key = "certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.key"
	for _, n := range []int{256, 4096} {
		value := make([]byte, n)
		for _, impl := range []string{"file", "sealed"} {
			b.Run(fmt.Sprintf("%s/%dB", impl, n), func(b *testing.B) {
				var st certmagic.Storage = &certmagic.FileStorage{Path: b.TempDir()}
				if impl == "sealed" {
					st = mustNew(b, st, Config{}).CertMagic()
				}
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					if err := st.Store(ctx, key, value); err != nil {
						b.Fatal(err)
					}
					if _, err := st.Load(ctx, key); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
