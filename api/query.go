package api

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/aggregator-dev/aggregator/event"
)

// query parses the request's query. Unlike r.URL.Query, which drops what it
// cannot parse (and the whole query past url.ParseQuery's 10,000
// parameters), an unparsable query is an error of kind event.Invalid (400):
// a filter that silently vanished would answer another question. Every
// handler that reads a query parameter goes through here.
func query(r *http.Request) (url.Values, error) {
	if r.URL.RawQuery == "" {
		return nil, nil
	}
	qs, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest("malformed query: " + err.Error())
	}
	return qs, nil
}

// publishQuery is what the query of POST /publish asks for. The zero value
// is a plain publish.
type publishQuery struct {
	topic, source string // for events that have none ("" = required)
	contentID     bool   // id=content: a missing event_id is the SHA-256 of the event
	extraPayload  bool   // extra=payload: unknown top-level members go into the payload
	skipInvalid   bool   // invalid=skip: write the valid events, list the others
	waitApplied   bool   // wait=applied: answer with each event's verdict
}

// publishParams are the parameters POST /publish takes, with the values
// each accepts (nil: any value, checked by parsePublishQuery).
var publishParams = map[string][]string{
	"topic":   nil,
	"source":  nil,
	"id":      {"content"},
	"extra":   {"payload"},
	"invalid": {"skip", "reject"},
	"wait":    {"applied"},
}

// parsePublishQuery parses and checks the query of POST /publish: unknown
// parameters, unknown values, a parameter given twice and a bad default
// topic or source are errors of kind event.Invalid (400).
func parsePublishQuery(r *http.Request) (publishQuery, error) {
	var q publishQuery
	qs, err := query(r)
	if err != nil || len(qs) == 0 {
		return q, err
	}
	for name, vs := range qs {
		allowed, ok := publishParams[name]
		switch {
		case !ok:
			return q, badRequest("unknown query parameter " + quoteParam(name) + " (known: extra, id, invalid, source, topic, wait)")
		case len(vs) > 1:
			return q, badRequest("query parameter " + name + " given more than once")
		case allowed != nil && !slices.Contains(allowed, vs[0]):
			return q, badRequest("query parameter " + name + "=" + quoteParam(vs[0]) + ": want " + strings.Join(allowed, " or "))
		}
	}
	q.topic, q.source = qs.Get("topic"), qs.Get("source")
	q.contentID = qs.Get("id") == "content"
	q.extraPayload = qs.Get("extra") == "payload"
	q.skipInvalid = qs.Get("invalid") == "skip"
	q.waitApplied = qs.Get("wait") == "applied"
	for _, d := range []struct{ name, v string }{{"topic", q.topic}, {"source", q.source}} {
		if _, ok := qs[d.name]; ok {
			if msg := nameProblem(d.v); msg != "" {
				return q, badRequest("query parameter " + d.name + ": " + msg)
			}
		}
	}
	return q, nil
}

// quoteParam quotes a query name or value for a message, cut to 64 bytes.
func quoteParam(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return `"` + strings.ToValidUTF8(s, "\uFFFD") + `"`
}

// nameProblem returns why s is not a valid topic, event_id or source, or "".
func nameProblem(s string) string {
	switch {
	case len(s) > event.MaxFieldBytes:
		return "must be at most " + strconv.Itoa(event.MaxFieldBytes) + " bytes"
	case !utf8.ValidString(s):
		return "must be valid UTF-8"
	case strings.TrimSpace(s) == "":
		return "must not be empty"
	case hasControl(s):
		return "must not contain control characters (U+0000 to U+001F)"
	}
	return ""
}
