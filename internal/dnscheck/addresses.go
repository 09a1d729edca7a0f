package dnscheck

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// CheckAddresses reports nil when name has A or AAAA records of its own
// and every one of them is in edges: a name that cannot be a CNAME (a zone
// apex) is pointed at the edge that way. A name that is a CNAME fails,
// wherever the chain ends: only a CNAME to the domain's own target proves
// that the registrant controls it (a former customer's CNAME to their
// target also reaches edge addresses).
// Otherwise it returns an *Error that says which addresses to use and what
// was found instead (Found is the first address that is not an edge
// address, or empty when there are none). As for CheckCNAME, a lookup that
// no resolver answered definitively is Temporary.
func (c *Checker) CheckAddresses(ctx context.Context, name string, edges []netip.Addr) error {
	e := &Error{Name: normalize(name)}
	qname := dns.Fqdn(e.Name)
	want := make([]string, len(edges))
	for i, a := range edges {
		want[i] = a.String()
	}
	e.Want = strings.Join(want, ", ")
	if _, ok := dns.IsDomainName(qname); !ok || e.Name == "" {
		return e.failAddr("it is not a valid DNS name")
	}
	var found []netip.Addr
	var kinds []string
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		addrs, cname, err := c.lookupAddrs(ctx, e, qname, qtype)
		if err != nil {
			return err
		}
		if cname != "" {
			e.Found = cname
			return e.failAddr("found a CNAME to " + cname + ", which is not this domain's target")
		}
		for _, a := range addrs {
			found = append(found, a)
			kinds = append(kinds, dns.TypeToString[qtype])
		}
	}
	if len(found) == 0 {
		return e.failAddr("found no A or AAAA record")
	}
	for i, a := range found {
		if !slices.Contains(edges, a) {
			e.Found = a.String()
			return e.failAddr("found " + kinds[i] + " " + a.String() + ", which is not an edge address")
		}
	}
	return nil
}

// lookupAddrs returns the addresses of type qtype (A or AAAA) in the
// answer to qname from the first resolver that gives a definite one, or
// the target of qname's CNAME when the answer has one.
func (c *Checker) lookupAddrs(ctx context.Context, e *Error, qname string, qtype uint16) ([]netip.Addr, string, error) {
	resp, why, cause := c.ask(ctx, qname, qtype)
	if resp == nil {
		return nil, "", e.addrLookupFailed(why, cause)
	}
	var out []netip.Addr
	for _, rr := range resp.Answer {
		var ip []byte
		switch rr := rr.(type) {
		case *dns.CNAME:
			if strings.EqualFold(rr.Hdr.Name, qname) {
				return nil, normalize(rr.Target), nil
			}
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
		}
	}
	return out, "", nil // NXDOMAIN: none
}

// failAddr completes e, an answer that shows the addresses missing or
// wrong, with its message and returns it.
func (e *Error) failAddr(found string) *Error {
	e.Msg = "point " + e.Name + " at the edge: give it A/AAAA records with edge addresses only (" + e.Want + ") (" + found + ")"
	return e
}

// addrLookupFailed completes e, an address lookup that got no definite
// answer, with its message and returns it.
func (e *Error) addrLookupFailed(why string, cause error) *Error {
	e.err = cause
	e.Temporary = true
	e.Msg = "could not check the A/AAAA records of " + e.Name + ": " + why
	return e
}
