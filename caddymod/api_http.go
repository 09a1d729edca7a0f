package caddymod

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strconv"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// errorBody is the error response: Caddy's "error" plus ngrok's fields.
type errorBody struct {
	Error      string            `json:"error"`
	ErrorCode  dcerr.Code        `json:"error_code"`
	StatusCode int               `json:"status_code"`
	Msg        string            `json:"msg"`
	Details    map[string]string `json:"details"`
}

// writeError writes err in the contract's error shape. Errors without a
// code are internal: their text is not shown to the client.
func writeError(w http.ResponseWriter, err error) {
	var e *dcerr.Error
	if !errors.As(err, &e) {
		e = &dcerr.Error{Code: dcerr.Internal, Msg: "internal error; see the Caddy log"}
	}
	details := e.Details
	if details == nil {
		details = map[string]string{}
	}
	status := e.Code.Status()
	writeJSON(w, status, errorBody{Error: e.Msg, ErrorCode: e.Code, StatusCode: status, Msg: e.Msg, Details: details})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"encoding response","error_code":"INTERNAL_ERROR","status_code":500,"msg":"encoding response","details":{}}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// decodeBody decodes a JSON request body into v, strictly: unknown fields,
// wrong types, trailing data, an empty body, a key twice in one object,
// invalid UTF-8 and unpaired surrogate escapes are BAD_REQUEST; a body over
// the limit is BODY_TOO_LARGE.
func decodeBody(r *http.Request, v any) error {
	return decodeBodyOr(r, v, false)
}

// decodeBodyOr is decodeBody; with emptyOK, an empty body is accepted
// and leaves v as it is.
func decodeBodyOr(r *http.Request, v any, emptyOK bool) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return dcerr.New(dcerr.BodyTooLarge, "the request body is over %d bytes; send a smaller body", tooBig.Limit)
		}
		return dcerr.New(dcerr.BadRequest, "reading the request body: %v", err)
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		if emptyOK {
			return nil
		}
		return dcerr.New(dcerr.BadRequest, "the request body is empty; send a JSON object")
	}
	if trimmed[0] != '{' {
		return dcerr.New(dcerr.BadRequest, "the request body is not a JSON object; send one object with the documented fields")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return dcerr.New(dcerr.BadRequest, "the request body is not valid: %s", describeJSONError(err))
	}
	if dec.More() {
		return dcerr.New(dcerr.BadRequest, "the request body has data after the JSON object; send one object")
	}
	if err := checkJSONText(body); err != nil {
		return dcerr.New(dcerr.BadRequest, "the request body is not valid: %v", err)
	}
	if err := exactFields(body, reflect.TypeOf(v)); err != nil {
		return dcerr.New(dcerr.BadRequest, "the request body is not valid: %v", err)
	}
	return nil
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Sprintf("field %q must be %s, not %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("malformed JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the JSON ends early"
	}
	return err.Error() // e.g. `json: unknown field "x"`
}

// pageParams reads the list query: limit (1 to 100, default 100) and
// before_id, an ID of the listed kind (prefix).
func pageParams(r *http.Request, prefix string) (int, string, error) {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return 0, "", dcerr.New(dcerr.BadRequest, "limit %q must be a whole number from 1 to 100", s)
		}
		limit = min(n, 100)
	}
	before := q.Get("before_id")
	if before != "" && !domainstore.ValidID(prefix, before) {
		return 0, "", dcerr.New(dcerr.BadRequest, "before_id %q is not an ID of this list (%s...); use the next_page_uri of the previous page", before, prefix)
	}
	return limit, before, nil
}

// listBody builds a list response: the items under their plural, the
// request's uri, and the next page's (a path, or an absolute URL in
// ngrok's dialect; selector, "&domain=..." or "&filter=...", keeps a
// selection), null on the last page.
func (h *handler) listBody(plural, collection, selector string, items any, uri, lastID string, limit int, more bool) map[string]any {
	var next any
	if more && lastID != "" {
		next = h.door.origin + fmt.Sprintf("%s?limit=%d&before_id=%s%s", collection, limit, url.QueryEscape(lastID), selector)
	}
	return map[string]any{plural: items, "uri": uri, "next_page_uri": next}
}
