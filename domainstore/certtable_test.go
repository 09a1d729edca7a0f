package domainstore

import "testing"

func TestCertTable(t *testing.T) {
	valid := newID(CertificatePrefix)
	other := newID(CertificatePrefix)
	for _, tc := range []struct {
		name  string
		id    string
		keyed bool // kept in the pointer-free map
	}{
		{"a certificate ID", valid, true},
		{"another", other, true},
		{"a domain ID", newID(DomainPrefix), false},
		{"too short", CertificatePrefix + "abc", false},
		{"no prefix", valid[len(CertificatePrefix):], false},
		{"empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := certKeyOf(tc.id); ok != tc.keyed {
				t.Errorf("certKeyOf(%q) ok = %v, want %v", tc.id, ok, tc.keyed)
			}
			certs := newCertTable(0)
			if _, ok := certs.get(tc.id); ok {
				t.Fatalf("an empty table has %q", tc.id)
			}
			m := certMeta{version: 7, notBefore: 1, notAfter: 2, managed: true}
			certs.set(tc.id, m)
			certs.set(valid+"x", certMeta{version: 9}) // never confused with valid
			if got, ok := certs.get(tc.id); !ok || got != m {
				t.Errorf("get(%q) = %+v, %v; want %+v", tc.id, got, ok, m)
			}
			if certs.len() != 2 {
				t.Errorf("len = %d, want 2", certs.len())
			}
			certs.del(tc.id)
			if _, ok := certs.get(tc.id); ok || certs.len() != 1 {
				t.Errorf("after del: present %v, len %d", ok, certs.len())
			}

			uses := newUseTable(0)
			uses.add(tc.id, 1)
			uses.add(tc.id, 1)
			if n := uses.get(tc.id); n != 2 {
				t.Errorf("uses after two adds = %d, want 2", n)
			}
			uses.add(tc.id, -1)
			uses.add(tc.id, -1)
			if n := uses.get(tc.id); n != 0 || len(uses.m)+len(uses.other) != 0 {
				t.Errorf("uses after removing both = %d (entries %d, %d), want 0 and none kept", n, len(uses.m), len(uses.other))
			}
			uses.add(tc.id, -1) // below zero: forgotten, as before
			if n := uses.get(tc.id); n != 0 {
				t.Errorf("uses after an extra removal = %d, want 0", n)
			}
		})
	}
}
