package caddymod

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// checkJSONText refuses what encoding/json accepts silently but a strict
// API must not: invalid UTF-8 and unpaired UTF-16 surrogate escapes (both
// decoded as U+FFFD, so the stored text would differ from the text sent),
// and an object with the same key twice (the last one would win). body
// must be syntactically valid JSON. The error says what and where.
func checkJSONText(body []byte) error {
	if !utf8.Valid(body) {
		i := 0
		for i < len(body) {
			r, n := utf8.DecodeRune(body[i:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			i += n
		}
		return fmt.Errorf("it is not valid UTF-8 (at byte %d); send text as UTF-8", i)
	}
	if off, ok := loneSurrogate(body); !ok {
		return fmt.Errorf("a string has an unpaired surrogate escape at byte %d; escape characters outside the BMP as a surrogate pair, or send them as UTF-8", off)
	}
	return duplicateKeys(body)
}

// loneSurrogate scans the strings of a JSON text for \u escapes of UTF-16
// surrogates that do not form a pair, and returns the offset of the first.
func loneSurrogate(body []byte) (int, bool) {
	inString := false
	for i := 0; i < len(body); i++ {
		c := body[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 < len(body) && body[i+1] == 'u' {
				r, ok := hex4(body, i+2)
				if !ok {
					return i, false
				}
				switch {
				case utf16.IsSurrogate(r) && r < 0xDC00: // high: a low must follow
					if i+11 < len(body) && body[i+6] == '\\' && body[i+7] == 'u' {
						if lo, ok := hex4(body, i+8); ok && lo >= 0xDC00 && lo <= 0xDFFF {
							i += 11
							continue
						}
					}
					return i, false
				case utf16.IsSurrogate(r): // a low one alone
					return i, false
				}
				i += 5
				continue
			}
			i++ // the escaped character
		}
	}
	return 0, true
}

// hex4 reads four hex digits at body[i:].
func hex4(body []byte, i int) (rune, bool) {
	if i+4 > len(body) {
		return 0, false
	}
	var r rune
	for _, c := range body[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// duplicateKeys reports an object, at any depth, that has a key twice
// (compared after unescaping, so "a" and "\u0061" are the same key).
func duplicateKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		keys   map[string]bool // nil for an array
		expect bool            // an object's next token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("malformed JSON: %v", err)
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.keys != nil && top.expect {
			if key, ok := tok.(string); ok {
				if top.keys[key] {
					return fmt.Errorf("key %q appears twice in one object; send each field once", key)
				}
				top.keys[key] = true
				top.expect = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, expect: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// a value ended: the enclosing object expects a key next
		if len(stack) > 0 && stack[len(stack)-1].keys != nil {
			stack[len(stack)-1].expect = true
		}
	}
}

// exactFields refuses an object key that is not a field of t's JSON form
// exactly as it is spelled there (encoding/json matches field names
// without regard to case, so "DOMAIN" would set domain, and a key and a
// case variant of it would both land in one field). body has already
// been decoded into a value of type t.
func exactFields(body []byte, t reflect.Type) error {
	var val any
	if err := json.Unmarshal(body, &val); err != nil {
		return fmt.Errorf("malformed JSON: %v", err)
	}
	return walkFields(val, t, "")
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func walkFields(val any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil // decodes itself
	}
	switch v := val.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Struct:
			fields := jsonFields(t)
			for _, k := range slices.Sorted(maps.Keys(v)) {
				ft, ok := fields[k]
				if !ok {
					return fmt.Errorf("unknown field %q; field names are lowercase, as documented", path+k)
				}
				if err := walkFields(v[k], ft, path+k+"."); err != nil {
					return err
				}
			}
		case reflect.Map:
			for _, k := range slices.Sorted(maps.Keys(v)) {
				if err := walkFields(v[k], t.Elem(), path+k+"."); err != nil {
					return err
				}
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, x := range v {
				if err := walkFields(x, t.Elem(), fmt.Sprintf("%s%d.", path, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// jsonFields returns the JSON names of struct type t's fields (those of
// embedded structs included) and their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type)
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			maps.Copy(m, jsonFields(ft))
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}
