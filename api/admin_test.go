package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// fakeAdmin is the fake backend with an admin half: retention overrides
// kept in a map, and a backup that writes a fixed stream.
type fakeAdmin struct {
	*fakeBackend
	mu        sync.Mutex
	overrides map[string]event.RetentionOverride
	def       event.Retention
	stream    string
	backupErr error // before begin
	cutAfter  int   // > 0: fail after writing this many bytes
}

func newFakeAdmin() *fakeAdmin {
	return &fakeAdmin{fakeBackend: newFake(), overrides: map[string]event.RetentionOverride{},
		def: event.Retention{Events: 100}, stream: strings.Repeat("snapshot-", 1000)}
}

func (f *fakeAdmin) TopicRetention(_ context.Context, topic string) (event.TopicRetention, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.overrides[topic]
	return event.TopicRetention{Topic: topic, Override: o, Effective: o.Apply(f.def)}, nil
}

func (f *fakeAdmin) SetTopicRetention(_ context.Context, topic string, o event.RetentionOverride) (event.TopicRetention, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if o.IsZero() {
		delete(f.overrides, topic)
	} else {
		f.overrides[topic] = o
	}
	return event.TopicRetention{Topic: topic, Override: o, Effective: o.Apply(f.def)}, nil
}

func (f *fakeAdmin) Backup(_ context.Context, w io.Writer, begin func(BackupInfo)) error {
	if f.backupErr != nil {
		return f.backupErr
	}
	begin(BackupInfo{Checkpoint: 41, LastSeq: 17, Format: 3, Length: int64(len(f.stream))})
	if f.cutAfter > 0 {
		_, _ = io.WriteString(w, f.stream[:f.cutAfter])
		return errors.New("disk read error")
	}
	_, err := io.WriteString(w, f.stream)
	return err
}

func TestRetentionRoutes(t *testing.T) {
	f := newFakeAdmin()
	h := New(f, nil)
	cases := []struct {
		method, path, body string
		status             int
		reply              string // substring of the body
	}{
		{"GET", "/topics/orders/retention", "", 200,
			`{"topic":"orders","override":{"age":null,"events":null},"effective":{"age":null,"events":100}}`},
		{"PUT", "/topics/orders/retention", `{"age":"720h"}`, 200,
			`"override":{"age":"720h0m0s","events":null},"effective":{"age":"720h0m0s","events":100}`},
		{"GET", "/topics/orders/retention", "", 200, `"override":{"age":"720h0m0s","events":null}`},
		{"PUT", "/topics/orders/retention", `{"age":"0s","events":0}`, 200,
			`"override":{"age":"0s","events":0},"effective":{"age":null,"events":null}`},
		{"PUT", "/topics/orders/retention", `{}`, 200, `"override":{"age":null,"events":null},"effective":{"age":null,"events":100}`},
		{"PUT", "/topics/orders/retention", ``, 200, `"override":{"age":null,"events":null}`},
		{"PUT", "/topics/a/b/retention", `{"events":5}`, 200, `{"topic":"a/b","override":{"age":null,"events":5}`},
		{"GET", "/topics/a%2Fb/retention", "", 200, `{"topic":"a/b","override":{"age":null,"events":5}`},
		{"PUT", "/topics/orders/retention", `{"age":"-1h"}`, 400, "age must be a duration"},
		{"PUT", "/topics/orders/retention", `{"age":"soon"}`, 400, "age must be a duration"},
		{"PUT", "/topics/orders/retention", `{"events":-1}`, 400, "body"},
		{"PUT", "/topics/orders/retention", `{"events":1,"size":3}`, 400, "unknown field"},
		{"PUT", "/topics/orders/retention", `[1]`, 400, "body"},
		{"GET", "/topics/orders", "", 404, "no such route"},
		{"GET", "/topics//retention", "", 404, "no such route"},
		{"GET", "/topics/" + strings.Repeat("t", 256) + "/retention", "", 400, "at most 255"},
		{"DELETE", "/topics/orders/retention", "", 405, ""},
	}
	for _, tc := range cases {
		rec := do(t, h, tc.method, tc.path, "application/json", tc.body)
		if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.reply) {
			t.Errorf("%s %s %s: %d %s, want %d with %s", tc.method, tc.path, tc.body, rec.Code, rec.Body, tc.status, tc.reply)
		}
	}
	// /topics itself is unchanged.
	if rec := do(t, h, "GET", "/topics", "", ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"topics":[]`) {
		t.Fatalf("GET /topics: %d %s", rec.Code, rec.Body)
	}
}

func TestAdminRoutesNeedAdminScope(t *testing.T) {
	for name, tokens := range map[string]Tokens{
		"all tokens": {Publish: pubTok, Read: readTok, Admin: adminTok},
		"no admin":   {Publish: pubTok, Read: readTok},
	} {
		t.Run(name, func(t *testing.T) {
			h := New(newFakeAdmin(), &Options{Tokens: tokens})
			adminStatus := 200
			if tokens.Admin == "" {
				adminStatus = 401 // the admin token is not configured: nobody has the scope
			}
			cases := []struct {
				method, path, authz string
				status              int
			}{
				{"PUT", "/topics/t/retention", "", 401},
				{"PUT", "/topics/t/retention", "Bearer " + pubTok, 403},
				{"PUT", "/topics/t/retention", "Bearer " + readTok, 403},
				{"PUT", "/topics/t/retention", "Bearer " + adminTok, adminStatus},
				{"GET", "/topics/t/retention", "Bearer " + readTok, 200},
				{"GET", "/topics/t/retention", "Bearer " + pubTok, 403},
				{"GET", "/admin/backup", "", 401},
				{"GET", "/admin/backup", "Bearer " + readTok, 403},
				{"GET", "/admin/backup", "Bearer " + adminTok, adminStatus},
			}
			for _, tc := range cases {
				rec := doAuth(t, h, tc.method, tc.path, tc.authz, `{"events":1}`)
				if rec.Code != tc.status {
					t.Errorf("%s %s with %q: %d, want %d: %s", tc.method, tc.path, tc.authz, rec.Code, tc.status, rec.Body)
				}
				if tc.status == 403 && !strings.Contains(rec.Header().Get("WWW-Authenticate"), "insufficient_scope") {
					t.Errorf("%s %s: challenge %q", tc.method, tc.path, rec.Header().Get("WWW-Authenticate"))
				}
			}
		})
	}
	// Without tokens every route is open, the admin ones too.
	if rec := do(t, New(newFakeAdmin(), nil), "GET", "/admin/backup", "", ""); rec.Code != 200 {
		t.Fatalf("open backup: %d", rec.Code)
	}
}

func TestBackupRoute(t *testing.T) {
	f := newFakeAdmin()
	h := New(f, nil)
	rec := do(t, h, "GET", "/admin/backup", "", "")
	hd := rec.Header()
	if rec.Code != 200 || rec.Body.String() != f.stream || hd.Get("Content-Type") != "application/octet-stream" ||
		hd.Get("Content-Length") != fmt.Sprint(len(f.stream)) || hd.Get("X-Aggregator-Checkpoint") != "41" ||
		hd.Get("X-Aggregator-Last-Seq") != "17" || hd.Get("X-Aggregator-Index-Format") != "3" ||
		!strings.Contains(hd.Get("Content-Disposition"), "aggregator-index-41.backup") {
		t.Fatalf("backup: %d %v, %d bytes", rec.Code, hd, rec.Body.Len())
	}
	f.backupErr = fmt.Errorf("index is opening: %w", event.ErrUnavailable)
	if rec := do(t, h, "GET", "/admin/backup", "", ""); rec.Code != 503 {
		t.Fatalf("backup while the index opens: %d %s", rec.Code, rec.Body)
	}
	f.backupErr, f.cutAfter = nil, 100
	if rec := do(t, h, "GET", "/admin/backup", "", ""); rec.Code != 200 || rec.Body.Len() != 100 {
		t.Fatalf("backup cut off: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	// A backend without the admin half has no admin routes.
	if rec := do(t, New(newFake(), nil), "GET", "/admin/backup", "", ""); rec.Code != http.StatusNotFound {
		t.Fatalf("backup without Admin: %d", rec.Code)
	}
}

// slowAdmin writes its backup in pieces with pauses: a slow disk.
type slowAdmin struct {
	*fakeAdmin
	pieces int
	pause  time.Duration
}

func (s *slowAdmin) Backup(_ context.Context, w io.Writer, begin func(BackupInfo)) error {
	piece := strings.Repeat("p", 1000)
	begin(BackupInfo{Length: int64(s.pieces * len(piece))})
	for range s.pieces {
		time.Sleep(s.pause) // the time a slow disk takes: the write timeout must not cut the reply
		if _, err := io.WriteString(w, piece); err != nil {
			return err
		}
	}
	return nil
}

// TestBackupOutlivesWriteTimeout: a backup takes longer than the server's
// write timeout; each write moves the deadline instead.
func TestBackupOutlivesWriteTimeout(t *testing.T) {
	const timeout = 50 * time.Millisecond
	srv := httptest.NewUnstartedServer(New(&slowAdmin{fakeAdmin: newFakeAdmin(), pieces: 8, pause: timeout / 2}, nil))
	srv.Config.WriteTimeout = timeout
	srv.Start()
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/admin/backup")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || len(b) != 8000 {
		t.Fatalf("backup over %v with a write timeout of %v: %d bytes, %v", 8*timeout/2, timeout, len(b), err)
	}
}
