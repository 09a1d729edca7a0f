package integration

// A test client that behaves as ngrok's official Go API client
// (github.com/ngrok/ngrok-api-go) does on the wire, written from its
// documented behaviour: every request path is absolute and resolved
// against the base URL with URL.ResolveReference; requests carry
// "Authorization: Bearer <key>", "Ngrok-Version: 2" and a JSON body only
// when there is one; a status of 400 or more is decoded into an error whose
// details are a map of strings, and a body that does not decode becomes a
// "failed to unmarshal" error; lists are followed through next_page_uri,
// parsed and resolved like any path; an update puts the id in the path
// and clears arg.ID before sending, so the body has no id. The types carry
// the fields ngrok's client sends and reads, with its omitempty rules.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

type ngrokClient struct {
	base *url.URL
	key  string
	hc   *http.Client
}

// ngrokError is the error type of ngrok's client.
type ngrokError struct {
	ErrorCode  string            `json:"error_code,omitempty"`
	StatusCode int32             `json:"status_code,omitempty"`
	Msg        string            `json:"msg,omitempty"`
	Details    map[string]string `json:"details,omitempty"`
}

func (e *ngrokError) Error() string {
	return fmt.Sprintf("HTTP %d: %s [%s] %v", e.StatusCode, e.Msg, e.ErrorCode, e.Details)
}

type ngrokRef struct {
	ID  string `json:"id,omitempty"`
	URI string `json:"uri,omitempty"`
}

type ngrokCertPolicy struct {
	Authority      string `json:"authority,omitempty"`
	PrivateKeyType string `json:"private_key_type,omitempty"`
}

type ngrokCertJob struct {
	ErrorCode *string `json:"error_code,omitempty"`
	Msg       string  `json:"msg,omitempty"`
	StartedAt string  `json:"started_at,omitempty"`
	RetriesAt *string `json:"retries_at,omitempty"`
}

type ngrokCertStatus struct {
	RenewsAt        *string       `json:"renews_at,omitempty"`
	ProvisioningJob *ngrokCertJob `json:"provisioning_job,omitempty"`
}

type ngrokReservedDomainCreate struct {
	Domain                      string           `json:"domain,omitempty"`
	Region                      string           `json:"region,omitempty"`
	Description                 string           `json:"description,omitempty"`
	Metadata                    string           `json:"metadata,omitempty"`
	CertificateID               *string          `json:"certificate_id,omitempty"`
	CertificateManagementPolicy *ngrokCertPolicy `json:"certificate_management_policy,omitempty"`
	ResolvesTo                  []any            `json:"resolves_to,omitempty"`
}

type ngrokReservedDomainUpdate struct {
	ID                          string           `json:"id,omitempty"`
	Description                 *string          `json:"description,omitempty"`
	Metadata                    *string          `json:"metadata,omitempty"`
	CertificateID               *string          `json:"certificate_id,omitempty"`
	CertificateManagementPolicy *ngrokCertPolicy `json:"certificate_management_policy,omitempty"`
	ResolvesTo                  []any            `json:"resolves_to,omitempty"`
}

type ngrokReservedDomain struct {
	ID                          string           `json:"id,omitempty"`
	URI                         string           `json:"uri,omitempty"`
	CreatedAt                   string           `json:"created_at,omitempty"`
	Description                 string           `json:"description,omitempty"`
	Metadata                    string           `json:"metadata,omitempty"`
	Domain                      string           `json:"domain,omitempty"`
	Region                      string           `json:"region,omitempty"`
	CNAMETarget                 *string          `json:"cname_target,omitempty"`
	Certificate                 *ngrokRef        `json:"certificate,omitempty"`
	CertificateManagementPolicy *ngrokCertPolicy `json:"certificate_management_policy,omitempty"`
	CertificateManagementStatus *ngrokCertStatus `json:"certificate_management_status,omitempty"`
	ACMEChallengeCNAMETarget    *string          `json:"acme_challenge_cname_target,omitempty"`
}

type ngrokReservedDomainList struct {
	ReservedDomains []ngrokReservedDomain `json:"reserved_domains,omitempty"`
	URI             string                `json:"uri,omitempty"`
	NextPageURI     *string               `json:"next_page_uri,omitempty"`
}

type ngrokTLSCertificateCreate struct {
	Description    string `json:"description,omitempty"`
	Metadata       string `json:"metadata,omitempty"`
	CertificatePEM string `json:"certificate_pem,omitempty"`
	PrivateKeyPEM  string `json:"private_key_pem,omitempty"`
}

type ngrokTLSCertificateUpdate struct {
	ID          string  `json:"id,omitempty"`
	Description *string `json:"description,omitempty"`
	Metadata    *string `json:"metadata,omitempty"`
}

type ngrokTLSCertificateSANs struct {
	DNSNames []string `json:"dns_names,omitempty"`
	IPs      []string `json:"ips,omitempty"`
}

type ngrokTLSCertificate struct {
	ID                      string                  `json:"id,omitempty"`
	URI                     string                  `json:"uri,omitempty"`
	CreatedAt               string                  `json:"created_at,omitempty"`
	Description             string                  `json:"description,omitempty"`
	Metadata                string                  `json:"metadata,omitempty"`
	CertificatePEM          string                  `json:"certificate_pem,omitempty"`
	SubjectCommonName       string                  `json:"subject_common_name,omitempty"`
	SubjectAlternativeNames ngrokTLSCertificateSANs `json:"subject_alternative_names,omitempty"`
	IssuedAt                *string                 `json:"issued_at,omitempty"`
	NotBefore               string                  `json:"not_before,omitempty"`
	NotAfter                string                  `json:"not_after,omitempty"`
	KeyUsages               []string                `json:"key_usages,omitempty"`
	ExtendedKeyUsages       []string                `json:"extended_key_usages,omitempty"`
	PrivateKeyType          string                  `json:"private_key_type,omitempty"`
	IssuerCommonName        string                  `json:"issuer_common_name,omitempty"`
	SerialNumber            string                  `json:"serial_number,omitempty"`
}

type ngrokTLSCertificateList struct {
	TLSCertificates []ngrokTLSCertificate `json:"tls_certificates,omitempty"`
	URI             string                `json:"uri,omitempty"`
	NextPageURI     *string               `json:"next_page_uri,omitempty"`
}

// do sends a request as ngrok's BaseClient.Do does.
func (c *ngrokClient) do(ctx context.Context, method string, reqURL *url.URL, reqBody, respBody any) error {
	var body io.Reader
	if reqBody != nil {
		b, err := json.Marshal(reqBody)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.ResolveReference(reqURL).String(), body)
	if err != nil {
		return err
	}
	req.Header.Set("authorization", "Bearer "+c.key)
	req.Header.Set("user-agent", "ngrok-api-go-compatible-test")
	req.Header.Set("ngrok-version", "2")
	if body != nil {
		req.Header.Set("content-type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= http.StatusBadRequest {
		var out ngrokError
		if err := readNgrokBody(resp, &out); err != nil {
			return err
		}
		return &out
	}
	return readNgrokBody(resp, respBody)
}

func readNgrokBody(resp *http.Response, out any) error {
	if out == nil {
		return nil
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		err = json.Unmarshal(b, out)
	}
	if err != nil {
		return &ngrokError{
			Msg:        fmt.Sprintf("failed to unmarshal response body: %s. body: %s", err, b),
			StatusCode: int32(resp.StatusCode),
			Details:    map[string]string{"unmarshal_error": err.Error(), "invalid_body": string(b)},
		}
	}
	return nil
}

func ngrokPath(format string, args ...any) *url.URL {
	return &url.URL{Path: fmt.Sprintf(format, args...)}
}

func (c *ngrokClient) createDomain(ctx context.Context, arg *ngrokReservedDomainCreate) (*ngrokReservedDomain, error) {
	var res ngrokReservedDomain
	return &res, c.do(ctx, "POST", ngrokPath("/reserved_domains"), arg, &res)
}

func (c *ngrokClient) getDomain(ctx context.Context, id string) (*ngrokReservedDomain, error) {
	var res ngrokReservedDomain
	return &res, c.do(ctx, "GET", ngrokPath("/reserved_domains/%s", id), nil, &res)
}

// updateDomain sends arg as ngrok's client does: the id in the path only
// (it sets arg.ID to "" on the caller's value).
func (c *ngrokClient) updateDomain(ctx context.Context, arg *ngrokReservedDomainUpdate) (*ngrokReservedDomain, error) {
	var res ngrokReservedDomain
	path := ngrokPath("/reserved_domains/%s", arg.ID)
	arg.ID = ""
	return &res, c.do(ctx, "PATCH", path, arg, &res)
}

func (c *ngrokClient) deleteDomain(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", ngrokPath("/reserved_domains/%s", id), nil, nil)
}

func (c *ngrokClient) deleteDomainCertificate(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", ngrokPath("/reserved_domains/%s/certificate", id), nil, nil)
}

// listDomains follows every page, as the client's iterator does.
func (c *ngrokClient) listDomains(ctx context.Context, limit, filter *string) ([]ngrokReservedDomain, []string, error) {
	q := url.Values{}
	if limit != nil {
		q.Set("limit", *limit)
	}
	if filter != nil {
		q.Set("filter", *filter)
	}
	next := &url.URL{Path: "/reserved_domains", RawQuery: q.Encode()}
	var all []ngrokReservedDomain
	var pages []string
	for next != nil {
		var page ngrokReservedDomainList
		if err := c.do(ctx, "GET", next, nil, &page); err != nil {
			return nil, nil, err
		}
		all = append(all, page.ReservedDomains...)
		next = nil
		if page.NextPageURI != nil {
			pages = append(pages, *page.NextPageURI)
			u, err := url.Parse(*page.NextPageURI)
			if err != nil {
				return nil, nil, err
			}
			next = u
		}
	}
	return all, pages, nil
}

func (c *ngrokClient) createCertificate(ctx context.Context, arg *ngrokTLSCertificateCreate) (*ngrokTLSCertificate, error) {
	var res ngrokTLSCertificate
	return &res, c.do(ctx, "POST", ngrokPath("/tls_certificates"), arg, &res)
}

func (c *ngrokClient) getCertificate(ctx context.Context, id string) (*ngrokTLSCertificate, error) {
	var res ngrokTLSCertificate
	return &res, c.do(ctx, "GET", ngrokPath("/tls_certificates/%s", id), nil, &res)
}

// updateCertificate sends arg as ngrok's client does: the id in the path
// only (it sets arg.ID to "" on the caller's value).
func (c *ngrokClient) updateCertificate(ctx context.Context, arg *ngrokTLSCertificateUpdate) (*ngrokTLSCertificate, error) {
	var res ngrokTLSCertificate
	path := ngrokPath("/tls_certificates/%s", arg.ID)
	arg.ID = ""
	return &res, c.do(ctx, "PATCH", path, arg, &res)
}

func (c *ngrokClient) deleteCertificate(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", ngrokPath("/tls_certificates/%s", id), nil, nil)
}

// listCertificates follows every page, as the client's iterator does, and
// returns the next_page_uri of each page that had one.
func (c *ngrokClient) listCertificates(ctx context.Context, limit, filter *string) ([]ngrokTLSCertificate, []string, error) {
	q := url.Values{}
	if limit != nil {
		q.Set("limit", *limit)
	}
	if filter != nil {
		q.Set("filter", *filter)
	}
	next := &url.URL{Path: "/tls_certificates", RawQuery: q.Encode()}
	var all []ngrokTLSCertificate
	var pages []string
	for next != nil {
		var page ngrokTLSCertificateList
		if err := c.do(ctx, "GET", next, nil, &page); err != nil {
			return nil, nil, err
		}
		all = append(all, page.TLSCertificates...)
		next = nil
		if page.NextPageURI != nil {
			pages = append(pages, *page.NextPageURI)
			u, err := url.Parse(*page.NextPageURI)
			if err != nil {
				return nil, nil, err
			}
			next = u
		}
	}
	return all, pages, nil
}
