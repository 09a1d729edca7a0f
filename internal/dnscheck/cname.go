// Package dnscheck verifies, through recursive resolvers, the DNS records a
// customer must create before domaincerts provisions their domain, and
// builds the unique names those records point to.
//
// It has no Caddy imports; the domainstore calls it before it accepts a
// branded domain for provisioning.
package dnscheck

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Checker verifies DNS records through configured resolvers. The zero value
// uses the system's resolvers. A Checker is safe for concurrent use as long
// as its fields are not changed.
type Checker struct {
	// Resolvers are the recursive resolvers to ask, as "host:port", or
	// "host" for port 53. They are tried in order until one gives a
	// definite answer (NOERROR or NXDOMAIN); a resolver that fails is
	// skipped. Default: the name servers of /etc/resolv.conf, or
	// 127.0.0.1:53 when it lists none.
	Resolvers []string

	// Timeout bounds each query to one resolver, over UDP and again over
	// TCP when the UDP answer was truncated. Default: 5s.
	Timeout time.Duration
}

// Error reports a DNS record that is missing or wrong, or a lookup that
// failed. Its message tells the customer which record to create.
type Error struct {
	// Name is the name that was checked, lowercased without trailing dot.
	Name string
	// Want is the CNAME target it must have.
	Want string
	// Found is the CNAME target it has instead; empty when it has none or
	// the lookup failed.
	Found string
	// Temporary is true when no resolver gave a definite answer
	// (timeouts, network errors, SERVFAIL, REFUSED and the like): the
	// lookup failed on the operator's side, says nothing about the
	// customer's records, and is retried rather than reported to the
	// customer.
	Temporary bool
	// Msg is the whole message: for a definite answer it says which
	// record to create, e.g. "create a DNS record: app.customer.com
	// CNAME 3f8k2.cname.example.net (found no CNAME record)"; for a
	// failed lookup it names the resolvers and what each did, e.g.
	// "could not check app.customer.com CNAME 3f8k2.cname.example.net:
	// no resolver answered (timeout from 127.0.0.1:53)".
	Msg string

	err error // the cause, for errors.Is (e.g. context.Canceled)
}

// Error returns e.Msg.
func (e *Error) Error() string { return e.Msg }

// Unwrap returns the cause of a failed lookup, if any.
func (e *Error) Unwrap() error { return e.err }

const (
	defaultTimeout  = 5 * time.Second
	defaultResolver = "127.0.0.1:53"
	resolvConf      = "/etc/resolv.conf"
	ednsSize        = 1232 // the DNS Flag Day 2020 size: no IP fragmentation
)

// CheckCNAME reports nil when name has a CNAME record whose target is
// target; names are compared case-insensitively and trailing dots are
// ignored. Otherwise it returns an *Error that says which record to create
// and what was found instead. The name may be a wildcard such as
// "*.customer.com": it is queried literally, so a DNS wildcard record
// answers it.
func (c *Checker) CheckCNAME(ctx context.Context, name, target string) error {
	e := &Error{Name: normalize(name), Want: normalize(target)}
	qname := dns.Fqdn(e.Name)
	if _, ok := dns.IsDomainName(qname); !ok || e.Name == "" {
		return e.fail("it is not a valid DNS name", nil)
	}

	resp, why, cause := c.ask(ctx, qname, dns.TypeCNAME)
	switch {
	case resp == nil:
		return e.lookupFailed(why, cause)
	case resp.Rcode == dns.RcodeNameError:
		return e.fail("found no CNAME record; "+e.Name+" does not exist", nil)
	}
	for _, rr := range resp.Answer {
		cn, ok := rr.(*dns.CNAME)
		if !ok || !strings.EqualFold(cn.Hdr.Name, qname) {
			continue
		}
		found := normalize(cn.Target)
		if found == e.Want {
			return nil
		}
		e.Found = found
		return e.fail("found CNAME to "+found, nil)
	}
	return e.fail("found no CNAME record", nil)
}

// ask sends the query to the resolvers in turn and returns the first
// definite answer (NOERROR or NXDOMAIN). Without one it returns nil, why
// (what each resolver did, or the context's end) and the cause.
func (c *Checker) ask(ctx context.Context, qname string, qtype uint16) (*dns.Msg, string, error) {
	var failures []string
	var cause error
	for _, addr := range c.resolvers() {
		if err := ctx.Err(); err != nil {
			return nil, err.Error(), err
		}
		resp, err := c.query(ctx, addr, qname, qtype)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, ctxErr.Error(), ctxErr
			}
			cause = err
			failures = append(failures, describe(err, addr))
			continue
		}
		if resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError {
			return resp, "", nil
		}
		failures = append(failures, rcodeString(resp.Rcode)+" from "+addr)
	}
	return nil, "no resolver answered (" + strings.Join(failures, "; ") + ")", cause
}

// fail completes e, a definite answer that shows the record missing or
// wrong, with its message and returns it.
func (e *Error) fail(found string, cause error) *Error {
	e.err = cause
	e.Msg = "create a DNS record: " + e.Name + " CNAME " + e.Want + " (" + found + ")"
	return e
}

// lookupFailed completes e, a lookup that got no definite answer, with its
// message and returns it.
func (e *Error) lookupFailed(why string, cause error) *Error {
	e.err = cause
	e.Temporary = true
	e.Msg = "could not check " + e.Name + " CNAME " + e.Want + ": " + why
	return e
}

// rcodeString names a response code, also one miekg/dns has no name for.
func rcodeString(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return "RCODE " + strconv.Itoa(rcode)
}

// query asks addr for the records of type qtype of qname over UDP, and
// over TCP when the UDP answer is truncated.
func (c *Checker) query(ctx context.Context, addr, qname string, qtype uint16) (*dns.Msg, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	req := new(dns.Msg)
	req.SetQuestion(qname, qtype)
	req.SetEdns0(ednsSize, false)

	var resp *dns.Msg
	for _, network := range []string{"udp", "tcp"} {
		qctx, cancel := context.WithTimeout(ctx, timeout)
		cl := &dns.Client{Net: network, Timeout: timeout, UDPSize: ednsSize}
		var err error
		resp, _, err = cl.ExchangeContext(qctx, req, addr)
		cancel()
		if err != nil {
			return nil, err
		}
		if !resp.Truncated {
			break
		}
	}
	if resp.Truncated {
		return nil, errTruncated
	}
	if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, qname) ||
		resp.Question[0].Qtype != qtype {
		return nil, errMismatch
	}
	return resp, nil
}

var (
	errTruncated = errors.New("truncated answer over TCP")
	errMismatch  = errors.New("answer for another question")
)

// describe turns a query error into a short phrase naming the resolver.
func describe(err error, addr string) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout from " + addr
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused by " + addr
	case errors.Is(err, errTruncated), errors.Is(err, errMismatch):
		return err.Error() + " from " + addr
	}
	return "querying " + addr + ": " + err.Error()
}

// resolvers returns the resolver addresses to try, each with a port.
func (c *Checker) resolvers() []string {
	list := c.Resolvers
	port := "53"
	if len(list) == 0 {
		if conf, err := dns.ClientConfigFromFile(resolvConf); err == nil && len(conf.Servers) > 0 {
			list, port = conf.Servers, conf.Port
		} else {
			return []string{defaultResolver}
		}
	}
	addrs := make([]string, 0, len(list))
	for _, r := range list {
		addrs = append(addrs, withPort(r, port))
	}
	return addrs
}

// withPort returns addr with port added when it has none. It accepts
// "host", "host:port", "[v6]", "[v6]:port" and a bare IPv6 address.
func withPort(addr, port string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), port)
}
