// Package dcerr holds the stable error codes of the domaincerts API and the
// one table that maps them to HTTP status codes.
//
// Every door into domaincerts (the admin API, the caddy subcommands, later
// ones) reports failures as *Error values so that a client can branch on
// Code, whatever door it used.
package dcerr

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is a stable, machine-readable error code. The set is fixed by the
// admin API contract; codes are never renamed.
type Code string

// The error codes of the admin API contract.
const (
	CertPEMMissing      Code = "CERT_PEM_MISSING"
	CertPEMInvalid      Code = "CERT_PEM_INVALID"
	CertPEMType         Code = "CERT_PEM_TYPE"
	CertIsKey           Code = "CERT_IS_KEY"
	PEMHeaders          Code = "PEM_HEADERS"
	CertTooLarge        Code = "CERT_TOO_LARGE"
	ChainOrder          Code = "CHAIN_ORDER"
	KeyMissing          Code = "KEY_MISSING"
	KeyIsCert           Code = "KEY_IS_CERT"
	KeyEncrypted        Code = "KEY_ENCRYPTED"
	KeyUnsupported      Code = "KEY_UNSUPPORTED"
	KeyWeak             Code = "KEY_WEAK"
	KeyMismatch         Code = "KEY_MISMATCH"
	FieldTooLarge       Code = "FIELD_TOO_LARGE"
	BodyTooLarge        Code = "BODY_TOO_LARGE"
	BadRequest          Code = "BAD_REQUEST"
	DomainInvalid       Code = "DOMAIN_INVALID"
	DomainExists        Code = "DOMAIN_EXISTS"
	DomainImmutable     Code = "DOMAIN_IMMUTABLE"
	CertAndPolicy       Code = "CERT_AND_POLICY"
	PolicyInvalid       Code = "POLICY_INVALID"
	PolicyUnsatisfiable Code = "POLICY_UNSATISFIABLE"
	NotManaged          Code = "NOT_MANAGED"
	CertNotFound        Code = "CERT_NOT_FOUND"
	CertDomainMismatch  Code = "CERT_DOMAIN_MISMATCH"
	DetachManaged       Code = "DETACH_MANAGED"
	CertInUse           Code = "CERT_IN_USE"
	NotFound            Code = "NOT_FOUND"
	MethodNotAllowed    Code = "METHOD_NOT_ALLOWED"
	Unauthorized        Code = "UNAUTHORIZED"
	Internal            Code = "INTERNAL_ERROR"
	StorageUnavailable  Code = "STORAGE_UNAVAILABLE"
	// RecordDamaged is a record that exists in storage but cannot be
	// read (truncated, or not the record it should be). It can be
	// deleted.
	RecordDamaged Code = "RECORD_DAMAGED"
)

// Status returns the HTTP status code for c. It is the only place where
// codes meet HTTP.
func (c Code) Status() int {
	switch c {
	case BodyTooLarge:
		return http.StatusRequestEntityTooLarge
	case DomainExists, CertInUse:
		return http.StatusConflict
	case NotFound:
		return http.StatusNotFound
	case MethodNotAllowed:
		return http.StatusMethodNotAllowed
	case Unauthorized:
		return http.StatusUnauthorized
	case Internal, RecordDamaged:
		return http.StatusInternalServerError
	case StorageUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusBadRequest
	}
}

// Error is a rejected request: a stable code, a message that says what was
// wrong and what to do, and optional details. Messages never carry key
// material or PEM text.
type Error struct {
	Code Code
	Msg  string
	// Details are machine-readable facts about the rejection, all strings
	// (ngrok's API clients decode them into a map of strings).
	Details map[string]string
	// Err is the cause, for logs and errors.Is; it is not shown to
	// clients.
	Err error
}

// Error returns the message.
func (e *Error) Error() string { return e.Msg }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// New returns an *Error with a formatted message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// WithDetail returns e with one detail set, for chaining.
func (e *Error) WithDetail(key, value string) *Error {
	if e.Details == nil {
		e.Details = make(map[string]string)
	}
	e.Details[key] = value
	return e
}

// CodeOf returns the code of the first *Error in err's chain, or Internal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}
