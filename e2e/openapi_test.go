package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	"github.com/pb33f/libopenapi-validator/content"
	verrors "github.com/pb33f/libopenapi-validator/errors"
	"github.com/pb33f/libopenapi-validator/paths"
	"github.com/pb33f/libopenapi-validator/schema_validation"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
)

// specFile is the OpenAPI document as the repository has it; the tests
// also require that the binary serves exactly it.
const specFile = "../api/openapi.json"

type spec struct {
	raw   []byte
	model *v3.Document
	v     validator.Validator
	opts  *config.ValidationOptions
}

func loadSpec(tb testing.TB) *spec {
	tb.Helper()
	raw, err := os.ReadFile(specFile)
	if err != nil {
		tb.Fatal(err)
	}
	doc, err := libopenapi.NewDocument(raw)
	if err != nil {
		tb.Fatalf("%s: %v", specFile, err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		tb.Fatalf("%s: build model: %v", specFile, err)
	}
	opts := []config.Option{config.WithFormatAssertions()}
	for _, mt := range []string{"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"} {
		opts = append(opts, config.WithBodyDecoder(mt, ndjsonDecoder))
	}
	v, errs := validator.NewValidator(doc, opts...)
	if len(errs) > 0 {
		tb.Fatalf("%s: validator: %v", specFile, errs)
	}
	return &spec{raw: raw, model: &model.Model, v: v, opts: config.NewValidationOptions()}
}

// ndjsonDecoder reads an NDJSON body as the list of its lines' values (the
// document's EventLines schema), blank lines skipped, as POST /publish does.
var ndjsonDecoder = content.DecoderFunc(func(in *content.DecodeInput) (any, error) {
	var lines []any
	sc := bufio.NewScanner(in.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var v any
		if err := json.Unmarshal(line, &v); err != nil {
			return nil, fmt.Errorf("line %d: %w", len(lines)+1, err)
		}
		lines = append(lines, v)
	}
	return lines, sc.Err()
})

// TestOpenAPIDocumentValid validates api/openapi.json against the OpenAPI
// 3.1 specification's schema.
func TestOpenAPIDocumentValid(t *testing.T) {
	s := loadSpec(t)
	if !strings.HasPrefix(s.model.Version, "3.1") {
		t.Fatalf("openapi %q, want 3.1", s.model.Version)
	}
	if ok, errs := s.v.ValidateDocument(); !ok {
		for _, e := range errs {
			t.Errorf("%s: %v", specFile, e)
			for _, se := range e.SchemaValidationErrors {
				t.Errorf("\t%s (line %d): %s", se.KeywordLocation, se.Line, se.Reason)
			}
		}
	}
}

// exchange is one request of TestOpenAPIReplies.
type exchange struct {
	name        string
	srv         *aggregator
	method      string
	path        string
	header      http.Header
	body        string
	want        []int // accepted statuses
	validateReq bool  // the request is meant to be valid: check it too
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func bearer(token string) http.Header { return hdr("Authorization", "Bearer "+token) }

func jsonHdr() http.Header { return hdr("Content-Type", "application/json") }

func event(topic, id string) string {
	return fmt.Sprintf(`{"topic":%q,"event_id":%q,"timestamp":"2025-10-20T12:00:00.5+02:00","source":"e2e","payload":{"n":1}}`, topic, id)
}

// TestOpenAPIReplies sends requests of every documented operation to the
// real binary and validates each reply (status, headers, body) against
// the document with libopenapi-validator, and the valid requests too. It
// fails when an operation of the document has no request here.
func TestOpenAPIReplies(t *testing.T) {
	s := loadSpec(t)
	open := start(t, "--max-body-bytes", "65536", "--max-batch-events", "100",
		"--max-topics", "6", "--max-consumers", "3")
	locked := start(t, "--publish-token", publishToken, "--read-token", readToken)
	slow := start(t, "--apply-wait", "1ns")

	open.publish(t, "", "["+event("orders", "o-1")+","+event("orders", "o-2")+","+event("logins", "l-1")+"]")

	ndjson := event("orders", "o-3") + "\n\n" + event("logins", "l-2") + "\n"
	big := `{"topic":"t","event_id":"big","timestamp":"2025-10-20T00:00:00Z","source":"s","payload":{"x":"` +
		strings.Repeat("a", 70000) + `"}}`
	many := "[" + strings.TrimSuffix(strings.Repeat(event("orders", "o-1")+",", 101), ",") + "]"
	var newTopics []string
	for i := range 6 {
		newTopics = append(newTopics, event(fmt.Sprintf("extra-%d", i), "x"))
	}

	cases := []exchange{
		{name: "publish one", srv: open, method: "POST", path: "/publish", header: jsonHdr(), body: event("orders", "o-4"), want: []int{200}, validateReq: true},
		{name: "publish array", srv: open, method: "POST", path: "/publish", header: jsonHdr(), body: "[" + event("orders", "o-5") + "," + event("orders", "o-1") + "]", want: []int{200}, validateReq: true},
		{name: "publish ndjson", srv: open, method: "POST", path: "/publish", header: hdr("Content-Type", "application/x-ndjson"), body: ndjson, want: []int{200}, validateReq: true},
		{name: "publish verdicts", srv: open, method: "POST", path: "/publish?wait=applied", header: jsonHdr(), body: "[" + event("orders", "o-6") + "," + event("orders", "o-1") + "]", want: []int{200}, validateReq: true},
		{name: "publish verdicts pending", srv: slow, method: "POST", path: "/publish?wait=applied", header: jsonHdr(), body: event("orders", "s-1"), want: []int{200, 202}, validateReq: true},
		{name: "publish bad wait", srv: open, method: "POST", path: "/publish?wait=soon", header: jsonHdr(), body: event("orders", "o-7"), want: []int{400}},
		{name: "publish malformed", srv: open, method: "POST", path: "/publish", header: jsonHdr(), body: `{"topic":`, want: []int{400}},
		{name: "publish invalid event", srv: open, method: "POST", path: "/publish", header: jsonHdr(), body: `{"topic":"orders","event_id":"o-1"}`, want: []int{422}},
		{name: "publish empty array", srv: open, method: "POST", path: "/publish", header: jsonHdr(), body: `[]`, want: []int{422}},
		{name: "publish too large", srv: open, method: "POST", path: "/publish", header: jsonHdr(), body: big, want: []int{413}},
		{name: "publish too many", srv: open, method: "POST", path: "/publish", header: jsonHdr(), body: many, want: []int{413}},
		{name: "publish over max topics", srv: open, method: "POST", path: "/publish", header: jsonHdr(), body: "[" + strings.Join(newTopics, ",") + "]", want: []int{429}},
		{name: "publish no token", srv: locked, method: "POST", path: "/publish", header: jsonHdr(), body: event("orders", "o-1"), want: []int{401}},
		{name: "publish read token", srv: locked, method: "POST", path: "/publish", header: merge(jsonHdr(), bearer(readToken)), body: event("orders", "o-1"), want: []int{403}},
		{name: "publish with token", srv: locked, method: "POST", path: "/publish", header: merge(jsonHdr(), bearer(publishToken)), body: event("orders", "o-1"), want: []int{200}, validateReq: true},

		{name: "events", srv: open, method: "GET", path: "/events", want: []int{200}, validateReq: true},
		{name: "events of a topic", srv: open, method: "GET", path: "/events?topic=orders&limit=2", want: []int{200}, validateReq: true},
		{name: "events bad limit", srv: open, method: "GET", path: "/events?limit=0", want: []int{400}},
		{name: "events bad cursor", srv: open, method: "GET", path: "/events?cursor=nope", want: []int{400}},
		{name: "events no token", srv: locked, method: "GET", path: "/events", want: []int{401}},
		{name: "events publish token", srv: locked, method: "GET", path: "/events", header: bearer(publishToken), want: []int{403}},

		{name: "feed", srv: open, method: "GET", path: "/feed", want: []int{200}, validateReq: true},
		{name: "feed page", srv: open, method: "GET", path: "/feed?after=1&limit=2&topic=orders", want: []int{200}, validateReq: true},
		{name: "feed long-poll timeout", srv: open, method: "GET", path: "/feed?after=1000&wait=100ms", want: []int{200}, validateReq: true},
		{name: "feed bad after", srv: open, method: "GET", path: "/feed?after=-1", want: []int{400}},
		{name: "feed bad wait", srv: open, method: "GET", path: "/feed?wait=2m", want: []int{400}},
		{name: "feed no token", srv: locked, method: "GET", path: "/feed", want: []int{401}},
		{name: "feed stream bad Last-Event-ID", srv: open, method: "GET", path: "/feed", header: hdr("Accept", "text/event-stream", "Last-Event-ID", "x"), want: []int{400}},

		{name: "put consumer", srv: open, method: "PUT", path: "/consumers/nightly", header: jsonHdr(), body: `{"topic":"orders"}`, want: []int{201}, validateReq: true},
		{name: "put consumer again", srv: open, method: "PUT", path: "/consumers/nightly", header: jsonHdr(), body: `{"topic":"orders"}`, want: []int{200}, validateReq: true},
		{name: "put consumer no body", srv: open, method: "PUT", path: "/consumers/all", want: []int{201}, validateReq: true},
		{name: "put consumer other topic", srv: open, method: "PUT", path: "/consumers/nightly", header: jsonHdr(), body: `{"topic":"logins"}`, want: []int{409}},
		{name: "put consumer bad name", srv: open, method: "PUT", path: "/consumers/bad!name", want: []int{400}},
		{name: "put consumer bad body", srv: open, method: "PUT", path: "/consumers/c2", header: jsonHdr(), body: `[`, want: []int{400}},
		{name: "put consumer big body", srv: open, method: "PUT", path: "/consumers/c2", header: jsonHdr(), body: `{"topic":"` + strings.Repeat("x", 5000) + `"}`, want: []int{413}},
		{name: "put consumer no token", srv: locked, method: "PUT", path: "/consumers/nightly", want: []int{401}},
		{name: "get consumer", srv: open, method: "GET", path: "/consumers/nightly", want: []int{200}, validateReq: true},
		{name: "get consumer unknown", srv: open, method: "GET", path: "/consumers/nobody", want: []int{404}},
		{name: "get consumer no token", srv: locked, method: "GET", path: "/consumers/nightly", want: []int{401}},
		{name: "consumer next", srv: open, method: "GET", path: "/consumers/nightly/next?limit=2", want: []int{200}, validateReq: true},
		{name: "consumer next long-poll", srv: open, method: "GET", path: "/consumers/all/next?limit=1&wait=50ms", want: []int{200}, validateReq: true},
		{name: "consumer next unknown", srv: open, method: "GET", path: "/consumers/nobody/next", want: []int{404}},
		{name: "consumer next bad limit", srv: open, method: "GET", path: "/consumers/nightly/next?limit=x", want: []int{400}},
		{name: "consumer next no token", srv: locked, method: "GET", path: "/consumers/nightly/next", want: []int{401}},
		{name: "ack", srv: open, method: "POST", path: "/consumers/nightly/ack", header: jsonHdr(), body: `{"seq":1}`, want: []int{200}, validateReq: true},
		{name: "ack past the end", srv: open, method: "POST", path: "/consumers/nightly/ack", header: jsonHdr(), body: `{"seq":100000}`, want: []int{400}},
		{name: "ack no seq", srv: open, method: "POST", path: "/consumers/nightly/ack", header: jsonHdr(), body: `{}`, want: []int{400}},
		{name: "ack unknown", srv: open, method: "POST", path: "/consumers/nobody/ack", header: jsonHdr(), body: `{"seq":1}`, want: []int{404}},
		{name: "ack big body", srv: open, method: "POST", path: "/consumers/nightly/ack", header: jsonHdr(), body: `{"seq":1,"x":"` + strings.Repeat("x", 5000) + `"}`, want: []int{413}},
		{name: "ack no token", srv: locked, method: "POST", path: "/consumers/nightly/ack", header: jsonHdr(), body: `{"seq":1}`, want: []int{401}},
		{name: "delete consumer", srv: open, method: "DELETE", path: "/consumers/all", want: []int{200}, validateReq: true},
		{name: "delete consumer unknown", srv: open, method: "DELETE", path: "/consumers/all", want: []int{404}},
		{name: "delete consumer bad name", srv: open, method: "DELETE", path: "/consumers/bad!name", want: []int{400, 404}},
		{name: "delete consumer no token", srv: locked, method: "DELETE", path: "/consumers/nightly", want: []int{401}},
		{name: "put consumer at the bound", srv: open, method: "PUT", path: "/consumers/c3", want: []int{201}},
		{name: "put consumer at the bound 2", srv: open, method: "PUT", path: "/consumers/c4", want: []int{201}},
		{name: "put consumer over the bound", srv: open, method: "PUT", path: "/consumers/c5", want: []int{409}},

		{name: "topics", srv: open, method: "GET", path: "/topics", want: []int{200}, validateReq: true},
		{name: "topics paged", srv: open, method: "GET", path: "/topics?limit=1", want: []int{200}, validateReq: true},
		{name: "topics bad cursor", srv: open, method: "GET", path: "/topics?cursor=%21%21", want: []int{400}},
		{name: "topics bad limit", srv: open, method: "GET", path: "/topics?limit=10001", want: []int{400}},
		{name: "topics no token", srv: locked, method: "GET", path: "/topics", want: []int{401}},

		{name: "get retention", srv: open, method: "GET", path: "/topics/orders/retention", want: []int{200}, validateReq: true},
		{name: "put retention", srv: open, method: "PUT", path: "/topics/orders/retention", header: jsonHdr(), body: `{"age":"720h","events":5}`, want: []int{200}, validateReq: true},
		{name: "put retention default age", srv: open, method: "PUT", path: "/topics/logins/retention", header: jsonHdr(), body: `{"age":null,"events":0}`, want: []int{200}, validateReq: true},
		{name: "put retention no body", srv: open, method: "PUT", path: "/topics/logins/retention", want: []int{200}, validateReq: true},
		{name: "put retention bad age", srv: open, method: "PUT", path: "/topics/orders/retention", header: jsonHdr(), body: `{"age":"soon"}`, want: []int{400}},
		{name: "put retention unknown field", srv: open, method: "PUT", path: "/topics/orders/retention", header: jsonHdr(), body: `{"days":3}`, want: []int{400}},
		{name: "put retention big body", srv: open, method: "PUT", path: "/topics/orders/retention", header: jsonHdr(), body: `{"age":"1h","x":"` + strings.Repeat("x", 5000) + `"}`, want: []int{413}},
		{name: "get retention long topic", srv: open, method: "GET", path: "/topics/" + strings.Repeat("t", 256) + "/retention", want: []int{400}},
		{name: "get retention no token", srv: locked, method: "GET", path: "/topics/orders/retention", want: []int{401}},
		{name: "put retention no token", srv: locked, method: "PUT", path: "/topics/orders/retention", header: jsonHdr(), body: `{}`, want: []int{401}},
		{name: "put retention read token", srv: locked, method: "PUT", path: "/topics/orders/retention", header: merge(jsonHdr(), bearer(readToken)), body: `{}`, want: []int{403}},
		{name: "backup", srv: open, method: "GET", path: "/admin/backup", want: []int{200}, validateReq: true},
		{name: "backup no token", srv: locked, method: "GET", path: "/admin/backup", want: []int{401}},
		{name: "backup read token", srv: locked, method: "GET", path: "/admin/backup", header: bearer(readToken), want: []int{403}},

		{name: "stats", srv: open, method: "GET", path: "/stats", want: []int{200}, validateReq: true},
		{name: "stats with token", srv: locked, method: "GET", path: "/stats", header: bearer(readToken), want: []int{200}, validateReq: true},
		{name: "stats no token", srv: locked, method: "GET", path: "/stats", want: []int{401}},
		{name: "stats unknown token", srv: locked, method: "GET", path: "/stats", header: bearer("unknown-0123456789abcdef"), want: []int{401}},
		{name: "stats publish token", srv: locked, method: "GET", path: "/stats", header: bearer(publishToken), want: []int{403}},

		{name: "healthz", srv: open, method: "GET", path: "/healthz", want: []int{200}, validateReq: true},
		{name: "healthz head", srv: locked, method: "HEAD", path: "/healthz", want: []int{200}, validateReq: true},
		{name: "readyz", srv: locked, method: "GET", path: "/readyz", want: []int{200}, validateReq: true},
		{name: "readyz head", srv: open, method: "HEAD", path: "/readyz", want: []int{200}, validateReq: true},

		{name: "metrics", srv: open, method: "GET", path: "/metrics", want: []int{200}, validateReq: true},
		{name: "metrics with token", srv: locked, method: "GET", path: "/metrics", header: bearer(readToken), want: []int{200}, validateReq: true},
		{name: "metrics openmetrics", srv: open, method: "GET", path: "/metrics", header: hdr("Accept", "application/openmetrics-text; version=1.0.0"), want: []int{200}, validateReq: true},
		{name: "metrics no token", srv: locked, method: "GET", path: "/metrics", want: []int{401}},
		{name: "metrics publish token", srv: locked, method: "GET", path: "/metrics", header: bearer(publishToken), want: []int{403}},

		{name: "openapi", srv: locked, method: "GET", path: "/openapi.json", want: []int{200}, validateReq: true},
		{name: "ui", srv: locked, method: "GET", path: "/ui", want: []int{200}, validateReq: true},
		{name: "ui script", srv: locked, method: "GET", path: "/ui/app.js", want: []int{200}, validateReq: true},
		{name: "ui style", srv: open, method: "GET", path: "/ui/style.css", want: []int{200}, validateReq: true},
		{name: "ui unknown file", srv: open, method: "GET", path: "/ui/nope.js", want: []int{404}},
	}

	covered := map[string]bool{}
	for _, c := range cases {
		req, resp := send(t, c)
		if !slices.Contains(c.want, resp.StatusCode) {
			t.Errorf("%s: %s %s = %d, want %v: %s", c.name, c.method, c.path, resp.StatusCode, c.want, resp.body)
		}
		s.check(t, c.name, req, resp.Response, c.validateReq)
		if item, _, tmpl := paths.FindPath(req, s.model, s.opts); item != nil {
			covered[c.method+" "+tmpl] = true
		}
		if c.name == "openapi" && !bytes.Equal(resp.body, s.raw) {
			t.Errorf("GET /openapi.json is not %s", specFile)
		}
		if etag := resp.Header.Get("ETag"); etag != "" && c.method == "GET" && resp.StatusCode == 200 {
			// The revalidation of an embedded file: 304, documented too.
			rc := c
			rc.header = hdr("If-None-Match", etag)
			req, resp := send(t, rc)
			if resp.StatusCode != http.StatusNotModified {
				t.Errorf("%s with If-None-Match: %d, want 304", c.name, resp.StatusCode)
			}
			s.check(t, c.name+" (304)", req, resp.Response, true)
		}
	}

	s.checkStream(t, open)
	covered["GET /feed"] = true

	for path, item := range s.model.Paths.PathItems.FromOldest() {
		for method := range item.GetOperations().FromOldest() {
			key := strings.ToUpper(method) + " " + path
			if !covered[key] {
				t.Errorf("%s is in %s but TestOpenAPIReplies sends it no request: add its cases (each status it can answer that a test can provoke)", key, specFile)
			}
		}
	}
}

func merge(hs ...http.Header) http.Header {
	out := http.Header{}
	for _, h := range hs {
		for k, v := range h {
			out[k] = v
		}
	}
	return out
}

// reply is a response with its body read.
type reply struct {
	*http.Response
	body []byte
}

// send performs c and returns a fresh copy of the request (for the
// validator, which reads its body) and the reply with its body buffered.
func send(tb testing.TB, c exchange) (*http.Request, reply) {
	tb.Helper()
	newReq := func() *http.Request {
		req, err := http.NewRequest(c.method, c.srv.base+c.path, strings.NewReader(c.body))
		if err != nil {
			tb.Fatal(err)
		}
		for k, v := range c.header {
			req.Header[k] = v
		}
		return req
	}
	resp, err := http.DefaultClient.Do(newReq())
	if err != nil {
		tb.Fatalf("%s: %v", c.name, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		tb.Fatalf("%s: read body: %v", c.name, err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return newReq(), reply{Response: resp, body: body}
}

// check validates the reply to req (and req itself when it is meant to be
// valid) against the document.
func (s *spec) check(tb testing.TB, name string, req *http.Request, resp *http.Response, validateReq bool) {
	tb.Helper()
	var (
		ok   bool
		errs []*verrors.ValidationError
	)
	if validateReq {
		ok, errs = s.v.ValidateHttpRequestResponse(req, resp)
	} else {
		ok, errs = s.v.ValidateHttpResponse(req, resp)
	}
	if ok {
		return
	}
	for _, e := range errs {
		msg := e.Message + ": " + e.Reason
		for _, se := range e.SchemaValidationErrors {
			msg += "\n\t\t" + se.FieldPath + " (" + se.KeywordLocation + "): " + se.Reason
		}
		tb.Errorf("%s: %s %s -> %d: %s", name, req.Method, req.URL.RequestURI(), resp.StatusCode, msg)
	}
}

// checkStream reads the feed as Server-Sent Events up to its first event,
// validates the reply's status and headers, and each message's data
// against the StoredEvent schema.
func (s *spec) checkStream(tb testing.TB, srv *aggregator) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.base+"/feed?after=0", nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("feed stream: %v", err)
	}
	defer resp.Body.Close()
	var got bytes.Buffer
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	var datas []string
	for sc.Scan() {
		line := sc.Text()
		got.WriteString(line + "\n")
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			datas = append(datas, d)
		}
		if line == "" && len(datas) > 0 {
			break // the first message is complete
		}
	}
	if len(datas) == 0 {
		tb.Fatalf("feed stream: no event in %q (%v)", got.String(), sc.Err())
	}
	if !strings.HasPrefix(got.String(), "retry: 2000\n\n") {
		tb.Errorf("feed stream starts with %q, want retry: 2000", got.String())
	}
	resp.Body = io.NopCloser(bytes.NewReader(got.Bytes()))
	vreq, _ := http.NewRequest(http.MethodGet, srv.base+"/feed?after=0", nil)
	vreq.Header.Set("Accept", "text/event-stream")
	s.check(tb, "feed stream", vreq, resp, true)

	schema := s.model.Components.Schemas.GetOrZero("StoredEvent").Schema()
	sv := schema_validation.NewSchemaValidator()
	for _, d := range datas {
		if ok, errs := sv.ValidateSchemaString(schema, d); !ok {
			for _, e := range errs {
				tb.Errorf("feed stream: data %s: %s", d, e.Reason)
			}
		}
		var e struct{ Seq uint64 }
		if err := json.Unmarshal([]byte(d), &e); err != nil || e.Seq == 0 {
			tb.Errorf("feed stream: data %s: no seq (%v)", d, err)
		}
	}
}
