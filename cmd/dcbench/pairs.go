package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// writePairs writes o.n certificate/key pairs for d<i>.import.test into
// o.writePairs/<i/1000>/, a certificate chain (<name>.crt) and its key
// (<name>.key) each: a directory for `caddy domaincerts import`.
func writePairs(ctx context.Context, o *options, out io.Writer) error {
	if len(o.keys) != 1 {
		return fmt.Errorf("-write-pairs needs -key ecdsa or -key rsa")
	}
	start := time.Now()
	ca, err := newAuthority()
	if err != nil {
		return err
	}
	is, err := newIssuer(ctx, ca, o.keys[0])
	if err != nil {
		return err
	}
	err = parallel(ctx, o.n, func(i int) error {
		name := fmt.Sprintf("d%07d.import.test", i)
		s, err := is.issue(name, i)
		if err != nil {
			return err
		}
		dir := filepath.Join(o.writePairs, strconv.Itoa(i/1000))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name+".crt"), s.chainPEM, 0o600); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name+".key"), s.keyPEM, 0o600)
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %d %s certificate/key pairs into %s in %s\n", o.n, o.keys[0], o.writePairs, time.Since(start).Round(time.Millisecond))
	return nil
}
