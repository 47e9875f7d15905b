package api

import (
	"net/http"
	"net/url"
	"strings"
)

// cors answers browsers of the listed origins (Options.CORSOrigins): the
// origin is echoed in Access-Control-Allow-Origin, and a preflight is
// answered here, before routing and before any token check (a preflight
// never carries one). Other origins get no CORS header, so their browsers
// refuse the reply; requests without Origin (every non-browser client) are
// not affected.
type cors struct {
	origins map[string]bool
}

// Headers of a CORS reply.
const (
	corsMethods = "GET, HEAD, POST"
	corsHeaders = "Authorization, Content-Type, Content-Encoding"
	corsMaxAge  = "600" // seconds a browser may cache a preflight
	corsExposed = "Retry-After"
)

func newCORS(origins []string) *cors {
	if len(origins) == 0 {
		return nil
	}
	c := &cors{origins: map[string]bool{}}
	for _, o := range origins {
		c.origins[o] = true
	}
	return c
}

// handle adds the CORS headers of r's reply and reports whether it answered
// r (a preflight) itself.
func (c *cors) handle(w http.ResponseWriter, r *http.Request) bool {
	h := w.Header()
	h.Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if !c.origins[origin] {
		return false
	}
	h.Set("Access-Control-Allow-Origin", origin)
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		h.Set("Access-Control-Expose-Headers", corsExposed)
		return false
	}
	h.Add("Vary", "Access-Control-Request-Method, Access-Control-Request-Headers")
	h.Set("Access-Control-Allow-Methods", corsMethods)
	h.Set("Access-Control-Allow-Headers", corsHeaders)
	h.Set("Access-Control-Max-Age", corsMaxAge)
	w.WriteHeader(http.StatusNoContent)
	return true
}

// ValidOrigin reports why o is not an origin as browsers send it in an
// Origin header (scheme://host[:port], lower case, http or https, nothing
// after the host), or "".
func ValidOrigin(o string) string {
	u, err := url.Parse(o)
	switch {
	case err != nil:
		return "not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "scheme must be http or https"
	case u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(o, "?") || strings.HasSuffix(o, "#"):
		return "want scheme://host[:port] and nothing else"
	case strings.ToLower(o) != o:
		return "must be lower case, as browsers send it"
	}
	return ""
}
