package bundle

import (
	"strings"
	"testing"
)

func TestScanPEM(t *testing.T) {
	p := pki(t)
	leaf, key := p.ecLeaf.pem, p.ecLeaf.keyPEM
	tests := []struct {
		name   string
		in     string
		blocks int
		broken int
	}{
		{"empty", "", 0, 0},
		{"text only", "hello\nworld\n", 0, 0},
		{"one block", leaf, 1, 0},
		{"two blocks with text", "a\n" + leaf + "b\n" + key + "c", 2, 0},
		{"crlf", crlf(leaf + key), 2, 0},
		{"no newline between blocks", strings.TrimSuffix(leaf, "\n") + key, 2, 0},
		{"begin without end", leaf + "-----BEGIN CERTIFICATE-----\nAAAA\n", 1, 2},
		{"end without begin", "AAAA\n-----END CERTIFICATE-----\n" + leaf, 0, 1},
		{"end after a block", leaf + "AAAA\n-----END CERTIFICATE-----\n", 1, 2},
		{"begin without space", "-----BEGINCERTIFICATE-----\n", 0, 1},
		{"bad base64", "-----BEGIN X-----\n@@@@\n-----END X-----\n", 0, 1},
		{"truncated", leaf[:len(leaf)-10], 0, 1},
		{"empty block", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := scanPEM(tt.in)
			if len(sc.blocks) != tt.blocks || sc.broken != tt.broken {
				t.Errorf("scanPEM() = %d blocks, broken %d; want %d, %d", len(sc.blocks), sc.broken, tt.blocks, tt.broken)
			}
		})
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                    "plain",
		"tab\there\x00":            "tabhere",
		"-----BEGIN X-----":        "-BEGIN X-",
		"----------":               "--",
		strings.Repeat("a", 70):    strings.Repeat("a", 64) + "...",
		"caf\u00e9 \u202e reverse": "caf\u00e9  reverse",
	} {
		if got := clean(in, 64); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}
