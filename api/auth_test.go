package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const (
	pubTok   = "publish-token-0123456789"
	readTok  = "read-token-0123456789abc"
	adminTok = "admin-token-0123456789ab"
)

// doAuth sends one request with the given Authorization header ("" for none).
func doAuth(tb testing.TB, h http.Handler, method, target, authz, body string) *httptest.ResponseRecorder {
	tb.Helper()
	return doHeader(tb, h, method, target, "Authorization", authz, body)
}

func TestAuthScopes(t *testing.T) {
	f := newFake()
	h := New(f, &Options{Tokens: Tokens{Publish: pubTok, Read: readTok, Admin: adminTok}})
	body := mustJSON(t, ev("t", "1"))
	cases := []struct {
		method, path, authz string
		status              int
		challenge           string // part of WWW-Authenticate
	}{
		{"POST", "/publish", "", 401, `Bearer realm="aggregator"`},
		{"POST", "/publish", "Basic dXNlcjpwYXNz", 401, `Bearer realm="aggregator"`},
		{"POST", "/publish", "Bearer", 401, `Bearer realm="aggregator"`},
		{"POST", "/publish", "Bearer not-a-token-of-ours-at-all", 401, `error="invalid_token"`},
		{"POST", "/publish", "Bearer " + pubTok + "x", 401, `error="invalid_token"`},
		{"POST", "/publish", "Bearer " + pubTok[:len(pubTok)-1], 401, `error="invalid_token"`},
		{"POST", "/publish", "Bearer " + readTok, 403, `error="insufficient_scope", scope="publish"`},
		{"POST", "/publish", "Bearer " + pubTok, 200, ""},
		{"POST", "/publish", "bearer  " + adminTok, 200, ""},
		{"GET", "/events", "", 401, `Bearer realm="aggregator"`},
		{"GET", "/events", "Bearer " + pubTok, 403, `scope="read"`},
		{"GET", "/events", "Bearer " + readTok, 200, ""},
		{"GET", "/events", "Bearer " + adminTok, 200, ""},
		{"GET", "/stats", "", 401, "Bearer"},
		{"GET", "/stats", "Bearer " + pubTok, 403, `scope="read"`},
		{"GET", "/stats", "Bearer " + readTok, 200, ""},
		{"GET", "/metrics", "", 401, "Bearer"},
		{"GET", "/metrics", "Bearer " + pubTok, 403, `scope="read"`},
		{"GET", "/metrics", "Bearer " + readTok, 200, ""},
		{"GET", "/healthz", "", 200, ""},
		{"GET", "/readyz", "", 200, ""},
		{"GET", "/readyz", "Bearer garbage", 200, ""},
	}
	for _, tc := range cases {
		rec := doAuth(t, h, tc.method, tc.path, tc.authz, body)
		if rec.Code != tc.status {
			t.Errorf("%s %s with %q: %d, want %d: %s", tc.method, tc.path, tc.authz, rec.Code, tc.status, rec.Body)
			continue
		}
		got := rec.Header().Get("WWW-Authenticate")
		if tc.challenge == "" && got != "" || !strings.Contains(got, tc.challenge) {
			t.Errorf("%s %s with %q: WWW-Authenticate %q, want it to contain %q", tc.method, tc.path, tc.authz, got, tc.challenge)
		}
		if tc.status >= 400 {
			if e := errorReply(t, rec); strings.Contains(e.Error, pubTok) || strings.Contains(e.Error, readTok) {
				t.Errorf("error reply echoes a token: %q", e.Error)
			}
		}
	}
	if len(f.log) != 2 {
		t.Errorf("%d events written, want 2 (only the two authorised publishes)", len(f.log))
	}
}

func TestAuthPartialAndOpenMetrics(t *testing.T) {
	// Only a publish token: reading stays open; /metrics open on request.
	h := New(newFake(), &Options{Tokens: Tokens{Publish: pubTok}})
	if rec := doAuth(t, h, "GET", "/events", "", ""); rec.Code != 200 {
		t.Errorf("GET /events without a read token configured: %d", rec.Code)
	}
	if rec := doAuth(t, h, "POST", "/publish", "", mustJSON(t, ev("t", "1"))); rec.Code != 401 {
		t.Errorf("POST /publish without a token: %d", rec.Code)
	}
	h = New(newFake(), &Options{Tokens: Tokens{Admin: adminTok}, MetricsOpen: true})
	if rec := doAuth(t, h, "GET", "/metrics", "", ""); rec.Code != 200 {
		t.Errorf("GET /metrics with MetricsOpen: %d", rec.Code)
	}
	if rec := doAuth(t, h, "GET", "/stats", "", ""); rec.Code != 401 {
		t.Errorf("GET /stats with only an admin token configured: %d, want 401", rec.Code)
	}
	if rec := doAuth(t, h, "GET", "/stats", "Bearer "+adminTok, ""); rec.Code != 200 {
		t.Errorf("GET /stats with the admin token: %d", rec.Code)
	}
}

func TestAuthRefusalIsCounted(t *testing.T) {
	m := mustMetrics(t)
	h := New(newFake(), &Options{Metrics: m, Tokens: Tokens{Publish: pubTok}})
	doAuth(t, h, "POST", "/publish", "", "{}")
	rec := doAuth(t, h, "GET", "/metrics", "", "")
	if !strings.Contains(rec.Body.String(), `aggregator_publish_request_duration_seconds_count{code="401"} 1`) {
		t.Errorf("a refused publish is not in the metrics:\n%s", rec.Body)
	}
}

func TestTokensValidate(t *testing.T) {
	for _, tc := range []struct {
		tokens Tokens
		want   string // "" = valid
	}{
		{Tokens{}, ""},
		{Tokens{Publish: pubTok, Read: readTok, Admin: adminTok}, ""},
		{Tokens{Read: "abc+/=~._-ABC0123456789"}, ""},
		{Tokens{Publish: "short"}, "shorter than 16"},
		{Tokens{Read: "has a space in it 0123"}, "only letters"},
		{Tokens{Admin: "line\nbreak-0123456789"}, "only letters"},
		{Tokens{Publish: pubTok, Admin: pubTok}, "same as the publish token"},
	} {
		err := tc.tokens.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.tokens, err, tc.want)
		}
	}
}
