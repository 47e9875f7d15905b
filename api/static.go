package api

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// The OpenAPI document and the dashboard are embedded in the binary, as
// they are in the repository: GET /openapi.json and GET /ui need no file
// beside the binary and nothing from the network. The bytes are read-only.
var (
	//go:embed openapi.json
	openapiJSON []byte
	//go:embed ui/index.html
	uiIndex []byte
	//go:embed ui/app.js
	uiApp []byte
	//go:embed ui/style.css
	uiStyle []byte
)

// uiPolicy is the Content-Security-Policy of the dashboard: its scripts,
// styles and API calls come from this service only (images also from data:
// URLs, for the empty favicon), it runs no inline
// script, and no other site may frame it. The page renders event data
// with textContent only; with this policy even a mistake there cannot run
// a script that reads the token from sessionStorage.
const uiPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// asset is an embedded file served as it is, with an ETag so that a
// browser revalidates it cheaply (Cache-Control: no-cache).
type asset struct {
	body        []byte
	contentType string
	etag        string
	page        bool // a dashboard file: sent with the dashboard's security headers
}

func newAsset(body []byte, contentType string, page bool) *asset {
	sum := sha256.Sum256(body)
	return &asset{body: body, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, page: page}
}

// statics are the embedded files of a Handler.
type statics struct {
	openapi *asset
	index   *asset
	files   map[string]*asset // under /ui/
}

// newStatics prepares the embedded files. When reading is protected the
// page is told so (data-auth="required" on its body), so that it asks for
// the token before its first call rather than after a refused one.
func newStatics(readProtected bool) statics {
	index := uiIndex
	if readProtected {
		index = bytes.Replace(uiIndex, []byte(`<body data-auth="open">`), []byte(`<body data-auth="required">`), 1)
	}
	return statics{
		openapi: newAsset(openapiJSON, "application/json", false),
		index:   newAsset(index, "text/html; charset=utf-8", true),
		files: map[string]*asset{
			"app.js":    newAsset(uiApp, "text/javascript; charset=utf-8", true),
			"style.css": newAsset(uiStyle, "text/css; charset=utf-8", true),
		},
	}
}

func (a *asset) serve(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("ETag", a.etag)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	if a.page {
		h.Set("Content-Security-Policy", uiPolicy)
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
	}
	if etagMatch(r.Header.Get("If-None-Match"), a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", a.contentType)
	h.Set("Content-Length", strconv.Itoa(len(a.body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(a.body)
}

// etagMatch reports whether an If-None-Match header names etag (or is *).
func etagMatch(header, etag string) bool {
	for part := range strings.SplitSeq(header, ",") {
		part = strings.TrimPrefix(strings.TrimSpace(part), "W/")
		if part == etag || part == "*" {
			return true
		}
	}
	return false
}

// openapi serves GET /openapi.json: the OpenAPI 3.1 document of every
// route (api/openapi.json in the repository).
func (h *Handler) openapi(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	h.statics.openapi.serve(w, r)
}

// dashboard serves GET /ui: the dashboard page (api/ui/). It holds no
// data, so it needs no token: the page asks for the read token when the
// API refuses it and sends it with each call.
func (h *Handler) dashboard(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	h.statics.index.serve(w, r)
}

// dashboardFile serves GET /ui/{file}: the dashboard's script and style
// sheet.
func (h *Handler) dashboardFile(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	a, ok := h.statics.files[ps.ByName("file")]
	if !ok {
		h.fail(w, r, event.Errorf(event.NotFound, "no such file"))
		return
	}
	a.serve(w, r)
}
