package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/api"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key as
// PEM files and returns their paths and the certificate.
func selfSigned(tb testing.TB) (certFile, keyFile string, cert *x509.Certificate) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "aggregator test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	if cert, err = x509.ParseCertificate(der); err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile, cert
}

// TestTLSAndTokens serves HTTPS with a self-signed certificate and bearer
// tokens: each token reaches its own routes only, /healthz and /readyz are
// open, /metrics needs the read token, and plain HTTP is not served.
func TestTLSAndTokens(t *testing.T) {
	certFile, keyFile, cert := selfSigned(t)
	tokens := api.Tokens{Publish: "publish-0123456789abcdef", Read: "read-0123456789abcdef", Admin: "admin-0123456789abcdef"}
	ts := startServerWith(t, t.TempDir(), func(c *Config) {
		c.TLSCert, c.TLSKey = certFile, keyFile
		c.Tokens = tokens
	})
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	https := "https://" + ts.srv.Addr().String()
	as := func(token string) *client {
		c := newClient(t, https)
		c.http.Transport = tr
		c.token = token
		return c
	}
	t.Cleanup(tr.CloseIdleConnections)
	anon := as("")
	anon.waitReady(30 * time.Second)

	pub, reader, admin := as(tokens.Publish), as(tokens.Read), as(tokens.Admin)
	pub.publish(makeEvent(1, "sec"))
	admin.publish(makeEvent(2, "sec"))
	reader.drain(10 * time.Second)
	for _, tc := range []struct {
		c            *client
		method, path string
		status       int
	}{
		{anon, "GET", "/healthz", 200},
		{anon, "GET", "/readyz", 200},
		{anon, "POST", "/publish", 401},
		{anon, "GET", "/events", 401},
		{anon, "GET", "/stats", 401},
		{anon, "GET", "/metrics", 401},
		{as("wrong-0123456789abcdef"), "GET", "/events", 401},
		{reader, "POST", "/publish", 403},
		{pub, "GET", "/events", 403},
		{pub, "GET", "/metrics", 403},
		{reader, "GET", "/events", 200},
		{reader, "GET", "/metrics", 200},
		{admin, "GET", "/stats", 200},
	} {
		body := mustJSON(t, makeEvent(9, "sec"))
		status, out := tc.c.do(tc.method, tc.path, "application/json", body)
		if status != tc.status {
			t.Errorf("%s %s with token %q: %d %s, want %d", tc.method, tc.path, tc.c.token, status, out, tc.status)
		}
	}
	if st := reader.stats(); st.Received != 2 || st.UniqueProcessed != 2 {
		t.Fatalf("refused publishes were written: %+v", st)
	}

	// Plain HTTP on the TLS port gets no API reply.
	plain := newClient(t, "http://"+ts.srv.Addr().String())
	if status, body, err := plain.try("GET", "/healthz", "", nil); err == nil && status == http.StatusOK {
		t.Fatalf("plain HTTP served on the TLS port: %d %s", status, body)
	}
}

// TestDataDirModes checks that a new data directory and everything in it is
// private to the service's user: directories 0700, files 0600.
func TestDataDirModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ts := startServer(t, dir, nil)
	ts.publish(makeEvent(1, "modes"))
	ts.drain(10 * time.Second)
	ts.stop(t)
	if files := checkModes(t, dir); files < 2 {
		t.Fatalf("only %d files under the data directory", files)
	}
}

// checkModes requires mode 0700 for every directory under dir (dir
// included) and 0600 for every file; it returns the number of files.
func checkModes(tb testing.TB, dir string) int {
	tb.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		} else {
			files++
		}
		if fi.Mode().Perm() != want {
			tb.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return files
}

// TestHeaderLimit sends headers over --max-header-bytes: 431, and a normal
// request on a new connection still works.
func TestHeaderLimit(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *Config) { c.MaxHeaderBytes = 8 << 10 })
	req, _ := http.NewRequest(http.MethodGet, ts.base+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 64<<10))
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("64 KiB header with an 8 KiB limit: %d, want 431", resp.StatusCode)
	}
	if status, _ := ts.do(http.MethodGet, "/healthz", "", nil); status != http.StatusOK {
		t.Fatalf("healthz after a refused header: %d", status)
	}
}

func TestTokenConfig(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pubFile := file("pub", "  publish-from-file-0123456789\n")
	c, err := parseConfig([]string{"--publish-token-file", pubFile, "--metrics-open"},
		envOf(map[string]string{"AGG_READ_TOKEN": "read-from-env-0123456789", "AGG_ADMIN_TOKEN_FILE": file("admin", "admin-from-file-0123456789")}),
		&bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := api.Tokens{Publish: "publish-from-file-0123456789", Read: "read-from-env-0123456789", Admin: "admin-from-file-0123456789"}
	if c.Tokens != want || !c.MetricsOpen {
		t.Fatalf("tokens %+v (metrics open %v), want %+v", c.Tokens, c.MetricsOpen, want)
	}

	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--read-token", "read-0123456789abcdef", "--read-token-file", pubFile}, nil, "both as a value and as a file"},
		{[]string{"--admin-token-file", filepath.Join(dir, "missing")}, nil, "admin token file"},
		{[]string{"--admin-token-file", file("empty", "\n")}, nil, "is empty"},
		{[]string{"--publish-token", "short"}, nil, "shorter than"},
		{nil, map[string]string{"AGG_PUBLISH_TOKEN": "same-token-0123456789", "AGG_ADMIN_TOKEN": "same-token-0123456789"}, "same as"},
		{[]string{"--tls-cert", "c.pem"}, nil, "go together"},
		{[]string{"--max-wal-bytes", "1000"}, nil, "twice the segment size"},
		{[]string{"--segment-size", "1048576", "--max-wal-bytes", "2097151"}, nil, "twice the segment size"},
		{[]string{"--max-inflight-publish", "-1"}, nil, "max inflight publish"},
	} {
		_, err := parseConfig(tc.args, envOf(tc.env), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: %v, want an error about %q", tc.args, tc.env, err, tc.want)
		}
	}
	if _, err := parseConfig([]string{"--segment-size", "1048576", "--max-wal-bytes", "2097152"}, envOf(nil), &bytes.Buffer{}); err != nil {
		t.Errorf("max wal bytes of twice the segment size: %v", err)
	}

	// --help names the token flags but never prints a token.
	var out bytes.Buffer
	_, _ = parseConfig([]string{"--help"}, envOf(map[string]string{"AGG_ADMIN_TOKEN": "secret-admin-0123456789"}), &out)
	if strings.Contains(out.String(), "secret-admin") || !strings.Contains(out.String(), "$AGG_ADMIN_TOKEN") {
		t.Fatalf("--help leaks the token or lacks the flag:\n%s", out.String())
	}
}
