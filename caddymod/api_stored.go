package caddymod

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// storedCertificateView describes a certificate that CertMagic manages in
// Caddy's storage (a Caddy that served the name before domaincerts, or the
// tls app's own automation), for `caddy domaincerts import --from-storage`:
// a managed domain with this authority and key type serves it as it is,
// with no new order. Where it lies in storage is not shown.
type storedCertificateView struct {
	Domain           string    `json:"domain"`
	Authority        *string   `json:"authority"`
	PrivateKeyType   string    `json:"private_key_type"`
	NotAfter         time.Time `json:"not_after"`
	SerialNumber     string    `json:"serial_number"`
	IssuerCommonName string    `json:"issuer_common_name"`
	DomainID         *string   `json:"domain_id"`
}

// authorityOf maps the issuer keys of the app's authorities to their
// names.
func (h *handler) authorityOf() map[string]string {
	out := make(map[string]string, len(h.issuers))
	for name, iss := range h.issuers {
		if key := issuerKey(iss); key != "" {
			out[key] = name
		}
	}
	return out
}

// storedCertificate reads the certificate CertMagic keeps at key,
// certificates/<issuer key>/<safe name>/<safe name>.crt; ok is false
// for anything else, or a certificate gone or unreadable.
func (h *handler) storedCertificate(ctx context.Context, key string, authorityOf map[string]string) (storedCertificateView, bool, error) {
	parts := strings.Split(key, "/")
	if len(parts) != 4 || parts[0] != "certificates" || parts[3] != parts[2]+".crt" {
		return storedCertificateView{}, false, nil
	}
	b, err := h.store.Storage().Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return storedCertificateView{}, false, nil // none, or deleted meanwhile
	}
	if err != nil {
		return storedCertificateView{}, false, &dcerr.Error{Code: dcerr.StorageUnavailable, Msg: "the storage failed while reading its certificates; retry later", Err: err}
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return storedCertificateView{}, false, nil
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return storedCertificateView{}, false, nil
	}
	name := ""
	for _, n := range leaf.DNSNames {
		if certmagic.StorageKeys.Safe(n) == parts[2] {
			name = n
			break
		}
	}
	if name == "" {
		return storedCertificateView{}, false, nil
	}
	v := storedCertificateView{
		Domain: name, PrivateKeyType: bundle.KeyType(leaf.PublicKey), NotAfter: leaf.NotAfter.UTC(),
		SerialNumber: strings.ToLower(leaf.SerialNumber.Text(16)), IssuerCommonName: leaf.Issuer.CommonName,
	}
	if a, ok := authorityOf[parts[1]]; ok {
		v.Authority = &a
	}
	if id, ok := h.store.DomainID(name); ok {
		v.DomainID = &id
	}
	return v, true, nil
}

// listStoredCertificates answers GET /domaincerts/stored_certificates on
// the admin endpoint: the certificates CertMagic keeps in storage, by
// name, with the authority of this config whose issuer obtained each (null
// when none does) and the domain that has the name, if any.
func (h *handler) listStoredCertificates(w http.ResponseWriter, r *http.Request) error {
	keys, err := h.store.Storage().List(r.Context(), "certificates", true)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return &dcerr.Error{Code: dcerr.StorageUnavailable, Msg: "the storage failed while listing its certificates; retry later", Err: err}
	}
	authorityOf := h.authorityOf()
	views := []storedCertificateView{}
	for _, k := range keys {
		v, ok, err := h.storedCertificate(r.Context(), k, authorityOf)
		if err != nil {
			return err
		}
		if ok {
			views = append(views, v)
		}
	}
	slices.SortFunc(views, func(a, b storedCertificateView) int {
		if c := strings.Compare(a.Domain, b.Domain); c != 0 {
			return c
		}
		return b.NotAfter.Compare(a.NotAfter)
	})
	writeJSON(w, http.StatusOK, map[string]any{"stored_certificates": views, "uri": path.Join(h.door.base, "stored_certificates")})
	return nil
}

// adoptStoredCertificate answers POST /domaincerts/stored_certificates
// {"domain": <name>} on the admin endpoint: it creates a managed domain
// for the name with the authority and key type of the latest unexpired
// certificate CertMagic keeps for it, which the domain adopts as its own:
// it is served as it is, with no new order, and renewed as before.
func (h *handler) adoptStoredCertificate(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Domain string `json:"domain"`
	}
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	name, err := domainstore.NormalizeDomain(req.Domain)
	if err != nil {
		return err
	}
	// the name's certificate under each authority's issuer, the latest
	// unexpired one with a key a policy can ask for
	authorityOf := h.authorityOf()
	var pick *storedCertificateView
	for key := range authorityOf {
		v, ok, err := h.storedCertificate(r.Context(), certmagic.StorageKeys.SiteCert(key, name), authorityOf)
		if err != nil {
			return err
		}
		if ok && v.Domain == name && time.Now().Before(v.NotAfter) && (v.PrivateKeyType == "ecdsa" || v.PrivateKeyType == "rsa") &&
			(pick == nil || v.NotAfter.After(pick.NotAfter)) {
			pick = &v
		}
	}
	if pick == nil {
		return dcerr.New(dcerr.NotFound,
			"no unexpired certificate for %s in Caddy's storage was issued by an authority of this config (with an ecdsa or rsa key); list them with GET /domaincerts/stored_certificates", name)
	}
	d, err := h.store.CreateDomain(r.Context(), domainstore.DomainInput{
		Domain:      name,
		Policy:      &domainstore.Policy{Authority: *pick.Authority, PrivateKeyType: pick.PrivateKeyType},
		AdoptSerial: pick.SerialNumber,
	})
	if err != nil {
		return err
	}
	emitDomain("domain_created", d)
	writeJSON(w, http.StatusCreated, h.viewDomain(d))
	return nil
}

// issuerKey returns the key under which CertMagic stores the certificates
// of iss. Caddy's ACME issuer answers IssuerKey only once the tls app has
// configured it, so its key is derived from its CA as CertMagic does.
func issuerKey(iss certmagic.Issuer) (key string) {
	if acme, ok := iss.(*caddytls.ACMEIssuer); ok {
		ca := acme.CA
		if ca == "" {
			ca = certmagic.DefaultACME.CA
		}
		return (&certmagic.ACMEIssuer{CA: ca}).IssuerKey()
	}
	defer func() {
		if recover() != nil {
			key = "" // an issuer not ready to say: its certificates stay unmatched
		}
	}()
	return iss.IssuerKey()
}
