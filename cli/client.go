package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// client calls the domaincerts admin API of a running Caddy.
type client struct {
	origin string
	hc     *http.Client
}

// newClient returns a client of the admin endpoint at addr (a Caddy
// network address: host:port, unix/path, ...), as `caddy reload` reaches
// it.
func newClient(addr string) (*client, error) {
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil || na.PortRangeSize() > 1 {
		return nil, fmt.Errorf("invalid admin address %s: %v", addr, err)
	}
	origin := "http://" + na.JoinHostPort(0)
	if na.IsUnixNetwork() || na.IsFdNetwork() {
		origin = "http://127.0.0.1"
	}
	dial := na.JoinHostPort(0)
	if na.IsUnixNetwork() {
		dial, _, _ = strings.Cut(na.Host, "|") // unix socket permission bits
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, na.Network, dial)
		},
		MaxIdleConnsPerHost: 64,
	}
	return &client{origin: origin, hc: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}, nil
}

// apiError is an error response of the API.
type apiError struct {
	Status  int               `json:"status_code"`
	Code    string            `json:"error_code"`
	Msg     string            `json:"msg"`
	Details map[string]string `json:"details"`
}

func (e *apiError) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Msg) }

// errUnreachable wraps a failure to reach the admin endpoint.
type errUnreachable struct{ err error }

func (e errUnreachable) Error() string {
	return fmt.Sprintf("cannot reach Caddy's admin endpoint (is Caddy running? is --address right?): %v", e.err)
}
func (e errUnreachable) Unwrap() error { return e.err }

// do sends a request and decodes a JSON response into out (if not nil).
// An error response is an *apiError; a transport failure errUnreachable.
func (c *client) do(ctx context.Context, method, uri string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.origin+uri, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Origin", c.origin)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return errUnreachable{err}
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return errUnreachable{err}
	}
	if res.StatusCode >= 400 {
		e := &apiError{Status: res.StatusCode}
		if json.Unmarshal(raw, e) != nil || e.Code == "" {
			e.Code, e.Msg = "HTTP_"+fmt.Sprint(res.StatusCode), strings.TrimSpace(string(raw))
		}
		return e
	}
	if out == nil || len(raw) == 0 {
		return nil
	}
	return json.Unmarshal(raw, out)
}

// object is an API object, decoded loosely.
type object = map[string]any

// list fetches every page of a list.
func (c *client) list(ctx context.Context, collection, query string) ([]object, error) {
	uri := "/domaincerts/" + collection
	if query != "" {
		uri += "?" + query
	}
	var all []object
	for uri != "" {
		var page map[string]json.RawMessage
		if err := c.do(ctx, "GET", uri, nil, &page); err != nil {
			return nil, err
		}
		var items []object
		if err := json.Unmarshal(page[collection], &items); err != nil {
			return nil, fmt.Errorf("decoding %s: %w", collection, err)
		}
		all = append(all, items...)
		var next *string
		_ = json.Unmarshal(page["next_page_uri"], &next)
		uri = ""
		if next != nil {
			uri = *next
		}
	}
	return all, nil
}

// domainByName returns the domain with that name, or nil.
func (c *client) domainByName(ctx context.Context, name string) (object, error) {
	items, err := c.list(ctx, "domains", "domain="+url.QueryEscape(name))
	if err != nil || len(items) == 0 {
		return nil, err
	}
	return items[0], nil
}

// resolveDomain finds a domain by ID (rd_...) or name.
func (c *client) resolveDomain(ctx context.Context, ref string) (object, error) {
	if strings.HasPrefix(ref, "rd_") {
		var d object
		err := c.do(ctx, "GET", "/domaincerts/domains/"+url.PathEscape(ref), nil, &d)
		return d, err
	}
	d, err := c.domainByName(ctx, ref)
	if err == nil && d == nil {
		err = &apiError{Status: http.StatusNotFound, Code: "NOT_FOUND", Msg: fmt.Sprintf("no domain named %q", ref)}
	}
	return d, err
}

func str(o object, key string) string {
	s, _ := o[key].(string)
	return s
}

// isCode reports whether err is an API error with that code.
func isCode(err error, code string) bool {
	var e *apiError
	return errors.As(err, &e) && e.Code == code
}
