package api

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// openapiDoc is what the route tests read of api/openapi.json.
type openapiDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

type openapiOperation struct {
	OperationID string                     `json:"operationId"`
	Responses   map[string]json.RawMessage `json:"responses"`
}

var openapiMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadOpenAPI(tb testing.TB) openapiDoc {
	tb.Helper()
	var doc openapiDoc
	if err := json.Unmarshal(openapiJSON, &doc); err != nil {
		tb.Fatalf("api/openapi.json is not JSON: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		tb.Fatalf("api/openapi.json: openapi = %q, want 3.1.x", doc.OpenAPI)
	}
	return doc
}

// operations returns the document's operations by "METHOD /path".
func (d openapiDoc) operations(tb testing.TB) map[string]openapiOperation {
	tb.Helper()
	ops := map[string]openapiOperation{}
	for path, item := range d.Paths {
		for key, raw := range item {
			if !slices.Contains(openapiMethods, key) {
				continue // parameters, summary, ...
			}
			var op openapiOperation
			if err := json.Unmarshal(raw, &op); err != nil {
				tb.Fatalf("api/openapi.json: %s %s: %v", key, path, err)
			}
			ops[strings.ToUpper(key)+" "+path] = op
		}
	}
	return ops
}

// openapiPath turns an httprouter path into an OpenAPI one: /consumers/:name
// is /consumers/{name}.
func openapiPath(p string) string {
	if p == "/topics/*rest" {
		return "/topics/{topic}/retention" // the only route under /topics/
	}
	parts := strings.Split(p, "/")
	for i, s := range parts {
		if strings.HasPrefix(s, ":") || strings.HasPrefix(s, "*") {
			parts[i] = "{" + s[1:] + "}"
		}
	}
	return strings.Join(parts, "/")
}

// TestOpenAPICoversEveryRoute checks the router's route table (routes in
// api.go, which New registers) against the OpenAPI document served at GET
// /openapi.json, both ways: a new route must be documented there, and a
// documented operation must be served.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	doc := loadOpenAPI(t)
	ops := doc.operations(t)
	h := New(newFakeAdmin(), nil)
	served := map[string]bool{}
	var missing []string
	for _, rt := range h.routes() {
		key := rt.method + " " + openapiPath(rt.path)
		served[key] = true
		if _, ok := ops[key]; !ok {
			missing = append(missing, key)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		t.Errorf("routes served by the API (the routes table in api/api.go) but missing from the OpenAPI document:\n\n\t%s\n\n"+
			"Add each one to api/openapi.json under \"paths\" (its parameters, every status it answers with "+
			"its headers and body schema, and its security), and to docs/api.md; then add requests of it to "+
			"e2e/openapi_test.go, which validates real replies against the document.",
			strings.Join(missing, "\n\t"))
	}
	var stale []string
	for key := range ops {
		if !served[key] {
			stale = append(stale, key)
		}
	}
	if len(stale) > 0 {
		slices.Sort(stale)
		t.Errorf("operations in api/openapi.json that the API does not serve (not in the routes table of api/api.go):\n\n\t%s",
			strings.Join(stale, "\n\t"))
	}
	ids := map[string]string{}
	for key, op := range ops {
		if op.OperationID == "" {
			t.Errorf("api/openapi.json: %s has no operationId", key)
		}
		if other, ok := ids[op.OperationID]; ok {
			t.Errorf("api/openapi.json: operationId %q of %s is also that of %s", op.OperationID, key, other)
		}
		ids[op.OperationID] = key
	}
}

// concretePath fills an httprouter path's parameters with values the
// handlers accept.
func concretePath(p string) string {
	p = strings.ReplaceAll(p, "*rest", "t1/retention")
	p = strings.ReplaceAll(p, ":name", "c1")
	return strings.ReplaceAll(p, ":file", "app.js")
}

// TestOpenAPIDocumentsRefusals asks each route without a token while every
// token is set: a route that answers 401 must list 401 and 403 in the
// document, and one that does not (the open routes) must be documented
// with no 401 reply.
func TestOpenAPIDocumentsRefusals(t *testing.T) {
	ops := loadOpenAPI(t).operations(t)
	h := New(newFakeAdmin(), &Options{Tokens: Tokens{
		Publish: "publish-0123456789abcdef", Read: "read-0123456789abcdef", Admin: "admin-0123456789abcdef",
	}})
	for _, rt := range h.routes() {
		key := rt.method + " " + openapiPath(rt.path)
		op, ok := ops[key]
		if !ok {
			continue // TestOpenAPICoversEveryRoute says so
		}
		rec := do(t, h, rt.method, concretePath(rt.path), "", "")
		if rec.Code == http.StatusUnauthorized {
			for _, code := range []string{"401", "403"} {
				if _, ok := op.Responses[code]; !ok {
					t.Errorf("%s needs a token (401 without one) but api/openapi.json lists no %s reply for it", key, code)
				}
			}
			continue
		}
		if _, ok := op.Responses["401"]; ok {
			t.Errorf("%s is open (%d without a token) but api/openapi.json lists a 401 reply for it", key, rec.Code)
		}
	}
}

func TestOpenAPIServed(t *testing.T) {
	h := New(newFakeAdmin(), &Options{Tokens: Tokens{Read: "read-0123456789abcdef"}})
	rec := do(t, h, http.MethodGet, "/openapi.json", "", "")
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /openapi.json = %d %q, want 200 application/json (open even with a read token set)",
			rec.Code, rec.Header().Get("Content-Type"))
	}
	if rec.Body.String() != string(openapiJSON) {
		t.Fatal("GET /openapi.json is not the embedded api/openapi.json")
	}
	etag := rec.Header().Get("ETag")
	rec = doHeader(t, h, http.MethodGet, "/openapi.json", "If-None-Match", etag, "")
	if rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
		t.Fatalf("GET /openapi.json with If-None-Match %s = %d, want 304 without a body", etag, rec.Code)
	}
}

func TestDashboardServed(t *testing.T) {
	h := New(newFakeAdmin(), &Options{Tokens: Tokens{Read: "read-0123456789abcdef"}})
	for path, ct := range map[string]string{
		"/ui":           "text/html; charset=utf-8",
		"/ui/app.js":    "text/javascript; charset=utf-8",
		"/ui/style.css": "text/css; charset=utf-8",
	} {
		rec := do(t, h, http.MethodGet, path, "", "")
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != ct || rec.Body.Len() == 0 {
			t.Errorf("GET %s = %d %q (%d bytes), want 200 %q", path, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len(), ct)
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy = %q", path, csp)
		}
		if rec.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", path)
		}
	}
	if body := do(t, h, http.MethodGet, "/ui", "", "").Body.String(); !strings.Contains(body, `<body data-auth="required">`) {
		t.Error(`GET /ui with a read token set: no <body data-auth="required">`)
	}
	open := New(newFake(), nil)
	if body := do(t, open, http.MethodGet, "/ui", "", "").Body.String(); !strings.Contains(body, `<body data-auth="open">`) {
		t.Error(`GET /ui without tokens: no <body data-auth="open">`)
	}
	for _, path := range []string{"/ui/nope.js", "/ui/", "/ui/app.js/x"} {
		if rec := do(t, h, http.MethodGet, path, "", ""); rec.Code != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path, rec.Code)
		}
	}
}
