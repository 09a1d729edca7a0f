package bundle

import (
	"bytes"
	"encoding/pem"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

const (
	pemBegin = "-----BEGIN"
	pemEnd   = "-----END"
)

// pemScan is a certificate_pem or private_key_pem value split into its PEM
// blocks. Text before, between and after blocks is ignored unless it looks
// like part of a broken block.
type pemScan struct {
	// blocks are the blocks that decoded, in input order.
	blocks []*pem.Block
	// broken is the 1-based position of the first block that does not
	// decode (a BEGIN line without a matching END line, damaged base64, or
	// an END line without a BEGIN line), or 0 if every block decoded.
	broken int
}

// scanPEM splits s into PEM blocks. CRLF line endings are accepted. Unlike
// a bare loop over pem.Decode, which silently skips a BEGIN line that does
// not decode, it reports such a block as broken. It runs in linear time.
func scanPEM(s string) pemScan {
	data := bytes.ReplaceAll([]byte(s), []byte("\r\n"), []byte("\n"))
	begin, end := []byte(pemBegin), []byte(pemEnd)
	var sc pemScan
	i := bytes.Index(data, begin)
	if i < 0 {
		i = len(data)
	}
	if bytes.Contains(data[:i], end) {
		sc.broken = 1
		return sc
	}
	for i < len(data) {
		// Each segment holds exactly one BEGIN, at its start, so pem.Decode
		// either decodes that block or fails; it cannot skip ahead.
		j := len(data)
		if k := bytes.Index(data[i+len(begin):], begin); k >= 0 {
			j = i + len(begin) + k
		}
		b, rest := pem.Decode(data[i:j])
		if b == nil {
			sc.broken = len(sc.blocks) + 1
			return sc
		}
		sc.blocks = append(sc.blocks, b)
		if bytes.Contains(rest, end) {
			sc.broken = len(sc.blocks) + 1
			return sc
		}
		i = j
	}
	return sc
}

// isKeyType reports whether a PEM block type names a private key.
func isKeyType(t string) bool { return strings.Contains(t, "PRIVATE KEY") }

// isCertType reports whether a PEM block type names a certificate
// (CERTIFICATE, TRUSTED CERTIFICATE, X509 CERTIFICATE, ...), not a request.
func isCertType(t string) bool { return strings.HasSuffix(t, "CERTIFICATE") }

// typeName quotes a PEM block type for a message.
func typeName(t string) string { return strconv.Quote(clean(t, 40)) }

// headerNames lists the header names of b for a message, never the values.
func headerNames(b *pem.Block) string {
	names := make([]string, 0, len(b.Headers))
	for k := range b.Headers {
		names = append(names, clean(k, 32))
	}
	sort.Strings(names)
	if len(names) > 3 {
		names = append(names[:3], "...")
	}
	return strings.Join(names, ", ")
}

// clean makes untrusted text (a subject name, a PEM type, a parser error) safe
// for a message: printable runes only, at most max runes, and no run of five
// dashes, so that it cannot pass for a PEM boundary line.
func clean(s string, max int) string {
	var sb strings.Builder
	n := 0
	for _, r := range s {
		if !unicode.IsPrint(r) {
			continue
		}
		if n == max {
			sb.WriteString("...")
			break
		}
		sb.WriteRune(r)
		n++
	}
	out := sb.String()
	for strings.Contains(out, "-----") {
		out = strings.ReplaceAll(out, "-----", "-")
	}
	return out
}
