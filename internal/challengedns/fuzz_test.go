package challengedns

import (
	"context"
	"net"
	"testing"

	"github.com/miekg/dns"
)

// fuzzWriter is a dns.ResponseWriter that keeps the message written.
type fuzzWriter struct {
	udp bool
	msg *dns.Msg
}

func (w *fuzzWriter) LocalAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *fuzzWriter) RemoteAddr() net.Addr {
	if w.udp {
		return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
}
func (w *fuzzWriter) WriteMsg(m *dns.Msg) error   { w.msg = m; return nil }
func (w *fuzzWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *fuzzWriter) Close() error                { return nil }
func (w *fuzzWriter) TsigStatus() error           { return nil }
func (w *fuzzWriter) TsigTimersOnly(bool)         {}
func (w *fuzzWriter) Hijack()                     {}

func pack(tb testing.TB, name string, qtype uint16, edns bool) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	b, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzServe feeds arbitrary bytes to the handler as a DNS packet, as the
// miekg/dns server would, over UDP and TCP. The handler must not panic, and
// its answer must pack and fit the UDP size.
func FuzzServe(f *testing.F) {
	txt, _ := newStore(f)
	ctx := context.Background()
	for _, v := range []string{"v1", "v2"} {
		if err := txt.Add(ctx, "k1.acme.example.net", v); err != nil {
			f.Fatal(err)
		}
	}
	s := &Server{Zones: []string{"acme.example.net"}, TXT: txt}
	cfg, err := s.newConfig()
	if err != nil {
		f.Fatal(err)
	}
	s.cfg.Store(cfg)

	f.Add(pack(f, "k1.acme.example.net.", dns.TypeTXT, false), true)
	f.Add(pack(f, "K1.ACME.example.net.", dns.TypeTXT, true), false)
	f.Add(pack(f, "acme.example.net.", dns.TypeANY, true), true)
	f.Add(pack(f, "nope.acme.example.net.", dns.TypeA, false), true)
	f.Add(pack(f, "example.com.", dns.TypeTXT, false), true)
	f.Add(pack(f, `a\000b.acme.example.net.`, dns.TypeTXT, false), true)
	f.Add([]byte{}, true)
	f.Add([]byte("\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x01"), true)

	f.Fuzz(func(t *testing.T, data []byte, udp bool) {
		req := new(dns.Msg)
		if err := req.Unpack(data); err != nil {
			return // the miekg/dns server drops or FORMERRs these itself
		}
		w := &fuzzWriter{udp: udp}
		s.ServeDNS(w, req)
		if w.msg == nil {
			return
		}
		out, err := w.msg.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, w.msg)
		}
		limit := dns.MaxMsgSize
		if udp {
			limit = dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				limit = max(limit, min(int(opt.UDPSize()), ednsSize))
			}
		}
		if len(out) > limit {
			t.Fatalf("answer of %d bytes exceeds %d", len(out), limit)
		}
	})
}
