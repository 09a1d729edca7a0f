package caddymod

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// checkQuery refuses query parameters that path does not take, and any
// parameter given twice, so that a misspelt or unsupported one is never
// silently ignored.
func checkQuery(r *http.Request, allowed ...string) error {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return dcerr.New(dcerr.BadRequest, "the query string is malformed: %v", err)
	}
	for k, vs := range q {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return dcerr.New(dcerr.BadRequest, "unknown query parameter %q; this path takes none", k)
			}
			return dcerr.New(dcerr.BadRequest, "unknown query parameter %q; this path takes %s", k, strings.Join(allowed, ", "))
		}
		if len(vs) > 1 {
			return dcerr.New(dcerr.BadRequest, "query parameter %q is given %d times; give it once", k, len(vs))
		}
	}
	return nil
}

// selectorParam returns the value of the list selector name ("domain" or
// "filter") and whether the query gives it; example says what a value
// looks like. A selector given empty (or blank) is a BAD_REQUEST: it
// selects nothing a client could mean, and listing everything instead
// would answer a question that was not asked.
func selectorParam(q url.Values, name, example string) (string, bool, error) {
	if !q.Has(name) {
		return "", false, nil
	}
	v := q.Get(name)
	if strings.TrimSpace(v) == "" {
		return "", false, dcerr.New(dcerr.BadRequest,
			"query parameter %q is empty; give %s, or leave %s out to list everything", name, example, name)
	}
	return v, true, nil
}

// filterTerm is one comparison of a list filter: obj.<field> == "<value>".
type filterTerm struct {
	field, value string
}

// maxFilterLen bounds a filter expression, in bytes.
const maxFilterLen = 4096

// parseFilter parses a list filter in the subset of ngrok's filter
// language (CEL) that lists support here: comparisons of a field with a
// string, obj.<field> == "<value>", joined with || (any of them). fields
// are the fields that may be compared. Anything else is a BAD_REQUEST that
// says what is supported.
func parseFilter(expr string, fields ...string) ([]filterTerm, error) {
	unsupported := func(why string) error {
		quoted := make([]string, len(fields))
		for i, f := range fields {
			quoted[i] = fmt.Sprintf(`obj.%s == "<%s>"`, f, f)
		}
		return dcerr.New(dcerr.BadRequest, "filter %s: %s; filters here compare %s, joined with ||",
			clip(expr, 100), why, strings.Join(quoted, " or "))
	}
	if len(expr) > maxFilterLen {
		return nil, unsupported(fmt.Sprintf("it is over %d bytes", maxFilterLen))
	}
	p := &filterParser{s: expr}
	var terms []filterTerm
	for {
		p.space()
		if !p.take("obj.") {
			return nil, unsupported(p.where("expected obj.<field>"))
		}
		field := p.ident()
		if !slices.Contains(fields, field) {
			if field == "" {
				return nil, unsupported(p.where("expected a field name after obj."))
			}
			return nil, unsupported(fmt.Sprintf("field %q cannot be filtered on", field))
		}
		p.space()
		if !p.take("==") {
			return nil, unsupported(p.where("expected =="))
		}
		p.space()
		value, ok := p.str()
		if !ok {
			return nil, unsupported(p.where("expected a quoted string"))
		}
		terms = append(terms, filterTerm{field: field, value: value})
		p.space()
		if p.done() {
			return terms, nil
		}
		if !p.take("||") {
			return nil, unsupported(p.where("expected || or the end"))
		}
	}
}

// clip quotes s, cut to n bytes.
func clip(s string, n int) string {
	if len(s) > n {
		return fmt.Sprintf("%q...", s[:n])
	}
	return fmt.Sprintf("%q", s)
}

type filterParser struct {
	s string
	i int
}

func (p *filterParser) done() bool { return p.i >= len(p.s) }

func (p *filterParser) where(what string) string {
	return fmt.Sprintf("%s at byte %d", what, p.i)
}

func (p *filterParser) space() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == '\n' || p.s[p.i] == '\r') {
		p.i++
	}
}

func (p *filterParser) take(tok string) bool {
	if strings.HasPrefix(p.s[p.i:], tok) {
		p.i += len(tok)
		return true
	}
	return false
}

func (p *filterParser) ident() string {
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || (p.i > start && '0' <= c && c <= '9') {
			p.i++
			continue
		}
		break
	}
	return p.s[start:p.i]
}

// str reads a string literal in double or single quotes, with the escapes
// \\, \", \' and \n.
func (p *filterParser) str() (string, bool) {
	if p.done() || (p.s[p.i] != '"' && p.s[p.i] != '\'') {
		return "", false
	}
	quote := p.s[p.i]
	var sb strings.Builder
	for i := p.i + 1; i < len(p.s); i++ {
		c := p.s[i]
		switch {
		case c == quote:
			p.i = i + 1
			return sb.String(), true
		case c == '\\':
			if i+1 >= len(p.s) {
				return "", false
			}
			i++
			switch p.s[i] {
			case '\\', '"', '\'':
				sb.WriteByte(p.s[i])
			case 'n':
				sb.WriteByte('\n')
			default:
				return "", false
			}
		case c == '\n':
			return "", false
		default:
			sb.WriteByte(c)
		}
	}
	return "", false
}
