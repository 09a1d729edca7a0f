// Package testdnsprovider is a DNS provider module for the integration
// tests (dns.providers.testresolver): it writes TXT records into the test
// resolver through its control endpoint, as a DNS host's API would.
package testdnsprovider

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/libdns/libdns"
)

func init() {
	caddy.RegisterModule(Provider{})
}

// Provider writes TXT records into the test resolver.
type Provider struct {
	// Endpoint is the test resolver's control URL, e.g.
	// http://127.0.0.1:1234.
	Endpoint string `json:"endpoint"`
}

// CaddyModule returns the Caddy module information.
func (Provider) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "dns.providers.testresolver",
		New: func() caddy.Module { return new(Provider) },
	}
}

// AppendRecords adds TXT records.
func (p *Provider) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	return recs, p.post(ctx, "/txt/add", zone, recs)
}

// GetRecords lists nothing: the tests never read records back.
func (p *Provider) GetRecords(context.Context, string) ([]libdns.Record, error) { return nil, nil }

// SetRecords adds TXT records (nothing else is ever set).
func (p *Provider) SetRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	return recs, p.post(ctx, "/txt/add", zone, recs)
}

// DeleteRecords removes TXT records.
func (p *Provider) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	return recs, p.post(ctx, "/txt/remove", zone, recs)
}

func (p *Provider) post(ctx context.Context, path, zone string, recs []libdns.Record) error {
	for _, rec := range recs {
		rr := rec.RR()
		if rr.Type != "TXT" {
			return fmt.Errorf("testresolver writes TXT records only, not %s", rr.Type)
		}
		form := url.Values{"name": {libdns.AbsoluteName(rr.Name, zone)}, "value": {rr.Data}}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(p.Endpoint, "/")+path, strings.NewReader(form.Encode()))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s %s: %s", path, rr.Name, resp.Status)
		}
	}
	return nil
}

// Interface guards
var (
	_ libdns.RecordGetter   = (*Provider)(nil)
	_ libdns.RecordAppender = (*Provider)(nil)
	_ libdns.RecordSetter   = (*Provider)(nil)
	_ libdns.RecordDeleter  = (*Provider)(nil)
)
