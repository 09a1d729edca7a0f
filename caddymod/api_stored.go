package caddymod

import (
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

// storedCert is a certificate CertMagic keeps in storage.
type storedCert struct {
	view      storedCertificateView
	issuerKey string
}

// storedCertificates reads the certificates CertMagic keeps in Caddy's
// storage, sorted by name, then latest end first.
func (h *handler) storedCertificates(r *http.Request) ([]storedCert, error) {
	st := h.store.Storage()
	keys, err := st.List(r.Context(), "certificates", true)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, &dcerr.Error{Code: dcerr.StorageUnavailable, Msg: "the storage failed while listing its certificates; retry later", Err: err}
	}
	authorityOf := make(map[string]string) // issuer key -> authority
	for name, iss := range h.issuers {
		if key := issuerKey(iss); key != "" {
			authorityOf[key] = name
		}
	}
	var out []storedCert
	for _, k := range keys {
		// certificates/<issuer key>/<safe name>/<safe name>.crt
		parts := strings.Split(k, "/")
		if len(parts) != 4 || parts[0] != "certificates" || parts[3] != parts[2]+".crt" {
			continue
		}
		b, err := st.Load(r.Context(), k)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, &dcerr.Error{Code: dcerr.StorageUnavailable, Msg: "the storage failed while reading its certificates; retry later", Err: err}
		}
		block, _ := pem.Decode(b)
		if block == nil || block.Type != "CERTIFICATE" {
			continue
		}
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			continue
		}
		name := ""
		for _, n := range leaf.DNSNames {
			if certmagic.StorageKeys.Safe(n) == parts[2] {
				name = n
				break
			}
		}
		if name == "" {
			continue
		}
		v := storedCertificateView{
			Domain: name, PrivateKeyType: domainstore.KeyTypeOf(leaf), NotAfter: leaf.NotAfter.UTC(),
			SerialNumber: strings.ToLower(leaf.SerialNumber.Text(16)), IssuerCommonName: leaf.Issuer.CommonName,
		}
		if a, ok := authorityOf[parts[1]]; ok {
			v.Authority = &a
		}
		if id, ok := h.store.DomainID(name); ok {
			v.DomainID = &id
		}
		out = append(out, storedCert{view: v, issuerKey: parts[1]})
	}
	slices.SortFunc(out, func(a, b storedCert) int {
		if c := strings.Compare(a.view.Domain, b.view.Domain); c != 0 {
			return c
		}
		return b.view.NotAfter.Compare(a.view.NotAfter)
	})
	return out, nil
}

// listStoredCertificates answers GET /domaincerts/stored_certificates on
// the admin endpoint: the certificates CertMagic keeps in storage, by
// name, with the authority of this config whose issuer obtained each (null
// when none does) and the domain that has the name, if any.
func (h *handler) listStoredCertificates(w http.ResponseWriter, r *http.Request) error {
	certs, err := h.storedCertificates(r)
	if err != nil {
		return err
	}
	views := make([]storedCertificateView, len(certs))
	for i, c := range certs {
		views[i] = c.view
	}
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
	certs, err := h.storedCertificates(r)
	if err != nil {
		return err
	}
	var pick *storedCertificateView
	for i := range certs {
		v := &certs[i].view
		if v.Domain == name && v.Authority != nil && time.Now().Before(v.NotAfter) && (v.PrivateKeyType == "ecdsa" || v.PrivateKeyType == "rsa") {
			pick = v
			break // the latest first
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
