package domainstore

import (
	"errors"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// storageFailed is the error of an operation that could not finish
// because the storage failed or did not answer in time. The cause stays
// in the chain for logs; the message shown to clients names no storage
// key.
func storageFailed(what string, err error) error {
	var e *dcerr.Error
	if errors.As(err, &e) && e.Code == dcerr.StorageUnavailable {
		return err
	}
	return &dcerr.Error{
		Code: dcerr.StorageUnavailable,
		Msg:  "the storage failed or did not answer while " + what + "; nothing was changed; retry later",
		Err:  err,
	}
}

// recordDamaged is the error of reading a record that exists but cannot be
// decoded.
func recordDamaged(kind, id string, err error) error {
	return &dcerr.Error{
		Code: dcerr.RecordDamaged,
		Msg: "the stored record of " + kind + " " + id + " is damaged and cannot be read; " +
			"delete it (DELETE works on damaged records) and create it again",
		Details: map[string]string{"id": id},
		Err:     err,
	}
}

func notFound(kind, id string) error {
	return dcerr.New(dcerr.NotFound, "%s %q not found", kind, id)
}
