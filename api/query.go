package api

import (
	"net/http"
	"net/url"
)

// parseQuery parses the request's query strictly: a query that
// url.ParseQuery cannot parse in full (a bad escape, more parameters than
// it accepts) is a 400, never silently shortened (r.URL.Query() drops
// what it cannot parse, a topic filter with it).
func parseQuery(r *http.Request) (url.Values, error) {
	qs, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest("bad query string: " + err.Error())
	}
	return qs, nil
}
