package challengedns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// Server is an authoritative DNS server for the challenge zones. It answers
// TXT queries from a TXTStore, so every instance that shares the storage
// answers alike, and SOA and NS queries at each zone's apex. It answers
// REFUSED for names outside its zones and never recurses.
//
// Configure the fields, then call Start; do not change them while the
// server runs. A Server can be started again after Stop.
type Server struct {
	// Zones are the zones the server is authoritative for, e.g.
	// "acme.example.net". It answers for names at or below them. Required.
	Zones []string

	// NS is the host name of this name server, for the SOA and NS records
	// at the apex. Default: "ns1.<first zone>".
	NS string

	// TXT holds the TXT values to serve. Required.
	TXT *TXTStore

	// TTL of every answer, in seconds; also the SOA minimum, so NXDOMAIN
	// and NODATA answers are cached no longer. Default: 30.
	TTL uint32

	// Logger receives storage errors met while answering. Default: none.
	Logger *zap.Logger

	mu     sync.Mutex // guards udp, tcp, cancel
	udp    *dns.Server
	tcp    *dns.Server
	cancel context.CancelFunc

	cfg atomic.Pointer[serverConfig] // set by Start, read by ServeDNS
}

// serverConfig is the normalized configuration a running Server answers
// with.
type serverConfig struct {
	zones  []string // lowercase, with trailing dot
	ns     string   // lowercase, with trailing dot
	ttl    uint32
	txt    *TXTStore
	logger *zap.Logger
	ctx    context.Context // canceled by Stop
}

const (
	defaultTTL   = 30
	ednsSize     = 1232            // advertised EDNS(0) UDP payload size
	queryTimeout = 5 * time.Second // storage budget of one query
)

// Start listens on addr over UDP and TCP on the same port and serves until
// Stop. With port 0 ("127.0.0.1:0") it picks a free UDP port and binds TCP
// on the same one. It returns the UDP address once both are ready.
func (s *Server) Start(addr string) (net.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp != nil {
		return nil, errors.New("starting challenge DNS server: already started")
	}
	cfg, err := s.newConfig()
	if err != nil {
		return nil, err
	}
	pc, ln, err := listen(addr)
	if err != nil {
		return nil, fmt.Errorf("starting challenge DNS server: %w", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cfg.ctx = ctx
	s.cfg.Store(cfg)

	started := make(chan struct{}, 2)
	failed := make(chan error, 2)
	notify := func() { started <- struct{}{} }
	udp := &dns.Server{PacketConn: pc, Handler: s, UDPSize: dns.DefaultMsgSize, NotifyStartedFunc: notify}
	tcp := &dns.Server{Listener: ln, Handler: s, NotifyStartedFunc: notify}
	for _, srv := range []*dns.Server{udp, tcp} {
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
			}
		}()
	}
	for range 2 {
		select {
		case <-started:
		case err := <-failed:
			cancel()
			_ = udp.Shutdown()
			_ = tcp.Shutdown()
			pc.Close()
			ln.Close()
			return nil, fmt.Errorf("starting challenge DNS server: %w", err)
		}
	}
	s.udp, s.tcp, s.cancel = udp, tcp, cancel
	return pc.LocalAddr(), nil
}

// Stop stops the server and waits up to five seconds for TCP connections
// to close. Stopping a server that is not running does nothing.
func (s *Server) Stop() error {
	s.mu.Lock()
	udp, tcp, cancel := s.udp, s.tcp, s.cancel
	s.udp, s.tcp, s.cancel = nil, nil, nil
	s.mu.Unlock()
	if udp == nil {
		return nil
	}
	cancel()
	ctx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	return errors.Join(udp.ShutdownContext(ctx), tcp.ShutdownContext(ctx))
}

// listen binds addr over UDP, then TCP on the UDP port.
func listen(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	attempts := 1
	if port == "0" {
		attempts = 20 // the TCP port may be taken; pick another UDP port
	}
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		udpPort := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(udpPort)))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if i+1 >= attempts {
			return nil, nil, err
		}
	}
}

// newConfig validates the fields and returns them normalized.
func (s *Server) newConfig() (*serverConfig, error) {
	if len(s.Zones) == 0 {
		return nil, errors.New("challenge DNS server: no zones configured")
	}
	if s.TXT == nil {
		return nil, errors.New("challenge DNS server: no TXT store configured")
	}
	cfg := &serverConfig{ttl: s.TTL, txt: s.TXT, logger: s.Logger, ctx: context.Background()}
	for _, z := range s.Zones {
		n := normalizeName(z)
		if !validName(n) {
			return nil, fmt.Errorf("challenge DNS server: invalid zone %q", z)
		}
		cfg.zones = append(cfg.zones, n+".")
	}
	cfg.ns = "ns1." + cfg.zones[0]
	if s.NS != "" {
		n := normalizeName(s.NS)
		if !validName(n) {
			return nil, fmt.Errorf("challenge DNS server: invalid name server %q", s.NS)
		}
		cfg.ns = n + "."
	}
	if cfg.ttl == 0 {
		cfg.ttl = defaultTTL
	}
	if cfg.logger == nil {
		cfg.logger = zap.NewNop()
	}
	return cfg, nil
}

// ServeDNS answers one query; it makes Server a dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	if resp := s.respond(req, udp); resp != nil {
		_ = w.WriteMsg(resp)
	}
}

// respond returns the answer to req, or nil when req must not be answered.
func (s *Server) respond(req *dns.Msg, udp bool) *dns.Msg {
	if req == nil || req.Response {
		return nil
	}
	m := new(dns.Msg)
	m.SetReply(req)

	size := dns.MaxMsgSize
	if udp {
		size = dns.MinMsgSize
	}
	if opt := req.IsEdns0(); opt != nil {
		if udp {
			size = min(max(int(opt.UDPSize()), dns.MinMsgSize), ednsSize)
		}
		m.SetEdns0(ednsSize, false)
		if opt.Version() != 0 {
			m.Rcode = dns.RcodeBadVers
			return m
		}
	}
	defer m.Truncate(size)

	cfg := s.cfg.Load()
	switch {
	case cfg == nil:
		m.Rcode = dns.RcodeServerFailure
		return m
	case req.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
		return m
	case len(req.Question) != 1:
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	zone := cfg.zoneOf(name)
	if zone == "" || (q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) ||
		q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		m.Rcode = dns.RcodeRefused
		return m
	}

	apex := name == zone
	var values []string
	exists := apex
	if validName(normalizeName(name)) {
		ctx, cancel := context.WithTimeout(cfg.ctx, queryTimeout)
		defer cancel()
		var found bool
		var err error
		values, found, err = cfg.txt.lookup(ctx, name)
		if err == nil && !found && !apex {
			found, err = cfg.txt.below(ctx, name)
		}
		if err != nil {
			cfg.logger.Error("looking up challenge TXT record",
				zap.String("name", name), zap.Error(err))
			m.Rcode = dns.RcodeServerFailure
			return m
		}
		exists = exists || found
	}

	m.Authoritative = true
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: cfg.ttl}
	}
	if q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY {
		for _, v := range values {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: chunk(v)})
		}
	}
	if apex && (q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY) {
		soa := cfg.soa(zone)
		soa.Hdr.Name = q.Name
		m.Answer = append(m.Answer, soa)
	}
	if apex && (q.Qtype == dns.TypeNS || q.Qtype == dns.TypeANY) {
		m.Answer = append(m.Answer, &dns.NS{Hdr: hdr(dns.TypeNS), Ns: cfg.ns})
	}
	if len(m.Answer) == 0 {
		if !exists {
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = []dns.RR{cfg.soa(zone)}
	}
	return m
}

// zoneOf returns the longest zone that name is at or below, or "".
func (c *serverConfig) zoneOf(name string) string {
	var best string
	for _, z := range c.zones {
		if len(z) > len(best) && dns.IsSubDomain(z, name) {
			best = z
		}
	}
	return best
}

// soa returns the SOA record of zone. The serial is fixed: there are no
// secondaries to notify, and instances sharing the storage agree on it.
func (c *serverConfig) soa(zone string) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: c.ttl},
		Ns:      c.ns,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  c.ttl,
	}
}

// chunk splits v into the 255-byte character strings of a TXT record,
// escaping backslashes, which miekg/dns reads as the start of an escape.
func chunk(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, strings.ReplaceAll(v[:255], `\`, `\\`))
		v = v[255:]
	}
	return append(out, strings.ReplaceAll(v, `\`, `\\`))
}
