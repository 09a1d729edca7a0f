package challengedns

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// Solver solves DNS-01 challenges by writing the TXT record into a
// TXTStore, at the name Target chooses, for the built-in Server to answer.
// The customer's "_acme-challenge.<base>" must be a CNAME to that name.
//
// The store is shared storage, so the value is visible to every instance at
// once: Solver needs no propagation wait.
type Solver struct {
	// TXT is where the TXT values are written. Required.
	TXT *TXTStore

	// Target returns the fully-qualified name that holds the TXT record for
	// identifier, the challenge's Identifier.Value. For the authorization
	// of a wildcard "*.customer.com", ACME gives the base name
	// "customer.com" (RFC 8555 §7.1.3), the same as for "customer.com"
	// itself; both values then coexist at one name. Required.
	Target func(identifier string) (fqdn string, err error)
}

// Present writes the challenge's key authorization digest at the target.
func (s *Solver) Present(ctx context.Context, chal acme.Challenge) error {
	fqdn, err := target(s.Target, chal)
	if err != nil {
		return err
	}
	if err := s.TXT.Add(ctx, fqdn, chal.DNS01KeyAuthorization()); err != nil {
		return fmt.Errorf("presenting dns-01 challenge for %s: %w", chal.Identifier.Value, err)
	}
	return nil
}

// CleanUp removes what Present wrote. It runs even when ctx is already
// canceled, since a canceled order is a common reason for cleaning up.
func (s *Solver) CleanUp(ctx context.Context, chal acme.Challenge) error {
	fqdn, err := target(s.Target, chal)
	if err != nil {
		return err
	}
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	if err := s.TXT.Remove(ctx, fqdn, chal.DNS01KeyAuthorization()); err != nil {
		return fmt.Errorf("cleaning up dns-01 challenge for %s: %w", chal.Identifier.Value, err)
	}
	return nil
}

// target returns the checked target name for chal.
func target(fn func(string) (string, error), chal acme.Challenge) (string, error) {
	if chal.Type != acme.ChallengeTypeDNS01 {
		return "", fmt.Errorf("solving %s challenge: only dns-01 is supported", chal.Type)
	}
	if fn == nil {
		return "", errors.New("no target configured for dns-01 challenges")
	}
	fqdn, err := fn(chal.Identifier.Value)
	if err != nil {
		return "", fmt.Errorf("choosing dns-01 target for %s: %w", chal.Identifier.Value, err)
	}
	if !validName(normalizeName(fqdn)) {
		return "", fmt.Errorf("choosing dns-01 target for %s: invalid name %q", chal.Identifier.Value, fqdn)
	}
	return fqdn, nil
}

// cleanupContext returns a context that outlives ctx's cancellation, with
// a bound of its own.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
}

// Interface guard
var _ acmez.Solver = (*Solver)(nil)
